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
