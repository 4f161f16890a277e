"""Crash anywhere, bounded: `shoestring run recipes/curate.yaml` with 2 workers, SIGKILLed at three
seeded-random moments (three runs killed in a row), then rerun: the dataset must be byte-identical
to an uninterrupted run, no kill may leave a half artifact visible, and nothing needs cleaning up.
The harness is benchmarks/crash_anywhere.py; its long runs are reported in benchmarks/RESULTS.md."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# The model-backed parts (semantic dedup, zero-shot labels) are off so three kills fit the test budget;
# chunks of 20 records give the 2-worker pool several chunks to finish (and lose) between kills.
SMALL = ["data.workers=2", "data.chunk_size=20", "data.dedup.semantic=false", "data.labels.zero_shot=[]"]


def _harness():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("crash_anywhere", ROOT / "benchmarks" / "crash_anywhere.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def test_three_kills_anywhere_then_rerun_is_byte_identical(tmp_path: Path) -> None:
    ca = _harness()
    ref, wall = ca.reference_run("recipes/curate.yaml", SMALL, tmp_path, timeout_s=120)
    assert (ref / "data" / "manifest.json").is_file()
    (moments,) = ca.kill_moments(random.Random(18), 1, 3, wall)
    trial = ca.crash_trial("recipes/curate.yaml", SMALL, tmp_path, ref, moments, 0, timeout_s=120)
    report = json.dumps([ca.asdict(k) for k in trial.kills], indent=1)
    assert not trial.violations, report + "\n" + "\n".join(trial.violations)
    assert not [v for k in trial.kills for v in k.violations], report
    assert not trial.differing, f"files differ from the uninterrupted run: {trial.differing}"
    assert [k.stage for k in trial.kills] != ["finished"] * 3, report  # at least one kill hit a live run


def test_the_comparison_sees_a_changed_byte_and_a_half_artifact(tmp_path: Path) -> None:
    """The checks themselves can fail: one flipped payload byte, a volatile-only manifest change, a half folder."""
    ca = _harness()
    ref, ws = tmp_path / "ref", tmp_path / "ws"
    for root in (ref, ws):
        art = root / "artifacts" / "curate-0123456789abcdef"
        art.mkdir(parents=True)
        (art / "train.jsonl").write_text('{"text": "hello"}\n')
        manifest = {"stage": "curate", "hash": "x", "timings": {"seconds": 1.0}, "stats": {"kept": 1}}
        (art / "manifest.json").write_text(json.dumps(manifest))
        (root / "data").symlink_to(art.relative_to(root))
    art = ws / "artifacts" / "curate-0123456789abcdef"
    (art / "manifest.json").write_text(json.dumps({"stage": "curate", "hash": "x", "timings": {"seconds": 9.5},
                                                   "stats": {"kept": 1, "profile": {"wall": 3}}}))  # fmt: skip
    assert ca.differing_files(ws, ref) == []  # only volatile keys changed
    (art / "train.jsonl").write_text('{"text": "hellO"}\n')
    assert ca.differing_files(ws, ref) == ["artifacts/curate-0123456789abcdef/train.jsonl (keys: [0].text)"]
    (art / "manifest.json").write_text(json.dumps({"stage": "curate", "hash": "x", "stats": {"kept": 2}}))
    assert ca.differing_files(ws, ref)[0].startswith(
        "artifacts/curate-0123456789abcdef/manifest.json (keys: stats.kept"
    )
    (art / "train.jsonl").unlink()
    assert any("half artifact" in v for v in ca.visible_state_violations(ws, ref))
    (ws / "artifacts" / "curate-fedcba9876543210").mkdir()
    assert any("no readable manifest" in v for v in ca.visible_state_violations(ws, ref))


def test_a_child_that_left_the_process_group_is_reported_and_killed(tmp_path: Path) -> None:
    """A killpg misses a daemon in its own session (as `ray start` makes): the harness must catch it."""
    import subprocess
    import time

    ca = _harness()
    proc = subprocess.Popen(["sh", "-c", "setsid sleep 60 & sleep 60"], start_new_session=True)
    time.sleep(0.5)  # both sleeps running
    survivors = ca.kill_session(proc, grace_s=1.0)
    assert len(survivors) == 1
    time.sleep(0.2)
    assert not ca._alive(survivors[0])
