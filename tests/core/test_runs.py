"""Run records: written as a recipe runs, with each stage's status and a failed stage's one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoestring.core.errors import ShoestringError
from shoestring.core.recipe import run_recipe
from shoestring.core.registry import STAGES
from shoestring.core.runs import list_runs, ordered_stages, read_run


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STAGES, "toy", "toy_stage")


def _recipe(tmp_path: Path, second_source: Path) -> Path:
    (tmp_path / "l.txt").write_text("1\n2\n")
    p = tmp_path / "r.yaml"
    p.write_text(
        f"name: t\ndescription: d\nworkspace: {tmp_path / 'ws'}\nstages:\n"
        f"  zeta: {{stage: toy, source: {tmp_path / 'l.txt'}}}\n"
        f"  alpha: {{stage: toy, source: {second_source}, upstream: zeta}}\n"
    )
    return p


def test_a_finished_run_records_every_stage_in_recipe_order(tmp_path: Path, toy: None) -> None:
    r = _recipe(tmp_path, tmp_path / "l.txt")
    run_recipe(r, overrides=["alpha.factor=2"])
    run_recipe(r, overrides=["alpha.factor=2"])
    runs = list_runs(tmp_path / "ws")
    assert len(runs) == 2
    latest = runs[0]
    assert latest == json.loads((tmp_path / "ws" / "run.json").read_text())
    assert latest["status"] == "done" and latest["pid"] == os.getpid() and latest["overrides"] == ["alpha.factor=2"]
    assert [sid for sid, _ in ordered_stages(latest)] == ["zeta", "alpha"]  # not the file's sorted keys
    assert {st["status"] for st in latest["stages"].values()} == {"cached"}
    assert {st["status"] for st in runs[1]["stages"].values()} == {"done"}
    assert Path(latest["stages"]["alpha"]["artifact"]).is_dir()


def test_a_failed_stage_keeps_its_one_line_error(tmp_path: Path, toy: None) -> None:
    r = _recipe(tmp_path, tmp_path / "missing.txt")
    with pytest.raises(ShoestringError, match="file not found"):
        run_recipe(r)
    run = list_runs(tmp_path / "ws")[0]
    assert run["status"] == "failed"
    assert run["stages"]["zeta"]["status"] == "done"
    alpha = run["stages"]["alpha"]
    assert alpha["status"] == "failed" and "file not found" in alpha["error"] and "\n" not in alpha["error"]
    assert run["error"].startswith("alpha: ")


def test_a_killed_run_reads_as_interrupted(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("1\n2\n3\n")
    rec = tmp_path / "r.yaml"
    rec.write_text(
        f"name: k\nworkspace: {tmp_path / 'ws'}\nstages:\n"
        f"  only: {{stage: toy, source: {tmp_path / 'l.txt'}, crash_after: 2}}\n"
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[2]); from shoestring.core.registry import STAGES; "
        "STAGES['toy'] = 'toy_stage'; from shoestring.core.recipe import run_recipe; run_recipe(sys.argv[1])"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(rec), str(Path(__file__).parent)], capture_output=True)
    assert proc.returncode == -9  # the toy stage SIGKILLs its own process mid-stage
    run = read_run(next((tmp_path / "ws" / "runs").glob("*.json")))
    assert run is not None and run["status"] == "interrupted" and run["stages"]["only"]["status"] == "interrupted"


def test_a_killed_runs_pid_taken_by_a_newer_process_still_reads_as_interrupted(tmp_path: Path) -> None:
    """The record names a live pid (this test's) but was last written before that process started:
    the pid was reused after a kill, so the run is not running."""
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"status": "running", "pid": os.getpid(), "stages": {"a": {"status": "running"}}}))
    assert read_run(path)["status"] == "running"  # written after this process started: its writer is alive
    os.utime(path, (0, 0))  # last written in 1970, long before this process started
    run = read_run(path)
    assert run["status"] == "interrupted" and run["stages"]["a"]["status"] == "interrupted"


KILLED_IN_A_RECORD_WRITE = """
import os, signal, sys
from pathlib import Path
from shoestring.core.runs import RunRecord

calls, kill_at, real = [0], int(sys.argv[2]), os.replace
def replace(src, dst):  # SIGKILL between writing a record's temporary file and renaming it
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
os.replace = replace
record = RunRecord(Path(sys.argv[1]), "r.yaml", "r", {"a": "toy"}, overrides=[], force=[], only=[])
record.stage_started("a")
"""


def killed_record_writer(ws: Path, kill_at: int) -> None:
    """A run SIGKILLed inside its ``kill_at``-th record write (0: never); it leaves that write's temporary."""
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_A_RECORD_WRITE, str(ws), str(kill_at)])
    assert proc.returncode == (-9 if kill_at else 0)


def temporaries(ws: Path) -> list[str]:
    return sorted(p.relative_to(ws).as_posix() for p in ws.rglob(".*.tmp-*"))


def test_temporaries_of_record_writers_killed_mid_write_are_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    killed_record_writer(ws, 4)  # the second write of run.json
    assert [t.split("-")[0] for t in temporaries(ws)] == [".run.json.tmp"]
    record = read_run(ws / "run.json")  # a reader removes the dead writer's temporary beside the record
    assert record is not None and record["status"] == "interrupted" and temporaries(ws) == []
    killed_record_writer(ws, 1)  # the first write of runs/<id>.json: no record at all
    live = ws / "runs" / f".{os.getpid()}.json.tmp-{os.getpid()}"  # this process is writing it
    live.write_text("{}")
    assert len(temporaries(ws)) == 2
    assert [r["status"] for r in list_runs(ws)] == ["interrupted"]  # listing removes the killed one's only
    assert temporaries(ws) == [f"runs/{live.name}"]
    live.unlink()
    killed_record_writer(ws, 1)
    killed_record_writer(ws, 0)  # the next run removes what the killed one left
    assert temporaries(ws) == []
