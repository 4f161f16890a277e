"""A run killed with SIGKILL and resumed reproduces the uninterrupted loss curve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoestring.core.artifact import Artifact

ARGS = ("--task", "sft", "--method", "lora", "--max-steps", "30", "--epochs", "4", "--micro-batch-size", "2",
        "--seq-len", "96", "--checkpoint-every", "5", "--lr", "0.005", "--eval-every", "8", "--no-progress")  # fmt: skip


def _cmd(ws: Path, model: Path, ds: Path) -> list[str]:
    return [sys.executable, "-m", "shoestring.cli", "train", "--workspace", str(ws), "--dataset", str(ds),
            "--model", str(model), *ARGS]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _curve(art: Artifact) -> list[tuple[int, float, float | None]]:
    rows = [json.loads(x) for x in (art.path / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss", float("nan")), r.get("val_loss")) for r in rows]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path, tiny_llama: Path, chat_dataset: Path) -> None:
    ref = subprocess.run(_cmd(tmp_path / "ref", tiny_llama, chat_dataset), env=_env(), capture_output=True,
                         text=True, timeout=600, check=True)  # fmt: skip
    reference = Artifact.load(ref.stdout.strip().splitlines()[-1])

    ws = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(ws, tiny_llama, chat_dataset), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if list(ws.glob("work/train-*/checkpoints/step-00000010")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; raise --max-steps"
    assert not list(ws.glob("artifacts/train-*")), "a killed run must not leave an artifact"

    resumed = subprocess.run(_cmd(ws, tiny_llama, chat_dataset), env=_env(), capture_output=True, text=True,
                             timeout=600, check=True)  # fmt: skip
    art = Artifact.load(resumed.stdout.strip().splitlines()[-1])
    assert "resuming" in resumed.stderr
    assert art.manifest["timings"]["resumed"] is True
    assert art.stats["resumed_from_step"] >= 10
    got, want = _curve(art), _curve(reference)
    assert [s for s, _, _ in got] == [s for s, _, _ in want]
    for (step, loss, val), (_, loss_ref, val_ref) in zip(got, want, strict=True):
        assert loss == pytest.approx(loss_ref, rel=1e-5, abs=1e-6), f"train loss differs at step {step}"
        assert (val is None) == (val_ref is None)
        if val is not None:
            assert val == pytest.approx(val_ref, rel=1e-5), f"validation loss differs at step {step}"
    # Same final weights as the uninterrupted run.
    from safetensors.torch import load_file

    a = load_file(str(art.path / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(reference.path / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-5, k
