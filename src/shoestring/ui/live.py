"""Training progress of a run: metric rows (live while training), ETA, planned vs measured.

While ``train`` runs, its rows are in the stage's work folder (``metrics.live.jsonl``, next to
``metrics.live.meta.json`` with the total steps and time limit); the run's process id names
its temporary folder ``tmp/train-<hash16>.<pid>``, which names the work folder. Once the
artifact is committed, the rows are its ``metrics.jsonl`` and the figures its manifest's.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoestring.core.runs import ordered_stages
from shoestring.train.tracking import LIVE_META, LIVE_ROWS
from shoestring.ui.store import ArtifactView, Store, WorkspaceView, read_jsonl

__all__ = ["Progress", "planned_for", "run_progress", "train_stage_ids"]

TRAIN_STAGE = "train"


@dataclass
class Progress:
    """One train stage of a run."""

    stage_id: str
    status: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    total_steps: int | None = None
    max_minutes: float | None = None
    eta_seconds: float | None = None
    eta_note: str = ""
    planned: dict[str, Any] = field(default_factory=dict)
    """The plan's predictions: step_seconds, peak_memory_bytes, tokens_per_second, total_seconds."""
    measured: dict[str, Any] = field(default_factory=dict)
    """Measured so far: step_seconds (median), tokens_per_second, peak_memory_bytes (when finished)."""
    artifact: ArtifactView | None = None

    @property
    def step(self) -> int:
        return max((int(r.get("step", 0)) for r in self.rows), default=0)

    def as_dict(self) -> dict[str, Any]:
        return {"stage_id": self.stage_id, "status": self.status, "step": self.step, "total_steps": self.total_steps,
                "eta_seconds": self.eta_seconds, "planned": self.planned, "measured": self.measured,
                "rows": len(self.rows)}


def train_stage_ids(run: dict[str, Any]) -> list[str]:
    return [sid for sid, st in ordered_stages(run) if st.get("stage") == TRAIN_STAGE]


def _live_dirs(ws: WorkspaceView, pid: int) -> list[Path]:
    """Work folders of train stages this process is writing now."""
    return [ws.root / "work" / t.name.rsplit(".", 1)[0] for t in sorted((ws.root / "tmp").glob(f"{TRAIN_STAGE}-*.{pid}"))]


def _eta(rows: list[dict[str, Any]], total: int | None, max_minutes: float | None) -> tuple[float | None, str]:
    """Seconds left: remaining steps x median step time, capped by what is left of max_minutes; and why."""
    times = [float(r["step_seconds"]) for r in rows if "step_seconds" in r]
    if not times or total is None:
        return None, ""
    step = max(int(r.get("step", 0)) for r in rows)
    left = max(0, total - step) * statistics.median(times[-20:])
    if max_minutes is not None and max_minutes * 60 - sum(times) < left:
        return max(0.0, max_minutes * 60 - sum(times)), f"max_minutes {max_minutes:g} stops it first"
    return left, "median step x steps left"


def _plan_facts(plan_art: ArtifactView | None) -> dict[str, Any]:
    """The plan's predictions, plus whether its device was calibrated (uncalibrated CPU plans are rough)."""
    if plan_art is None:
        return {}
    out = dict(plan_art.manifest.get("predicted") or {})
    device = (plan_art.json_file("plan.json") or {}).get("device") or {}
    if "calibrated" in device:
        out["calibrated"] = bool(device["calibrated"])
        out["device_kind"] = device.get("kind")
    return out


def _plan_predicted(store: Store, art_inputs: dict[str, Any]) -> dict[str, Any]:
    ref = art_inputs.get("plan")
    return _plan_facts(store.artifact_at(ref["path"]) if ref else None)


def planned_for(store: Store, model: ArtifactView) -> dict[str, Any]:
    """What the plan a trained model followed predicted (its manifest's copy wins), with calibration."""
    pc = model.manifest.get("plan_comparison") or {}
    return {**_plan_predicted(store, model.manifest.get("inputs") or {}), **(pc.get("predicted") or {})}


def _measured(rows: list[dict[str, Any]]) -> dict[str, Any]:
    steps = [float(r["step_seconds"]) for r in rows if "step_seconds" in r]
    tps = [float(r["tokens_per_second"]) for r in rows if "tokens_per_second" in r]
    out: dict[str, Any] = {}
    if steps:
        out["step_seconds"] = statistics.median(steps)
    if tps:
        out["tokens_per_second"] = statistics.median(tps)
    return out


def run_progress(store: Store, ws: WorkspaceView, run: dict[str, Any]) -> list[Progress]:
    """Progress of every train stage of a run (finished, running or not started)."""
    out = []
    live = _live_dirs(ws, int(run.get("pid") or 0)) if run.get("status") == "running" else []
    for sid in train_stage_ids(run):
        st = run["stages"][sid]
        prog = Progress(sid, str(st.get("status")))
        if st.get("artifact"):
            art = store.artifact_at(st["artifact"])
            if art is not None:
                prog.artifact = art
                prog.rows = art.jsonl("metrics.jsonl")
                prog.planned = planned_for(store, art)
                s = art.stats
                prog.total_steps = s.get("steps")
                prog.measured = {k: s.get(k) for k in ("step_seconds", "tokens_per_second", "peak_memory_bytes")
                                 if s.get(k) is not None}
        elif st.get("status") == "running" and live:
            work = live[0]
            prog.rows = read_jsonl(work / LIVE_ROWS)
            try:
                meta = json.loads((work / LIVE_META).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                meta = {}
            prog.total_steps = meta.get("total_steps")
            prog.max_minutes = meta.get("max_minutes")
            prog.eta_seconds, prog.eta_note = _eta(prog.rows, prog.total_steps, prog.max_minutes)
            prog.measured = _measured(prog.rows)
            prog.planned = _planned_from_run(store, ws, run, sid)
        out.append(prog)
    return out


def _planned_from_run(store: Store, ws: WorkspaceView, run: dict[str, Any], sid: str) -> dict[str, Any]:
    """The prediction of the plan stage this run finished before the train stage (the recipe's plan)."""
    for _, other in ordered_stages(run):
        if other.get("kind") == "plan" and other.get("artifact"):
            return _plan_facts(store.artifact_at(other["artifact"]))
    return {}
