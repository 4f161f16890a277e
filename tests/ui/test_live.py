"""Live training progress: rows appended as they are logged, read back with an ETA while running."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shoestring.train.tracking import LIVE_META, LIVE_ROWS, MetricsLog
from shoestring.ui.live import run_progress
from shoestring.ui.store import Store


def test_metrics_log_appends_live_rows_and_restarts_from_a_checkpoint(tmp_path: Path) -> None:
    live = tmp_path / LIVE_ROWS
    log = MetricsLog([{"step": 1, "loss": 3.0}], live_path=live, live_meta={"total_steps": 10, "max_minutes": None})
    log.log({"step": 2, "loss": 2.5})
    assert [json.loads(x)["step"] for x in live.read_text().splitlines()] == [1, 2]
    assert json.loads((tmp_path / LIVE_META).read_text())["total_steps"] == 10
    MetricsLog([{"step": 1, "loss": 3.0}], live_path=live)  # a resume rewrites the file from the checkpoint's rows
    assert len(live.read_text().splitlines()) == 1


def _running_workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    key = "train-0123456789abcdef"
    (ws / "artifacts").mkdir(parents=True)
    (ws / "tmp" / f"{key}.{os.getpid()}").mkdir(parents=True)
    work = ws / "work" / key
    work.mkdir(parents=True)
    rows = [{"step": s, "loss": 3 - 0.1 * s, "step_seconds": 2.0, "tokens_per_second": 500.0} for s in range(1, 6)]
    (work / LIVE_ROWS).write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "lo')  # torn last line
    (work / LIVE_META).write_text(json.dumps({"total_steps": 20, "max_minutes": 1.0}))
    return ws


def test_a_running_train_stage_is_read_from_its_work_folder(tmp_path: Path) -> None:
    ws_root = _running_workspace(tmp_path)
    store = Store([ws_root])
    ws = store.workspaces()[0]
    run = {"run_id": "r", "status": "running", "pid": os.getpid(),
           "stages": {"train": {"stage": "train", "status": "running"}}}
    (prog,) = run_progress(store, ws, run)
    assert prog.step == 5 and prog.total_steps == 20 and len(prog.rows) == 5
    # 15 steps x 2 s = 30 s left, but max_minutes=1 leaves 60 - 10 = 50 s: the smaller wins
    assert prog.eta_seconds == pytest.approx(30.0) and prog.eta_note == "median step x steps left"
    assert prog.measured == {"step_seconds": 2.0, "tokens_per_second": 500.0}
    meta = next((ws_root / "work").iterdir()) / LIVE_META
    meta.write_text(json.dumps({"total_steps": 20, "max_minutes": 0.3}))  # 18 s limit, 10 s spent
    (prog,) = run_progress(store, ws, run)
    assert prog.eta_seconds == pytest.approx(8.0) and "max_minutes" in prog.eta_note
    run["pid"] = 1  # another process's run: its temporary folder is not this one
    assert run_progress(store, ws, run)[0].rows == []
