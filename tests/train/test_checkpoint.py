"""Checkpoints on a full disk and after a kill: the temporary folder never outlives its writer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from shoestring.train.checkpoint import latest_checkpoint, save_checkpoint


def tiny() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    layer = torch.nn.Linear(8, 8)
    return layer, torch.optim.AdamW(layer.parameters())


def test_a_checkpoint_that_fails_to_write_leaves_the_previous_one_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    model, opt = tiny()
    save_checkpoint(tmp_path, 1, model, opt, {}, keep=2)
    real = safetensors.torch.save_file

    def disk_fills(tensors: dict[str, Any], filename: str, *args: Any, **kwargs: Any) -> None:
        if filename.endswith("optimizer.safetensors"):  # the second file of the folder: the first is written
            Path(filename).write_bytes(b"half")
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
        real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_fills)
    with pytest.raises(RuntimeError, match="os error 28"):
        save_checkpoint(tmp_path, 2, model, opt, {}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000001"


def test_resume_removes_a_killed_runs_half_checkpoint_but_not_a_live_writers(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid is now surely no one's
    model, opt = tiny()
    save_checkpoint(tmp_path, 1, model, opt, {}, keep=2)
    killed = tmp_path / f".step-00000002.tmp-{proc.pid}"
    live = tmp_path / f".step-00000002.tmp-{os.getpid()}"
    for half in (killed, live):
        half.mkdir()
        (half / "trainable.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000001"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "step-00000001"])


def test_a_best_model_that_fails_to_write_leaves_no_half_file_to_resume_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tabular trainer keeps its best epoch's weights in the work folder and loads them at the
    end, also after a resume: a half-written file there would fail (or poison) the rerun."""
    import safetensors.torch
    from torch.utils.data import TensorDataset

    from shoestring.train.tabular_fit import FitSettings, fit

    real = safetensors.torch.save_file

    def disk_fills(tensors: dict[str, Any], filename: str, *args: Any, **kwargs: Any) -> None:
        if "best" in Path(filename).name:
            Path(filename).write_bytes(b"half")
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
        real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_fills)
    model = torch.nn.Linear(3, 1)
    data = TensorDataset(torch.randn(8, 3), torch.randn(8, 1))
    with pytest.raises(RuntimeError, match="os error 28"):
        fit(model, data, lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]), lambda m: {"loss": 1.0},
            monitor="loss", higher_is_better=False, settings=FitSettings(epochs=1, batch_size=4, lr=0.1),
            work_dir=tmp_path)  # fmt: skip
    assert [p.name for p in tmp_path.iterdir() if "best" in p.name] == []
