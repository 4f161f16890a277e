"""Flower's deployment engine for real: `shoestring federate --engine deployment` starts a
SuperLink and two SuperNodes as separate processes on loopback (ports in 18300-18399), submits
the run with `flwr run`, and stops every process it started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from shoestring.core.processes import port_free

pytestmark = pytest.mark.slow


def _free_base() -> int:
    for base in range(18340, 18396, 4):
        if all(port_free(p) for p in range(base, base + 3)):
            return base
    raise RuntimeError("no free ports in 18340-18399")


def test_deployment_engine_runs_superlink_and_two_supernodes(tmp_path: Path, repo_root: Path) -> None:
    cfg = tmp_path / "fed.yaml"
    cfg.write_text("recsys: {source: movielens-100k, architecture: gru, hidden_size: 8, max_len: 10}\n"
                   "clients: 2\npartition: iid\nrounds: 2\nlocal_batch_size: 256\nengine: deployment\n"
                   "baselines: {centralised: false, local_only: false}\n")  # fmt: skip
    port = _free_base()
    cmd = [sys.executable, "-m", "shoestring.cli", "federate", "-c", str(cfg), "-w", str(tmp_path / "ws"),
           "--port", str(port)]  # fmt: skip
    run = subprocess.run(cmd, cwd=repo_root, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    art = Path(run.stdout.strip().splitlines()[-1])
    fed = json.loads((art / "federation.json").read_text())
    procs = fed["run"]["processes"]
    assert procs["superlink_address"] == f"127.0.0.1:{port}" and len(procs["supernodes"]) == 2
    rows = [json.loads(line) for line in (art / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["accepted"] == 2 and r["bytes_up"] > 0 for r in rows[1:])
    # Both partitions trained in every round (one SuperNode each).
    assert all(sorted(r["clients"]) == [0, 1] for r in rows[1:])
    # Every process the stage started is gone, and nothing listens on its ports any more.
    for pid in [procs["superlink"], *procs["supernodes"]]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert all(port_free(p) for p in range(port, port + 3))
    assert json.loads((art / "manifest.json").read_text())["kind"] == "model"
