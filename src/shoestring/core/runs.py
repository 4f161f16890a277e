"""Run records: what a recipe run did, stage by stage, written while it runs.

``run_recipe`` keeps one record per run in ``<workspace>/runs/<run_id>.json`` and mirrors
the latest one to ``<workspace>/run.json``. Both are rewritten atomically whenever a stage
starts, finishes or fails, so a reader (``shoestring ui``) sees a run's progress live,
the one-line error of a failed stage, and which stages were cached. A run whose record
still says ``running`` but whose ``pid`` is gone was killed (``interrupted``); re-running
it resumes. A kill in the middle of a write leaves the record's temporary file
(``runs/.<run_id>.json.tmp-<pid>``); the next run, and every reader, removes those of dead processes.

Record layout::

    {"run_id", "recipe", "cwd", "name", "workspace", "pid", "status", "started", "finished",
     "overrides": [...], "force": [...], "only": [...], "error", "order": [stage ids in recipe order],
     "stages": {id: {"stage", "status", "artifact", "kind", "cached", "seconds",
                     "started", "error"}}}

``status`` of a run: ``running`` | ``done`` | ``failed`` | ``cancelled``; of a stage:
``pending`` | ``running`` | ``done`` | ``cached`` | ``failed`` | ``cancelled`` | ``skipped``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shoestring.core.artifact import atomic_write_json, sweep_dead_temps
from shoestring.core.errors import ShoestringError
from shoestring.core.processes import pid_alive

__all__ = ["RunRecord", "error_line", "list_runs", "ordered_stages", "read_run"]

RUNS_DIR = "runs"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def error_line(err: BaseException) -> str:
    """One line for a failed stage: a user error's own message, else the exception type + message."""
    if isinstance(err, ShoestringError):
        return str(err)
    if isinstance(err, KeyboardInterrupt):
        return "cancelled (interrupted); re-run the same command to resume from the last finished step"
    msg = " ".join(str(err).split())
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(err).__name__}: {msg}{where}" if msg else f"{type(err).__name__}{where}"


class RunRecord:
    """The live record of one recipe run; every change is written to disk at once."""

    def __init__(
        self,
        root: Path,
        recipe: str,
        name: str,
        stages: dict[str, str],
        *,
        overrides: list[str],
        force: list[str],
        only: list[str],
    ) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        self.root = root
        self.data: dict[str, Any] = {
            "run_id": f"{stamp}-{os.getpid()}",
            "recipe": recipe,
            "cwd": os.getcwd(),
            "name": name,
            "workspace": str(root),
            "pid": os.getpid(),
            "status": "running",
            "started": _now(),
            "finished": None,
            "overrides": list(overrides),
            "force": sorted(force),
            "only": sorted(only),
            "error": None,
            "order": list(stages),
            "stages": {sid: {"stage": st, "status": "pending"} for sid, st in stages.items()},
        }
        _sweep_record_temps(root)
        self.save()

    @property
    def run_id(self) -> str:
        return str(self.data["run_id"])

    def save(self) -> None:
        atomic_write_json(self.root / RUNS_DIR / f"{self.run_id}.json", self.data)
        atomic_write_json(self.root / "run.json", self.data)

    def stage_started(self, sid: str) -> None:
        self.data["stages"][sid].update(status="running", started=_now())
        self.save()

    def stage_finished(self, sid: str, artifact: Path, kind: str, cached: bool, seconds: float) -> None:
        self.data["stages"][sid].update(
            status="cached" if cached else "done",
            artifact=str(artifact),
            kind=kind,
            cached=cached,
            seconds=round(seconds, 3),
        )
        self.save()

    def stage_failed(self, sid: str, err: BaseException) -> None:
        cancelled = isinstance(err, KeyboardInterrupt)
        line = error_line(err)
        self.data["stages"][sid].update(status="cancelled" if cancelled else "failed", error=line)
        self.data.update(status="cancelled" if cancelled else "failed", error=f"{sid}: {line}", finished=_now())
        # Best effort: the disk that failed the stage is often the one the record lives on, and a
        # second "no space left" from here would replace the stage's own error.
        with contextlib.suppress(OSError):
            self.save()

    def finished(self) -> None:
        for st in self.data["stages"].values():
            if st["status"] == "pending":
                st["status"] = "skipped"  # past --only
        self.data.update(status="done", finished=_now())
        self.save()


def ordered_stages(run: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A record's stages in recipe order (JSON files store the mapping with sorted keys)."""
    stages = run.get("stages") or {}
    order = [s for s in run.get("order") or [] if s in stages]
    return [(sid, stages[sid]) for sid in [*order, *(s for s in stages if s not in order)]]


def _sweep_record_temps(root: Path) -> None:
    """Remove the temporary files that runs killed mid-write left beside the workspace's records."""
    sweep_dead_temps(Path(root) / RUNS_DIR)
    sweep_dead_temps(Path(root), "run.json")


def read_run(path: Path) -> dict[str, Any] | None:
    """A run record, with ``status: interrupted`` when it says running but its process is gone
    (a dead writer's temporary file beside it is removed)."""
    sweep_dead_temps(Path(path).parent, glob.escape(Path(path).name))
    return _read_run(path)


def _read_run(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("status") == "running" and not pid_alive(int(data.get("pid") or 0), since=Path(path)):
        data["status"] = "interrupted"
        for st in data.get("stages", {}).values():
            if st.get("status") == "running":
                st["status"] = "interrupted"
    return data


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run record of a workspace, newest first (a pre-record ``run.json`` counts as one run);
    dead writers' temporary files are removed."""
    _sweep_record_temps(root)
    runs = [r for f in sorted((Path(root) / RUNS_DIR).glob("*.json")) if (r := _read_run(f)) is not None]
    if not runs and (Path(root) / "run.json").is_file():
        legacy = _read_run(Path(root) / "run.json")
        if legacy is not None:
            legacy.setdefault("run_id", "run")
            legacy.setdefault("status", "done")
            for st in legacy.get("stages", {}).values():
                st.setdefault("status", "cached" if st.get("cached") else "done")
            runs.append(legacy)
    return sorted(runs, key=lambda r: str(r.get("run_id", "")), reverse=True)
