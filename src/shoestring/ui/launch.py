"""Launching recipe runs from the dashboard: the same ``shoestring run`` process, its log kept.

A launch is ``python -m shoestring.cli run RECIPE [--set ...] [-w WS] [--force ID]`` in its
own process group, output to ``<state>/launches/<id>.log``; ``<id>.json`` records the
command and pid (and the exit code once it ends), so a restarted dashboard still knows its
launches. Cancel = SIGINT to the group (the CLI stops like Ctrl-C: the run record says
cancelled and a re-run resumes), then SIGTERM and SIGKILL if it does not stop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shoestring.core.artifact import atomic_write_json
from shoestring.core.errors import ShoestringError
from shoestring.core.processes import pid_alive

__all__ = ["Launch", "Launcher", "read_log"]

CANCEL_GRACE_S = (10.0, 10.0)
"""Seconds to wait after SIGINT before SIGTERM, and after SIGTERM before SIGKILL."""


@dataclass
class Launch:
    id: str
    recipe: str
    overrides: list[str]
    workspace: str | None
    force: list[str]
    cmd: list[str]
    cwd: str
    pid: int
    started: str
    log: str
    returncode: int | None = None
    cancel_requested: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.returncode is None:
            return "running" if pid_alive(self.pid) else "ended"
        if self.returncode == 0:
            return "done"
        return "cancelled" if self.cancel_requested or self.returncode in (130, -2) else "failed"


class Launcher:
    """Starts, tracks and cancels recipe runs; one instance per dashboard process."""

    def __init__(self, state_dir: Path, cwd: Path) -> None:
        self.dir = Path(state_dir) / "launches"
        self.cwd = Path(cwd)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def _path(self, launch_id: str) -> Path:
        if not launch_id.replace("-", "").isalnum():
            raise ShoestringError(f"bad launch id '{launch_id}'")
        return self.dir / f"{launch_id}.json"

    def _save(self, launch: Launch) -> None:
        atomic_write_json(self._path(launch.id), asdict(launch))

    def start(self, recipe: str, overrides: list[str], workspace: str | None = None,
              force: list[str] | None = None) -> Launch:
        """Validate the recipe with its overrides (a mistake is a one-line error here), then start it."""
        from shoestring.core.recipe import load_recipe

        recipe_path = (self.cwd / recipe).resolve() if not Path(recipe).is_absolute() else Path(recipe)
        cwd_before = Path.cwd()
        moved = cwd_before.resolve() != self.cwd.resolve()
        try:
            if moved:  # recipes name their files relative to the folder they run in
                os.chdir(self.cwd)
            parsed, planned = load_recipe(recipe_path, overrides)
        finally:
            if moved:
                os.chdir(cwd_before)
        ids = {ps.id for ps in planned}
        unknown = sorted(set(force or []) - ids)
        if unknown:
            raise ShoestringError(f"--force {', '.join(unknown)}: no such stage id in {recipe}; ids: {', '.join(ids)}")
        cmd = [sys.executable, "-m", "shoestring.cli", "run", str(recipe_path)]
        for o in overrides:
            cmd += ["--set", o]
        for f in force or []:
            cmd += ["--force", f]
        if workspace:
            cmd += ["--workspace", workspace]
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc)
        launch_id = f"{stamp.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
        log = self.dir / f"{launch_id}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb", "COLUMNS": "120"}
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, cwd=self.cwd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        launch = Launch(launch_id, str(recipe_path), list(overrides), workspace, list(force or []), cmd, str(self.cwd),
                        proc.pid, stamp.isoformat(timespec="seconds"), str(log),
                        extra={"name": parsed.name, "workspace_resolved": str(
                            (self.cwd / (workspace or parsed.workspace)).resolve())})
        self._save(launch)
        with self._lock:
            self._procs[launch_id] = proc
        threading.Thread(target=self._reap, args=(launch_id, proc), daemon=True).start()
        return launch

    def _reap(self, launch_id: str, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        launch = self.get(launch_id)
        launch.returncode = code
        self._save(launch)
        with self._lock:
            self._procs.pop(launch_id, None)

    def get(self, launch_id: str) -> Launch:
        p = self._path(launch_id)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise ShoestringError(f"no launch '{launch_id}'") from None
        return Launch(**data)

    def all(self) -> list[Launch]:
        out = []
        for p in sorted(self.dir.glob("*.json"), reverse=True) if self.dir.is_dir() else []:
            try:
                out.append(self.get(p.stem))
            except (ShoestringError, TypeError):
                continue
        return out

    def cancel(self, launch_id: str) -> Launch:
        """Ask the run to stop (SIGINT to its process group), escalating if it does not."""
        launch = self.get(launch_id)
        if launch.status != "running":
            return launch
        launch.cancel_requested = True
        self._save(launch)
        threading.Thread(target=self._escalate, args=(launch.pid,), daemon=True).start()
        return launch

    @staticmethod
    def _escalate(pid: int) -> None:
        for sig, wait in ((signal.SIGINT, CANCEL_GRACE_S[0]), (signal.SIGTERM, CANCEL_GRACE_S[1]),
                          (signal.SIGKILL, 0.0)):
            try:
                os.killpg(pid, sig)  # the launch is its own session leader: pgid == pid
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not pid_alive(pid):
                    return
                time.sleep(0.2)


def read_log(path: str | Path, offset: int = 0, limit: int = 1 << 20) -> tuple[str, int]:
    """Complete lines of a log from ``offset`` (bytes), at most ``limit`` bytes; returns (text, new offset).

    Progress bars redraw a line with carriage returns; only the last state of such a line is kept.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(limit)
    except OSError:
        return "", offset
    cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
    if cut == 0 and len(data) == limit:
        cut = len(data)  # one enormous line: pass it on rather than stall
    text = data[:cut].decode("utf-8", errors="replace")
    lines = []
    for line in text.split("\n"):
        segments = [seg for seg in line.split("\r") if seg]
        lines.append(segments[-1] if segments else "")
    return "\n".join(lines), offset + cut
