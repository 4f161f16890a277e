"""The main job through the real CLI: `shoestring run recipes/quickstart.yaml`, shrunk with
--set so it fits the test budget, then cached re-run, then kill -9 during training + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SMALL = [
    "--set", "budget.batch_size=2",
    "--set", "budget.seq_len=128",
    "--set", "train.max_steps=3",
    "--set", "train.checkpoint_every=1",
    "--set", "train.val_max_examples=4",
    "--set", "train.progress=false",
    "--set", "evaluate.max_records=8",
    "--set", "evaluate.max_new_tokens=6",
    "--set", "evaluate.bootstrap=200",
    "--set", "evaluate.prompts=['How do I cancel my cloud storage plan?']",
    "--set", "assess.devices=[l4-24gb]",
]  # fmt: skip


def _cmd(ws: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shoestring.cli", "run", "recipes/quickstart.yaml", "-w", str(ws), *SMALL, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def test_quickstart_runs_end_to_end_then_is_cached(tmp_path: Path, repo_root: Path) -> None:
    ws = tmp_path / "ws"
    first = subprocess.run(_cmd(ws), cwd=repo_root, env=_env(), capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    report = (ws / "report").resolve()
    summary = json.loads((report / "summary.json").read_text())
    assert (report / "report.html").read_text().startswith("<!doctype html>")
    head = summary["headline"]
    assert head["records read"] == head["records kept"] + head["records dropped"] + head["records quarantined"]
    assert head["records quarantined"] > 0  # the examples contain malformed lines on purpose
    assert "planned peak memory (MiB)" in head and "measured peak memory (MiB)" in head
    assert head["held-out loss before"] > 0 and head["held-out loss after"] > 0
    assert head["verdict"] in ("model is better", "compare is better", "no clear difference")
    assert "data:image/png;base64" in (report / "report.html").read_text()  # the loss curve, inlined

    t0 = time.perf_counter()
    again = subprocess.run(_cmd(ws), cwd=repo_root, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    cached_lines = [ln for ln in again.stderr.splitlines() if "✓" in ln and "cached" in ln]
    assert len(cached_lines) == 6, again.stderr
    assert time.perf_counter() - t0 < 60


def test_kill_during_training_then_rerun_completes(tmp_path: Path, repo_root: Path) -> None:
    ws = tmp_path / "ws"
    proc = subprocess.Popen(
        _cmd(ws, "--set", "train.max_steps=6"),
        cwd=repo_root,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if list((ws / "work").glob("train-*/**/step-*/state.json")):
                break
            assert proc.poll() is None, "the run ended before training wrote a checkpoint"
            time.sleep(0.5)
        else:
            pytest.fail("no training checkpoint appeared in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (ws / "report").exists()
    rerun = subprocess.run(
        _cmd(ws, "--set", "train.max_steps=6"), cwd=repo_root, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming" in rerun.stderr
    train = json.loads(((ws / "train").resolve() / "manifest.json").read_text())
    assert train["timings"]["resumed"] is True
    assert ((ws / "report").resolve() / "report.html").is_file()
