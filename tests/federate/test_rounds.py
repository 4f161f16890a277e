"""The server's resume point and the baselines' states on a full disk: the previous file is kept and
no temporary is left in the work folder (the rerun after freeing space resumes from it)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def full_disk_after_half(monkeypatch: pytest.MonkeyPatch) -> None:
    """safetensors' numpy writer fills the disk half-way through every file from now on."""
    import safetensors.numpy

    def disk_fills(tensors: dict[str, Any], filename: str, *args: Any, **kwargs: Any) -> None:
        Path(filename).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", disk_fills)


def test_a_round_checkpoint_that_fails_to_write_keeps_the_last_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoestring.federate.rounds import RoundLog

    log = RoundLog(tmp_path)
    log.done = 1
    log.checkpoint({"w": np.ones(4, dtype=np.float32)})
    before = {p.name: p.read_bytes() for p in log.dir.iterdir()}
    full_disk_after_half(monkeypatch)
    log.done = 2
    with pytest.raises(OSError) as err:
        log.checkpoint({"w": np.zeros(4, dtype=np.float32)})
    assert err.value.filename == str(log.dir / "global.safetensors")
    assert {p.name: p.read_bytes() for p in log.dir.iterdir()} == before
    assert RoundLog(tmp_path).resume(lambda: {})["w"].tolist() == [1.0] * 4


def test_a_baseline_state_that_fails_to_write_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoestring.federate.evaluation import _save

    full_disk_after_half(monkeypatch)
    with pytest.raises(OSError):
        _save(tmp_path / "baselines" / "centralised.safetensors", {"w": np.ones(2)})
    assert list((tmp_path / "baselines").iterdir()) == []
