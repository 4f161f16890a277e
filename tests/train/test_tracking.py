"""The loss-curve PNG on a full disk: no temporary file left in the artifact folder."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from shoestring.train.tracking import plot_loss


def test_a_loss_plot_that_fails_to_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    def disk_fills(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> None:
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_fills)
    with pytest.raises(OSError) as err:
        plot_loss([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}], tmp_path / "loss.png", "t")
    assert err.value.filename == str(tmp_path / "loss.png")  # the path the user must free space for
    assert list(tmp_path.iterdir()) == []
