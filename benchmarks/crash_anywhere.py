"""Crash anywhere: SIGKILL `shoestring run RECIPE` at random moments, rerun, compare with an uninterrupted run.

What it checks (issue 18, item 3):

1. right after every kill: no visible half artifact - every folder in ``artifacts/`` has a parsable
   ``manifest.json`` and exactly the reference artifact's file list, every stage link points at one,
   and no process of the killed run's session survives (pool / Ray workers die with it);
2. after the rerun that completes: the same artifacts as the reference, every file byte-identical
   (manifests compared with the keys in :data:`VOLATILE_MANIFEST_KEYS` removed, nothing else), and a
   workspace that needs no manual cleanup (``tmp/`` and ``work/`` empty, no stray temporary files).

Every run of a trial and the reference use the same workspace path (the reference is moved aside
when it finishes), so absolute paths recorded in manifests are comparable byte for byte.

    python benchmarks/crash_anywhere.py --recipe recipes/curate.yaml --trials 10 --seed 0 \\
        --work /tmp/crash --set data.workers=2 --set data.chunk_size=20

Every uninterrupted run and every trial starts from the same planner state: the run log and
calibration file of the shoestring cache (``runs/``, ``hardware-*.json``) as they were when the harness
started, restored before each of them and at the end. Otherwise each completed run feeds the next
plan (``shoestring.plan.feedback``), which may then pick another micro-batch: a change of inputs, not a
crash's doing.

Writes ``<work>/crash_anywhere.json`` (trials tried / passed, kill moments, the stage each kill
landed in, every violation) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Manifest keys that differ between two correct runs, removed before comparing (dotted paths into
# manifest.json). Everything else in a manifest, and every other file, must match byte for byte.
VOLATILE_MANIFEST_KEYS: dict[str, tuple[str, ...]] = {
    "*": (
        "timings.started",  # wall-clock start of the stage
        "timings.seconds",  # how long the stage took
        "timings.resumed",  # whether this run picked up a killed run's work/ (it is meant to differ)
    ),
    "curate": ("stats.profile",),  # CPU/wall seconds per phase and peak RSS of this run
}


@dataclass
class Kill:
    """One SIGKILL: when (seconds after the run started) and where it landed."""

    at_s: float
    stage: str
    """Stage id running at the kill, ``startup`` (before the run record), ``between`` (no stage running)
    or ``finished`` (the run ended before the kill)."""
    detail: str = ""
    violations: list[str] = field(default_factory=list)


@dataclass
class Trial:
    index: int
    kills: list[Kill] = field(default_factory=list)
    rerun_s: float = 0.0
    differing: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.differing and not self.violations and not any(k.violations for k in self.kills)


def shoestring_command(recipe: str, ws: Path, overrides: list[str]) -> list[str]:
    sets = [a for o in overrides for a in ("--set", o)]
    return [sys.executable, "-m", "shoestring.cli", "run", recipe, "-w", str(ws), *sets]


def run_env() -> dict[str, str]:
    src = str(ROOT / "src")
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": f"{src}{os.pathsep}{path}" if path else src}  # fmt: skip


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a run in its own session, so one killpg reaches every child it spawns."""
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def run_to_end(cmd: list[str], log: Path, timeout_s: float) -> float:
    """Run to completion; return wall seconds. A failing run raises with the log's tail."""
    t0 = time.perf_counter()
    proc = start(cmd, log)
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        raise RuntimeError(f"run took over {timeout_s:.0f} s; see {log}") from None
    if rc != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"run failed (exit {rc}); last lines of {log}:\n{tail}")
    return time.perf_counter() - t0


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid`` (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            out.append(int(d.name))
    return out


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` in the process tree (one /proc scan)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_session(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> list[int]:
    """SIGKILL the run's whole process group; return pids still alive ``grace_s`` later: of its session, or
    below it in the tree (a child that moved to its own session, as a daemon does, escapes a killpg)."""
    below = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + grace_s
    while (alive := sorted({*session_members(proc.pid), *filter(_alive, below)})) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in alive:  # report them, and do not leave them running
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive


def where_killed(ws: Path, pid: int, exited: bool) -> tuple[str, str]:
    """(stage, detail) from the run record the killed process was writing."""
    if exited:
        return "finished", ""
    try:
        run = json.loads((ws / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "startup", "no run record yet"
    if run.get("pid") != pid:
        return "startup", "no run record yet"
    running = [sid for sid, st in run.get("stages", {}).items() if st.get("status") == "running"]
    done = [sid for sid, st in run.get("stages", {}).items() if st.get("status") in ("done", "cached")]
    if not running:
        return "between", f"{len(done)} stage(s) finished"
    work_files = sum(1 for p in (ws / "work").rglob("*") if p.is_file())
    return running[0], f"{len(done)} stage(s) finished, {work_files} durable file(s) in work/"


TFEVENTS = re.compile(r"(events\.out\.tfevents)\.[^/]+$")
"""TensorBoard names its event file after the wall clock, host and pid; compared as ``events.out.tfevents.*``."""


def _files(art: Path) -> dict[str, Path]:
    return {TFEVENTS.sub(r"\1.*", p.relative_to(art).as_posix()): p
            for p in art.rglob("*") if p.is_file() or p.is_symlink()}  # fmt: skip


def artifact_files(art: Path) -> list[str]:
    return sorted(_files(art))


def visible_state_violations(ws: Path, ref: Path) -> list[str]:
    """What a reader of the workspace could see that is not a complete artifact."""
    bad = []
    arts = ws / "artifacts"
    for d in sorted(arts.iterdir()) if arts.is_dir() else []:
        if not d.is_dir():
            bad.append(f"artifacts/{d.name} is not a folder")
            continue
        try:
            json.loads((d / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            bad.append(f"artifacts/{d.name}: no readable manifest.json ({type(err).__name__})")
            continue
        want = ref / "artifacts" / d.name
        if not want.is_dir():
            bad.append(f"artifacts/{d.name}: the reference run has no such artifact (hash differs)")
        elif (got := artifact_files(d)) != (exp := artifact_files(want)):
            missing, extra = sorted(set(exp) - set(got)), sorted(set(got) - set(exp))
            bad.append(f"artifacts/{d.name}: half artifact (missing {missing}, extra {extra})")
    for link in sorted(p for p in ws.iterdir() if p.is_symlink()):
        if not (link / "manifest.json").is_file():
            bad.append(f"stage link {link.name} -> {os.readlink(link)} points at no finished artifact")
    return bad


def leftover_violations(ws: Path) -> list[str]:
    """Anything a finished rerun left behind that someone would have to clean up by hand."""
    bad = []
    for sub in ("tmp", "work"):
        for p in sorted((ws / sub).iterdir()) if (ws / sub).is_dir() else []:
            bad.append(f"{sub}/{p.name} left behind")
    for p in ws.rglob("*"):
        rel = p.relative_to(ws).as_posix()
        if not rel.startswith(("tmp/", "work/")) and (".tmp-" in p.name or ".link-" in p.name):
            bad.append(f"stray temporary file {rel}")
    try:
        status = json.loads((ws / "run.json").read_text()).get("status")
    except (OSError, json.JSONDecodeError):
        status = "unreadable"
    if status != "done":
        bad.append(f"run.json says {status!r} after the rerun finished")
    return bad


def _drop_dotted(tree: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


def comparable_manifest(path: Path) -> bytes:
    """A manifest with the volatile keys of its stage removed, as canonical JSON bytes."""
    data = json.loads(path.read_text())
    for key in (*VOLATILE_MANIFEST_KEYS["*"], *VOLATILE_MANIFEST_KEYS.get(str(data.get("stage")), ())):
        _drop_dotted(data, key)
    return json.dumps(data, sort_keys=True).encode()


Measured = dict[str, set[str] | None]
"""``artifacts/<name>/<file>`` -> the keys in it whose values two uninterrupted runs disagree on
(``[*]`` for any JSONL line), or None: the whole file differs (not JSON, or unparsable)."""


def _generic(key: str) -> str:
    return re.sub(r"^\[\d+\]", "[*]", key)


def differing_files(ws: Path, ref: Path, measured: Measured | None = None) -> list[str]:
    """Every artifact file (relative to the workspace) that is not the reference's, byte for byte,
    leaving out what ``measured`` says two correct runs already disagree on."""
    measured = measured or {}
    got = {p.name for p in (ws / "artifacts").iterdir()} if (ws / "artifacts").is_dir() else set()
    want = {p.name for p in (ref / "artifacts").iterdir()}
    out = [f"artifacts/{n} (missing)" for n in sorted(want - got)]
    out += [f"artifacts/{n} (not in the reference)" for n in sorted(got - want)]
    for name in sorted(got & want):
        fa, fb = _files(ws / "artifacts" / name), _files(ref / "artifacts" / name)
        out += [f"artifacts/{name}/{f} (missing)" for f in sorted(set(fb) - set(fa))]
        out += [f"artifacts/{name}/{f} (extra)" for f in sorted(set(fa) - set(fb))]
        for f in sorted(set(fa) & set(fb)):
            rel = f"artifacts/{name}/{f}"
            if f == "manifest.json":
                same = comparable_manifest(fa[f]) == comparable_manifest(fb[f])
            else:
                same = fa[f].read_bytes() == fb[f].read_bytes()
            if same or (rel in measured and measured[rel] is None):
                continue
            keys = [k for k in differing_keys(fa[f], fb[f]) if _generic(k) not in (measured.get(rel) or set())]
            if keys or rel not in measured:
                out.append(rel + (f" (keys: {', '.join(keys[:8])})" if keys else ""))
    return out


def measured_between(a: Path, b: Path) -> Measured:
    """What two uninterrupted runs' artifacts disagree on: their measurements of the machine (timings,
    resident memory, a plan fed by the runs before it), not state a crash could have left."""
    out: Measured = {}
    for line in differing_files(a, b):
        rel, _, rest = line.partition(" (")
        if rest.startswith(("missing", "extra", "not in")):
            continue  # a file or artifact one run lacks is never a measurement
        keys = differing_keys(a / rel, b / rel)
        out[rel] = {_generic(k) for k in keys} if keys and "(unparsable)" not in keys else None
    return out


def differing_keys(a: Path, b: Path) -> list[str]:
    """For JSON / JSONL files: the dotted keys whose values differ (``[n]`` = line n), to name them."""

    def load(p: Path) -> Any:
        if p.name == "manifest.json":
            return json.loads(comparable_manifest(p))
        text = p.read_text(errors="replace")
        if p.suffix == ".jsonl":
            return {f"[{i}]": json.loads(line) for i, line in enumerate(text.splitlines()) if line.strip()}
        return json.loads(text)

    if a.suffix not in (".json", ".jsonl"):
        return []
    try:
        x, y = load(a), load(b)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ["(unparsable)"]
    out: list[str] = []

    def walk(u: Any, v: Any, at: str) -> None:
        if isinstance(u, dict) and isinstance(v, dict):
            for k in sorted(set(u) | set(v)):
                walk(u.get(k), v.get(k), f"{at}.{k}" if at else str(k))
        elif u != v:
            out.append(at or "(whole)")

    walk(x, y, "")
    return out


class PlannerState:
    """The cache's planner files (run log, calibration), saved once and put back on demand."""

    def __init__(self, keep: Path) -> None:
        from shoestring.models.loading import cache_dir

        self.cache, self.keep = cache_dir(), keep
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True)
        if (self.cache / "runs").is_dir():
            shutil.copytree(self.cache / "runs", keep / "runs")
        for f in self.cache.glob("hardware-*.json"):
            shutil.copy2(f, keep / f.name)

    def restore(self) -> None:
        shutil.rmtree(self.cache / "runs", ignore_errors=True)
        if (self.keep / "runs").is_dir():
            shutil.copytree(self.keep / "runs", self.cache / "runs")
        for f in self.cache.glob("hardware-*.json"):
            f.unlink()
        for f in self.keep.glob("hardware-*.json"):
            shutil.copy2(f, self.cache / f.name)


def reference_run(recipe: str, overrides: list[str], work: Path, timeout_s: float,
                  name: str = "reference") -> tuple[Path, float]:  # fmt: skip
    """One uninterrupted run in ``work/ws``, moved to ``work/<name>``; returns (path, wall seconds)."""
    ws, ref = work / "ws", work / name
    for d in (ws, ref):
        shutil.rmtree(d, ignore_errors=True)
    seconds = run_to_end(shoestring_command(recipe, ws, overrides), work / f"{name}.log", timeout_s)
    ws.rename(ref)
    return ref, seconds


def crash_trial(recipe: str, overrides: list[str], work: Path, ref: Path, moments: list[float], index: int,
                timeout_s: float, redraw: random.Random | None = None,
                measured: Measured | None = None) -> Trial:  # fmt: skip
    """Kill a fresh run at each moment (seconds after its start, one run per moment), then rerun to the end.

    With ``redraw``, a run that finished before its kill moment (the machine was faster than during the
    reference) is not a kill: the workspace is wiped and a new moment drawn below the time it took
    (twice at most; then it is recorded as ``finished``)."""
    ws = work / "ws"
    shutil.rmtree(ws, ignore_errors=True)
    cmd = shoestring_command(recipe, ws, overrides)
    log = work / f"trial-{index}.log"
    log.unlink(missing_ok=True)
    trial = Trial(index)
    pending, retries = list(moments), 2 if redraw is not None else 0
    while pending:
        at = pending.pop(0)
        t0 = time.perf_counter()
        proc = start(cmd, log)
        exited = False
        try:
            proc.wait(timeout=at)
            exited = True
        except subprocess.TimeoutExpired:
            pass
        took = time.perf_counter() - t0
        survivors = kill_session(proc)
        if exited and retries and redraw is not None and not trial.kills:
            retries -= 1
            shutil.rmtree(ws, ignore_errors=True)
            pending.insert(0, redraw.uniform(0.02, 0.98) * took)
            continue
        stage, detail = where_killed(ws, proc.pid, exited)  # the dead run's record says where it was
        kill = Kill(round(at, 3), stage, detail)
        if survivors:
            kill.violations.append(f"processes of the killed run survived SIGKILL of its group: {survivors}")
        kill.violations += visible_state_violations(ws, ref)
        trial.kills.append(kill)
    try:
        trial.rerun_s = round(run_to_end(cmd, log, timeout_s), 3)
    except RuntimeError as err:
        trial.violations.append(f"rerun after the kill(s) failed: {err}")
        return trial
    trial.violations += visible_state_violations(ws, ref) + leftover_violations(ws)
    trial.differing = differing_files(ws, ref, measured)
    return trial


def kill_moments(rng: random.Random, trials: int, kills_per_trial: int, wall_s: float) -> list[list[float]]:
    """Uniform moments in (0, wall_s), seeded: the same seed kills at the same moments."""
    return [[rng.uniform(0.02, 0.98) * wall_s for _ in range(kills_per_trial)] for _ in range(trials)]


def print_table(trials: list[Trial]) -> None:
    print(f"{'trial':>5}  {'kill at s':>9}  {'stage':<10} {'detail':<48} result")
    for t in trials:
        for i, k in enumerate(t.kills):
            last = i == len(t.kills) - 1
            result = ("pass" if t.passed else "FAIL") if last else ""
            print(f"{t.index:>5}  {k.at_s:>9.2f}  {k.stage:<10} {k.detail:<48} {result}")
        for v in [v for k in t.kills for v in k.violations] + t.violations:
            print(f"       ! {v}")
        for f in t.differing:
            print(f"       ≠ {f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="recipes/curate.yaml", help="recipe path, relative to the repo root")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--kills-per-trial", type=int, default=1, help="kills before the rerun that must complete")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/crash_anywhere"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="STAGE.KEY=VALUE (repeatable)")
    ap.add_argument("--reuse-reference", action="store_true",
                    help="reuse <work>/reference from an earlier run of the same recipe and overrides")  # fmt: skip
    ap.add_argument("--budget-minutes", type=float, default=0, help="start no new trial after this (0: none)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one uninterrupted run may take")
    ap.add_argument("--references", type=int, default=1, choices=[1, 2],
                    help="2: a second uninterrupted run; what the two disagree on (a recipe whose stages measure "
                         "the machine: plan, timings) is left out of the byte comparison, and listed")  # fmt: skip
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    work = args.work.resolve()

    t_start = time.monotonic()
    state = PlannerState(work / "planner-state")
    try:
        return _main(args, work, t_start, state)
    finally:
        state.restore()


def _main(args: argparse.Namespace, work: Path, t_start: float, state: PlannerState) -> int:
    saved = work / "reference.json"  # the command the reference ran, and its wall time
    same = {"recipe": args.recipe, "overrides": args.overrides}
    if (
        args.reuse_reference
        and saved.is_file()
        and {**json.loads(saved.read_text()), "wall_s": 0} == {**same, "wall_s": 0}
    ):
        ref, wall = work / "reference", float(json.loads(saved.read_text())["wall_s"])
    else:
        state.restore()
        ref, wall = reference_run(args.recipe, args.overrides, work, args.timeout)
        saved.write_text(json.dumps({**same, "wall_s": wall}) + "\n")
    print(f"reference run: {wall:.1f} s, artifacts {sorted(p.name for p in (ref / 'artifacts').iterdir())}")
    measured: Measured = {}
    if args.references == 2:
        state.restore()
        ref2, wall2 = reference_run(args.recipe, args.overrides, work, args.timeout, name="reference-2")
        measured = measured_between(ref2, ref)
        print(f"second reference run: {wall2:.1f} s; the two disagree on (left out of the comparison):")
        for rel, keys in sorted(measured.items()):
            print(f"  {rel}: {'the whole file' if keys is None else ', '.join(sorted(keys))}")
    rng = random.Random(args.seed)
    trials: list[Trial] = []
    for i, moments in enumerate(kill_moments(rng, args.trials, args.kills_per_trial, wall)):
        if args.budget_minutes and time.monotonic() - t_start > args.budget_minutes * 60:
            print(f"time budget of {args.budget_minutes} min spent: stopping after {len(trials)} trial(s)")
            break
        state.restore()
        trials.append(crash_trial(args.recipe, args.overrides, work, ref, moments, i, args.timeout, rng, measured))
        t = trials[-1]
        print(f"trial {i}: kills at {[k.at_s for k in t.kills]} in {[k.stage for k in t.kills]}: "
              f"{'pass' if t.passed else 'FAIL'}", flush=True)  # fmt: skip
        write_report(work / "crash_anywhere.json", args, wall, trials, measured)  # after each trial: a cut-short run counts
    print_table(trials)
    passed = sum(t.passed for t in trials)
    print(f"{passed}/{len(trials)} trials passed ({sum(len(t.kills) for t in trials)} kills)")
    print(f"wrote {work / 'crash_anywhere.json'}")
    return 0 if passed == len(trials) else 1


def write_report(path: Path, args: argparse.Namespace, wall: float, trials: list[Trial],
                 measured: Measured | None = None) -> None:  # fmt: skip
    report = {
        "recipe": args.recipe,
        "overrides": args.overrides,
        "seed": args.seed,
        "reference_wall_s": round(wall, 3),
        "volatile_manifest_keys": VOLATILE_MANIFEST_KEYS,
        "measured_between_references": {k: None if v is None else sorted(v) for k, v in (measured or {}).items()},
        "trials_tried": len(trials),
        "trials_passed": sum(t.passed for t in trials),
        "kills_by_stage": _count(k.stage for t in trials for k in t.kills),
        "trials": [{**asdict(t), "passed": t.passed} for t in trials],
    }
    path.write_text(json.dumps(report, indent=2) + "\n")


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


if __name__ == "__main__":
    raise SystemExit(main())
