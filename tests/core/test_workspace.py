from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import toy_stage

from shoestring.core.artifact import Artifact
from shoestring.core.errors import ShoestringError
from shoestring.core.workspace import Stage, Workspace

STAGE = Stage("toy", "toy", toy_stage.ToyConfig, 1, "toy", toy_stage.build)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    p = tmp_path / "lines.txt"
    p.write_text("a\nb\nc\n")
    return p


def test_run_writes_manifest_and_payload(tmp_path: Path, src: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    res = ws.run(STAGE, toy_stage.ToyConfig(source=src))
    assert not res.cached
    art = res.artifact
    assert (art.path / "count.txt").read_text() == "3"
    m = json.loads((art.path / "manifest.json").read_text())
    assert m["kind"] == "toy" and m["schema_version"] == 1
    assert m["stats"]["count"] == 3
    assert m["config"]["factor"] == 1
    assert len(m["hash"]) == 64
    assert m["hashed"]["files"]["source"]
    assert "torch" in m["versions"] and "python" in m["versions"]
    assert m["timings"]["seconds"] >= 0
    # nothing left behind in tmp/ or work/
    assert list((ws.root / "tmp").iterdir()) == []
    assert list((ws.root / "work").iterdir()) == []


def test_same_config_is_cached_and_changes_invalidate(tmp_path: Path, src: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    first = ws.run(STAGE, toy_stage.ToyConfig(source=src))
    again = ws.run(STAGE, toy_stage.ToyConfig(source=src))
    assert again.cached and again.artifact.path == first.artifact.path
    other = ws.run(STAGE, toy_stage.ToyConfig(source=src, factor=2))
    assert not other.cached and other.artifact.hash != first.artifact.hash
    src.write_text("a\nb\nc\nd\n")  # same path, new content -> new hash
    edited = ws.run(STAGE, toy_stage.ToyConfig(source=src))
    assert not edited.cached and edited.artifact.stats["count"] == 4


def test_a_cache_hit_removes_scratch_a_kill_after_commit_left(tmp_path: Path, src: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    first = ws.run(STAGE, toy_stage.ToyConfig(source=src))
    scratch = ws.root / "work" / first.artifact.path.name  # as if killed after the rename, before the rmtree
    (scratch / "shard-0").mkdir(parents=True)
    (scratch / "shard-0" / "rows.jsonl").write_text("{}\n")
    assert ws.run(STAGE, toy_stage.ToyConfig(source=src)).cached
    assert list((ws.root / "work").iterdir()) == []


def test_a_dead_runs_tmp_whose_pid_was_reused_is_cleared(tmp_path: Path, src: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    first = ws.run(STAGE, toy_stage.ToyConfig(source=src))
    key = first.artifact.path.name
    reuser = subprocess.Popen(["sleep", "30"])  # a live process that now holds the dead run's pid
    try:
        stale = ws.root / "tmp" / f"{key}.{reuser.pid}"
        stale.mkdir()
        os.utime(stale, (time.time() - 3600, time.time() - 3600))  # the dead run made it an hour ago
        assert not ws.run(STAGE, toy_stage.ToyConfig(source=src), force=True).cached
        assert not stale.exists()
        fresh = ws.root / "tmp" / f"{key}.{reuser.pid}"  # made after the process started: really its own
        fresh.mkdir()
        with pytest.raises(ShoestringError, match="another shoestring process"):
            ws.run(STAGE, toy_stage.ToyConfig(source=src), force=True)
    finally:
        reuser.kill()
        reuser.wait()


def test_link_sweeps_a_killed_runs_half_made_link_and_force_leaves_tmp_empty(tmp_path: Path, src: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    art = ws.run(STAGE, toy_stage.ToyConfig(source=src)).artifact
    dead = subprocess.Popen(["true"])
    dead.wait()
    stray = ws.root / f".toy.link-{dead.pid}"  # killed between os.symlink and os.replace
    stray.symlink_to(art.path)
    ws.link("toy", art)
    assert not stray.is_symlink() and (ws.root / "toy" / "manifest.json").is_file()
    again = ws.run(STAGE, toy_stage.ToyConfig(source=src), force=True)  # the old artifact is renamed out, then deleted
    assert not again.cached and (again.artifact.path / "manifest.json").is_file()
    assert list((ws.root / "tmp").iterdir()) == []


def test_not_hashed_fields_reuse_the_cache(tmp_path: Path, src: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    first = ws.run(STAGE, toy_stage.ToyConfig(source=src))
    more_threads = ws.run(STAGE, toy_stage.ToyConfig(source=src, threads=8))
    assert more_threads.cached and more_threads.artifact.hash == first.artifact.hash


def test_drop_dotted_reaches_nested_lists() -> None:
    from shoestring.core.workspace import _drop_dotted

    tree = {"a": [{"b": 1, "c": 2}, {"b": 3}], "d": {"e": 4}}
    _drop_dotted(tree, "a[0].b")
    _drop_dotted(tree, "d.e")
    _drop_dotted(tree, "x.y[3].z")  # missing steps are ignored
    assert tree == {"a": [{"c": 2}, {"b": 3}], "d": {}}


def test_input_artifact_hash_enters_the_hash(tmp_path: Path, src: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    up = ws.run(STAGE, toy_stage.ToyConfig(source=src)).artifact
    down = ws.run(STAGE, toy_stage.ToyConfig(source=src, upstream=str(up.path)), {"upstream": up}).artifact
    assert down.stats["count"] == 6
    assert down.manifest["inputs"]["upstream"]["hash"] == up.hash
    assert up.hash in down.manifest["lineage"]


def test_failed_build_leaves_no_artifact(tmp_path: Path, src: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    missing = tmp_path / "gone.txt"
    missing.write_text("x")
    cfg = toy_stage.ToyConfig(source=missing)
    missing.unlink()
    with pytest.raises(ShoestringError, match="file not found"):
        ws.run(STAGE, cfg)
    assert list((ws.root / "artifacts").iterdir()) == []


def test_sigkill_mid_stage_leaves_no_half_artifact_and_resumes(tmp_path: Path, src: Path) -> None:
    src.write_text("\n".join(str(i) for i in range(10)) + "\n")
    code = (
        "import sys, toy_stage\n"
        "from shoestring.core.workspace import Stage\n"
        "from shoestring.core.workspace import Workspace\n"
        "S = Stage('toy','toy',toy_stage.ToyConfig,1,'toy',toy_stage.build)\n"
        f"Workspace({str(tmp_path / 'ws')!r}).run(S, toy_stage.ToyConfig(source={str(src)!r}, crash_after=4))\n"
    )
    env_path = str(Path(toy_stage.__file__).parent)
    proc = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": env_path, "PATH": "/usr/bin"}, check=False)
    assert proc.returncode == -9
    ws = Workspace(tmp_path / "ws")
    assert list((ws.root / "artifacts").iterdir()) == []  # no half artifact
    assert len(list((ws.root / "tmp").iterdir())) == 1  # a stale temp folder
    res = ws.run(STAGE, toy_stage.ToyConfig(source=src, crash_after=4))
    assert res.artifact.stats == {"count": 10, "resumed_from": 4}
    assert res.artifact.manifest["timings"]["resumed"] is True
    assert list((ws.root / "tmp").iterdir()) == []


def test_unwritable_workspace_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ShoestringError, match="not writable"):
        Workspace(blocker / "ws")


def test_artifact_load_rejects_non_artifacts(tmp_path: Path) -> None:
    with pytest.raises(ShoestringError, match="not an artifact"):
        Artifact.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ShoestringError, match="corrupt"):
        Artifact.load(tmp_path)


def test_the_loser_of_a_commit_race_keeps_the_winner_and_leaves_no_temp_folder(tmp_path: Path) -> None:
    from shoestring.core.artifact import commit_artifact

    final = tmp_path / "artifacts" / "a-0123"
    for i in (1, 2):  # two runs of the same hash commit in turn; the second finds the first's artifact
        tmp = tmp_path / "tmp" / f"a-0123.{i}"
        tmp.mkdir(parents=True)
        (tmp / "out.txt").write_text("same content")
        art = commit_artifact(tmp, final, {"kind": "k", "hash": "0" * 64, "run": i})
        assert not tmp.exists()
    assert art.path == final and json.loads((final / "manifest.json").read_text())["run"] == 1
    assert list((tmp_path / "tmp").iterdir()) == []
