"""Distillation's resume folder on a full disk and after a kill: the last whole checkpoint is kept and
no temporary outlives its writer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from shoestring.compress.distill import CHECKPOINT, _load_ckpt, _save_ckpt


def test_a_checkpoint_that_fails_to_write_keeps_the_last_whole_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    student = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(student.parameters())
    student(torch.ones(1, 4)).sum().backward()
    opt.step()
    _save_ckpt(tmp_path, student, opt, 4, [1.0] * 4)

    def disk_fills(tensors: dict[str, Any], filename: str, *args: Any, **kwargs: Any) -> None:
        Path(filename).write_bytes(b"half")  # the student's file is written by then: a new step's weights
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_fills)
    with pytest.raises(RuntimeError, match="os error 28"):
        _save_ckpt(tmp_path, student, opt, 8, [1.0] * 8)
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]
    assert json.loads((tmp_path / CHECKPOINT / "progress.json").read_text())["step"] == 4

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid is now surely no one's
    killed = tmp_path / f".{CHECKPOINT}.tmp-{proc.pid}"
    killed.mkdir()
    (killed / "student.safetensors").write_bytes(b"half")
    assert _load_ckpt(tmp_path, student, opt)[0] == 4  # resuming removes the killed run's folder
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]
