"""`atomic_path` and `sweep_dead_temps`: a failed write leaves no temporary, a killed writer's
temporary is removed once it is gone, and a live writer's never is."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoestring.core.artifact import atomic_path, sweep_dead_temps


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    """Another process that is running (and started before any file the test writes)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
@pytest.mark.parametrize("rust", [False, True], ids=["oserror", "rust-writer"])
def test_a_failed_write_leaves_the_old_content_and_no_temporary(tmp_path: Path, folder: bool, rust: bool) -> None:
    # safetensors (Rust) reports a full disk as its own exception type, not as an OSError
    err = RuntimeError("No space left on device (os error 28)") if rust else OSError(errno.ENOSPC, "No space left")
    target = tmp_path / "out"
    if folder:
        target.mkdir()
        (target / "a").write_text("old")
    else:
        target.write_text("old")
    with pytest.raises(type(err)) as caught, atomic_path(target, folder=folder) as tmp:
        (tmp / "a" if folder else tmp).write_text("half")  # the writer got this far
        raise err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "a" if folder else target).read_text() == "old"
    if isinstance(err, OSError):  # a failed write names no file: the target is named instead
        assert caught.value.filename == str(target)


def test_a_write_replaces_the_file_and_a_folder_committed_first_is_kept(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "f") as tmp:
        tmp.write_text("new")
    assert (tmp_path / "f").read_text() == "new"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("theirs")  # another process converted the same source first
    with atomic_path(tmp_path / "d", folder=True) as tmp:
        (tmp / "x").write_text("ours")
    assert (tmp_path / "d" / "x").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]


def test_only_temporaries_of_gone_writers_are_swept(tmp_path: Path, live_pid: int) -> None:
    dead = dead_pid()
    (tmp_path / f".a.json.tmp-{dead}").write_text("killed mid-write")
    (tmp_path / f".step-1.tmp-{dead}").mkdir()
    (tmp_path / f".step-1.tmp-{dead}" / "w").write_text("killed mid-write")
    reused = tmp_path / f".b.json.tmp-{live_pid}"
    reused.write_text("killed; its pid now belongs to a newer process")
    os.utime(reused, (0, 0))  # last written in 1970, before the live process started
    keep = [f".a.json.tmp-{os.getpid()}", f".c.json.tmp-{live_pid}", "a.json", ".a.json.tmp-x"]
    for name in keep:
        (tmp_path / name).write_text("a live writer's, or not a temporary")
    assert sweep_dead_temps(tmp_path, "step-*") == [tmp_path / f".step-1.tmp-{dead}"]
    removed = sweep_dead_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".a.json.tmp-{dead}", reused.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert sweep_dead_temps(tmp_path / "missing") == []
