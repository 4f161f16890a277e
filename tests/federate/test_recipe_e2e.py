"""recipes/federated_movielens.yaml through the real CLI, shrunk with --set: federate (Flower's
simulation engine on a private Ray) -> evaluate with a per-client table -> report; injected
faults excluded and counted exactly, bytes measured = predicted; and kill -9 + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoestring.federate.client import draw_fault
from shoestring.federate.tasks import Job

pytestmark = pytest.mark.slow

SMALL = [
    "--set", "federate.clients=4", "--set", "federate.rounds=3", "--set", "federate.partition=iid",
    "--set", "federate.recsys.hidden_size=8", "--set", "federate.recsys.max_len=10",
    "--set", "federate.local_batch_size=256", "--set", "federate.local_epochs=1",
    "--set", "federate.faults={dropout: 0.2, corrupt: 0.15, wrong_shape: 0.15, seed: 3}",
    "--set", "federate.baselines={epochs: 2, patience: 1, max_local_clients: 2}",
    "--set", "evaluate.bootstrap=100",
]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _rows(art: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (art / "rounds.jsonl").read_text().splitlines()]


def test_federated_movielens_recipe_end_to_end(tmp_path: Path, repo_root: Path) -> None:
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "shoestring.cli", "run", "recipes/federated_movielens.yaml", "-w", str(ws), *SMALL]
    run = subprocess.run(cmd, cwd=repo_root, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    fed = (ws / "federate").resolve()
    manifest = json.loads((fed / "manifest.json").read_text())
    assert manifest["kind"] == "model" and manifest["task"] == "sequential-recommendation"
    summary = json.loads((fed / "federation.json").read_text())
    rows = _rows(fed)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]

    # Every injected fault is excluded and counted by its kind (all 4 clients train every round).
    job = Job(config=manifest["config"], dataset=None, model=None, work_dir="")
    expected = {"dropout": 0, "corrupt": 0, "wrong_shape": 0}
    for rnd in (1, 2, 3):
        for pid in range(4):
            fault = draw_fault(job, rnd, pid)
            if fault:
                expected[fault] += 1
    assert min(expected.values()) > 0, "the seed must inject every kind of fault at least once"
    rob = summary["robustness"]
    assert rob["sampled"] == 12 and rob["timed_out"] == 0
    assert rob["failed"] == expected["dropout"]
    assert rob["rejected"] == {"non_finite": expected["corrupt"], "shape": expected["wrong_shape"]}
    assert rob["accepted"] == 12 - sum(expected.values())
    # Training still moved the model: the held-out NDCG after the last round beats round 0's.
    assert rows[-1]["test_ndcg@10"] > rows[0]["test_ndcg@10"]
    # Bytes are measured on every message and agree with the planner's prediction.
    traffic = summary["traffic"]
    assert traffic["bytes_down"] > 0 and traffic["bytes_up"] > 0
    assert abs(traffic["predicted"]["bytes_down_per_round"] * 3 / traffic["bytes_down"] - 1) < 0.01
    comp = json.loads((fed / "comparison.json").read_text())
    assert set(comp["systems"]) == {"federated", "centralised", "local-only (mean over clients)"}
    assert len(comp["clients"]) == 4 and all("federated" in c for c in comp["clients"])

    # evaluate took the federated model unchanged and split its quality by client.
    metrics = json.loads(((ws / "evaluate").resolve() / "metrics.json").read_text())
    groups = metrics["fairness"]["client"]["groups"]
    assert sorted(groups) == ["client-0", "client-1", "client-2", "client-3"]
    assert sum(g["users"] for g in groups.values()) == metrics["model"]["users"] == 943
    report = json.loads(((ws / "report").resolve() / "summary.json").read_text())
    assert report["sections"]["model"]["stats"]["clients"] == 4


def test_killed_federation_resumes_from_its_last_round(tmp_path: Path, repo_root: Path) -> None:
    cfg = tmp_path / "fed.yaml"
    cfg.write_text("recsys: {source: movielens-100k, architecture: gru, hidden_size: 8, max_len: 10}\n"
                   "clients: 2\npartition: iid\nrounds: 4\nlocal_batch_size: 256\n"
                   "baselines: {centralised: false, local_only: false}\n")  # fmt: skip
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "shoestring.cli", "federate", "-c", str(cfg), "-w", str(ws)]
    proc = subprocess.Popen(cmd, cwd=repo_root, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    state = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((ws / "work").glob("federate-*/server/state.json"))
        if found and json.loads(found[0].read_text())["round"] >= 2:
            state = found[0]
            break
        time.sleep(0.5)
    assert state is not None, "the run never finished round 2"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = json.loads(state.read_text())
    again = subprocess.run(cmd, cwd=repo_root, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr
    art = Path(again.stdout.strip().splitlines()[-1])
    rows = _rows(art)
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[: before["round"] + 1] == before["rows"]  # finished rounds were not re-run
