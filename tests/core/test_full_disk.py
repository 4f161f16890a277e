"""A workspace whose disk fills up (or is read-only) mid-stage, on a real kernel file system.

The workspace lives on a small tmpfs mounted inside a user + mount namespace (``unshare``, no
root needed), so "no space left on device" and "read-only file system" come from the kernel,
not from a mock. The real CLI runs ``curate`` there and must: exit 2 with one clear last line on
stderr (no traceback), leave no artifact folder without a manifest and no ``*.tmp-*`` file, and,
once space is freed, finish with the same bytes as a run that was never interrupted.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoestring.cli import disk_error_line

ROOT = Path(__file__).resolve().parents[2]
DISK = 4 << 20  # bytes: the tmpfs; a filler file takes all of it but the trial's budget
# Words of the corpus: a fixed list (not pydoc_data, whose text changes between Python
# releases) so the bytes a run writes, and so the moment each budget runs out, are the same
# on every machine.
VOCABULARY = (
    "the a to of and in is it that for on with as by at from this be are was or not but all can "
    "disk backup restore snapshot schedule network agent vault key encrypt replicate cloud bucket "
    "retention prune firmware update error log user role invite web console status light server "
    "client request response cache index record field value table query report metric alert queue"
)
WORDS = VOCABULARY.split()
# (free bytes left to the workspace, where the disk must run out, verb). Tuned on the corpus below
# (1,200 records, 12 chunks; an uninterrupted run peaks near 2.6 MB): if the stage's output
# changes size these moments move; re-tune the budgets so each trial still fails where it says.
# The manifest's window is a few KB wide (its size depends on paths), so the commit is tested
# on its own below.
TRIALS = [
    (0, "<workspace>", "curate"),  # full before it starts: the workspace's own write probe
    (100 << 10, "chunks/chunk-000000", "curate"),  # the first chunk's scratch files
    (1200 << 10, "chunks/chunk-0000", "curate-2"),  # a middle chunk, written by a worker process
    (2350 << 10, "<workspace>", "run"),  # the splits, open files in the artifact's temporary folder; via a recipe
]


def make_corpus(path: Path, n: int = 1200, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 80)))
            fh.write(json.dumps({"id": i, "body": body}) + "\n")


def write_configs(base: Path, corpus: Path) -> dict[str, Path]:
    """A curate config (1 and 2 workers) and a one-stage recipe of it; all give the same artifact."""
    cfg: dict[str, Any] = {
        "sources": [{"path": str(corpus), "name": "c", "fields": {"id": "id", "text": "body"}}],
        "quality": {"min_words": 5, "min_stop_words": 1},
        "workers": 1,
        "chunk_size": 100,
    }
    out = {"curate": base / "curate.yaml", "curate-2": base / "curate-2.yaml", "run": base / "recipe.yaml"}
    out["curate"].write_text(yaml.safe_dump(cfg))
    out["curate-2"].write_text(yaml.safe_dump({**cfg, "workers": 2}))
    out["run"].write_text(yaml.safe_dump({"name": "disk", "stages": {"data": {"stage": "curate", **cfg}}}))
    return out


def cli(verb: str, cfg: Path, ws: Path) -> str:
    """The shell command line of `shoestring curate -c CFG` or `shoestring run RECIPE`, on workspace ``ws``."""
    args = ["run", str(cfg)] if verb == "run" else ["curate", "-c", str(cfg)]
    return shlex.join([sys.executable, "-m", "shoestring.cli", *args, "-w", str(ws)])


def cli_env() -> dict[str, str]:
    """This checkout's sources first; a wide terminal so rich never wraps the error line."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "COLUMNS": "400", "PYTHONPATH": path}


def in_namespace(script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a shell script as root of a fresh user + mount namespace (mounts vanish with it)."""
    env = cli_env()
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-euc", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def payload(art: Path) -> dict[str, bytes]:
    """Every file of an artifact but its manifest (which records timings)."""
    return {p.name: p.read_bytes() for p in sorted(art.iterdir()) if p.name != "manifest.json"}


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Fail (never skip) where a user namespace cannot mount a tmpfs: the test would prove nothing."""
    if shutil.which("unshare") is None:
        pytest.fail("`unshare` (util-linux) is not installed: this test needs it to mount a small tmpfs")
    probe_dir = tmp_path_factory.mktemp("probe")
    probe = in_namespace(f"mount -t tmpfs -o size=64k tmpfs {probe_dir}", timeout=30)
    if probe.returncode != 0:
        pytest.fail(
            "cannot mount a tmpfs in a user namespace (`unshare --user --map-root-user --mount`): "
            f"{probe.stderr.strip()}; enable unprivileged user namespaces (kernel.unprivileged_userns_clone=1, "
            "or on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0)"
        )


@pytest.fixture(scope="module")
def reference(namespaces: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The corpus, its configs and an uninterrupted run's artifact (on an ordinary disk)."""
    base = tmp_path_factory.mktemp("full-disk")
    corpus = base / "corpus.jsonl"
    make_corpus(corpus)
    cfgs = write_configs(base, corpus)
    done = subprocess.run(
        shlex.split(cli("curate", cfgs["curate"], base / "ws")),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    art = Path(done.stdout.strip().splitlines()[-1])
    return {"base": base, "cfgs": cfgs, "name": art.name, "payload": payload(art)}


def check_failed(out: Path, ws: Path, where: str) -> str:
    """Assert the failed run's promises; return its error line."""
    rc = int((out / "fail.rc").read_text())
    err = (out / "fail.err").read_text()
    assert rc == 2, f"exit {rc}, stderr:\n{err}"
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert sum(line.startswith("error:") for line in lines) == 1, err
    last = lines[-1]
    assert last.startswith("error: ") and "re-run the same command" in last, err
    path = re.search(r" (?:writing|at|on|workspace) (/.+?):? ", last)
    assert path is not None, f"the error line names no path: {last}"
    # A failed write into an open file names no file: the workspace names the disk instead.
    assert (where in path[1]) if where != "<workspace>" else (path[1] == str(ws)), (
        f"the disk ran out elsewhere than {where!r} (re-tune TRIALS): {last}"
    )
    listing = (out / "fail.files").read_text().split()
    assert not [f for f in listing if ".tmp-" in f], f"temporary files left behind: {listing}"
    assert not [f for f in listing if f.startswith("./ws/tmp/")], f"half artifact left in tmp/: {listing}"
    for art in (out / "fail-artifacts").iterdir():  # a visible artifact is a complete one
        manifest = json.loads((art / "manifest.json").read_text())
        assert art.name.endswith(manifest["hash"][:16]), art
    return last


def check_rerun(out: Path, reference: dict[str, Any]) -> None:
    rc = int((out / "rerun.rc").read_text())
    assert rc == 0, (out / "rerun.err").read_text()
    art = out / "rerun-artifacts" / reference["name"]
    assert art.is_dir(), f"the rerun made {sorted(p.name for p in (out / 'rerun-artifacts').iterdir())}"
    assert payload(art) == reference["payload"]  # byte for byte what an uninterrupted run writes
    listing = (out / "rerun.files").read_text().split()
    assert not [f for f in listing if ".tmp-" in f or f.startswith(("./ws/tmp/", "./ws/work/"))], listing


@pytest.mark.slow
@pytest.mark.parametrize(("budget", "where", "verb"), TRIALS, ids=[f"{b >> 10}k-{v}" for b, _, v in TRIALS])
def test_disk_full_mid_stage_gives_one_line_and_a_rerun_finishes(
    reference: dict[str, Any], tmp_path: Path, budget: int, where: str, verb: str
) -> None:
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    ws, run = disk / "ws", cli(verb, reference["cfgs"][verb], disk / "ws")
    script = f"""
    mount -t tmpfs -o size={DISK} tmpfs {disk}
    head -c {DISK - budget} /dev/zero > {disk}/filler || true  # budget 0: it fills the disk, then fails
    {run} > {out}/fail.out 2> {out}/fail.err && echo 0 > {out}/fail.rc || echo $? > {out}/fail.rc
    (cd {disk} && find . ) > {out}/fail.files
    mkdir {out}/fail-artifacts && cp -a {ws}/artifacts/. {out}/fail-artifacts/
    if [ -f {ws}/run.json ]; then cp {ws}/run.json {out}/fail-run.json; fi
    rm {disk}/filler
    {run} > {out}/rerun.out 2> {out}/rerun.err && echo 0 > {out}/rerun.rc || echo $? > {out}/rerun.rc
    (cd {disk} && find . ) > {out}/rerun.files
    mkdir {out}/rerun-artifacts && cp -a {ws}/artifacts/. {out}/rerun-artifacts/
    """
    done = in_namespace(script)
    assert done.returncode == 0, done.stderr
    line = check_failed(out, ws, where)
    assert ("no space left on device" in line.lower()) and "free space on that disk" in line, line
    check_rerun(out, reference)
    if verb == "run":  # the run record says which stage failed and why, in spite of the full disk
        record = json.loads((out / "fail-run.json").read_text())
        assert record["status"] == "failed" and "no space left on device" in record["error"].lower(), record


@pytest.mark.slow
def test_read_only_workspace_gives_one_line_and_a_rerun_finishes(reference: dict[str, Any], tmp_path: Path) -> None:
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    ws, run = disk / "ws", cli("curate", reference["cfgs"]["curate"], disk / "ws")
    # The scratch folder alone read-only (a bind mount): the workspace passes its write probe and
    # the stage fails when it starts writing. Then the whole disk read-only: the probe refuses.
    script = f"""
    mount -t tmpfs -o size={DISK} tmpfs {disk}
    mkdir -p {ws}/work
    mount --bind {ws}/work {ws}/work && mount -o remount,bind,ro {ws}/work
    {run} > {out}/fail.out 2> {out}/fail.err && echo 0 > {out}/fail.rc || echo $? > {out}/fail.rc
    (cd {disk} && find . ) > {out}/fail.files
    mkdir {out}/fail-artifacts && cp -a {ws}/artifacts/. {out}/fail-artifacts/
    mount -o remount,ro {disk}
    {run} > {out}/ro.out 2> {out}/ro.err && echo 0 > {out}/ro.rc || echo $? > {out}/ro.rc
    umount {ws}/work && mount -o remount,rw {disk}
    {run} > {out}/rerun.out 2> {out}/rerun.err && echo 0 > {out}/rerun.rc || echo $? > {out}/rerun.rc
    (cd {disk} && find . ) > {out}/rerun.files
    mkdir {out}/rerun-artifacts && cp -a {ws}/artifacts/. {out}/rerun-artifacts/
    """
    done = in_namespace(script)
    assert done.returncode == 0, done.stderr
    line = check_failed(out, ws, "work")
    assert "read-only file system" in line and "make it writable" in line, line
    ro_err = (out / "ro.err").read_text()
    assert int((out / "ro.rc").read_text()) == 2 and "Traceback" not in ro_err, ro_err
    assert ro_err.strip().splitlines()[-1].startswith("error: ") and "Read-only file system" in ro_err, ro_err
    check_rerun(out, reference)


FULL_DISK_WRITES = """
import errno, json, os, sys
from pathlib import Path
from shoestring.core.artifact import atomic_write_bytes, commit_artifact
from shoestring.core.runs import RunRecord

disk = Path(sys.argv[1])
report = {}
old = disk / "kept.json"
old.write_bytes(b"old")
try:
    atomic_write_bytes(old, b"x" * (200 << 10))
except OSError as err:
    report["write"] = [err.errno, err.filename, old.read_bytes().decode()]
tmp = disk / "ws" / "tmp" / "a.1"
tmp.mkdir(parents=True)
(tmp / "payload.bin").write_bytes(b"p" * (40 << 10))
try:
    commit_artifact(tmp, disk / "ws" / "artifacts" / "a", {"kind": "k", "hash": "0" * 64, "pad": "m" * (200 << 10)})
except OSError as err:
    report["commit"] = [err.errno, err.filename]
record = RunRecord(disk / "ws", "r.yaml", "r", {"data": "curate"}, overrides=[], force=[], only=[])
record.stage_started("data")
import torch
from shoestring.train.checkpoint import latest_checkpoint, save_checkpoint

layer = torch.nn.Linear(16, 16)
adam = torch.optim.AdamW(layer.parameters())
ckpt = disk / "ws" / "work" / "train" / "checkpoints"
save_checkpoint(ckpt, 1, layer, adam, {}, keep=2)
with open(disk / "filler", "wb", buffering=0) as fh:  # take every last free byte
    try:
        while True:
            fh.write(b"f" * 4096)
    except OSError:
        pass
try:
    record.stage_failed("data", OSError(errno.ENOSPC, "No space left on device", "somewhere"))
    report["stage_failed"] = "returned"
except OSError as err:
    report["stage_failed"] = f"raised {err}"
try:  # a Rust-backed writer (training checkpoints) says "no space" only in its message
    from safetensors.torch import save_file
    from shoestring.cli import disk_error_line

    save_file({"w": torch.zeros(1000)}, str(disk / "ws" / "w.safetensors"))
except Exception as err:
    report["safetensors"] = disk_error_line(err)
try:  # a checkpoint's temporary folder, on a disk full as it starts
    save_checkpoint(ckpt, 2, layer, adam, {}, keep=2)
except Exception as err:
    report["checkpoint"] = [disk_error_line(err), latest_checkpoint(ckpt).name]
json.dump(report, sys.stdout)
"""


@pytest.mark.slow
def test_full_disk_leaves_old_files_no_temp_files_and_no_half_artifact(namespaces: None, tmp_path: Path) -> None:
    """The writers under the stages, each on a disk too small for what it writes."""
    disk, script = tmp_path / "disk", tmp_path / "writes.py"
    disk.mkdir()
    script.write_text(FULL_DISK_WRITES)
    done = in_namespace(
        f"mount -t tmpfs -o size={128 << 10} tmpfs {disk}\n"
        f"{shlex.quote(sys.executable)} {script} {disk}\n"
        f"(cd {disk} && find . ) > {tmp_path}/files",
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # The failed write names its file and leaves the old content.
    assert report["write"] == [28, str(disk / "kept.json"), "old"], report
    assert report["commit"] == [28, str(disk / "ws" / "tmp" / "a.1" / "manifest.json")], report
    assert report["stage_failed"] == "returned", report  # a second ENOSPC does not mask the first
    assert str(report.get("safetensors")).startswith("no space left on device writing the workspace"), report
    line, kept = report["checkpoint"]  # the failed checkpoint left the previous one and no temporary folder
    assert line.startswith("no space left on device") and kept == "step-00000001", report
    files = (tmp_path / "files").read_text().split()
    assert not [f for f in files if ".tmp-" in f], files
    assert "./ws/tmp/a.1" not in files and "./ws/artifacts/a" not in files, files  # payload gone, space freed


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.ENOSPC, "no space left on device writing /w/x: free space on that disk"),
        (errno.EDQUOT, "disk quota exceeded writing /w/x: free space within your quota"),
        (errno.EROFS, "read-only file system at /w/x: make it writable"),
        (errno.EACCES, "permission denied on /w/x: make it writable for you"),
    ],
)
def test_disk_error_line_names_the_path_and_the_fix(code: int, says: str) -> None:
    line = disk_error_line(OSError(code, os.strerror(code), "/w/x"))
    assert (
        line is not None
        and line.startswith(says)
        and line.endswith("re-run the same command; finished stages are kept")
    )


def test_other_os_errors_stay_bugs_to_see() -> None:
    assert disk_error_line(OSError(errno.ENOENT, "No such file or directory", "/w/x")) is None
    assert disk_error_line(PermissionError(errno.EACCES, "Permission denied")) is None  # no path: not the user's disk
    assert "the workspace" in str(disk_error_line(OSError(errno.ENOSPC, "No space left on device")))
    assert disk_error_line(RuntimeError("I/O error: Read-only file system (os error 30)")).startswith("read-only")
    assert disk_error_line(RuntimeError("unexpected pos 576 vs 534")) is None  # torch.save's full disk: unreadable
