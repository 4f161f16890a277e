"""The curate stage end to end: accounting under malformed input, resume after kill -9, executors, recipes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoestring.core.config import parse_config
from shoestring.core.recipe import load_recipe, run_recipe
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = ("train.jsonl", "validation.jsonl", "test.jsonl", "quarantine.jsonl", "duplicates.jsonl", "datacard.json")
WORDS = [
    "backup",
    "restore",
    "snapshot",
    "schedule",
    "the",
    "a",
    "to",
    "of",
    "and",
    "disk",
    "network",
    "agent",
    "vault",
    "key",
    "encrypt",
    "replicate",
    "cloud",
    "bucket",
    "retention",
    "prune",
    "firmware",
    "update",
    "error",
    "log",
    "user",
    "role",
    "invite",
    "web",
    "console",
    "status",
    "light",
]


def make_corpus(path: Path, n: int, malformed_every: int = 20, seed: int = 0) -> int:
    """``n`` raw lines; every ``malformed_every``-th is malformed (5% by default). Returns the bad count."""
    rng = random.Random(seed)
    texts: list[str] = []
    bad = 0
    with open(path, "wb") as fh:
        for i in range(n):
            if i % malformed_every == malformed_every - 1:
                bad += 1
                fh.write(
                    [
                        b'{"id": "x", "body": "unterminated\n',
                        b'{"id": "y", "body": "caf\xe9"}\n',
                        json.dumps({"id": i, "body": 42}).encode() + b"\n",
                        b'"just a string"\n',
                        json.dumps({"id": i, "body": "z " * 3000}).encode() + b"\n",
                    ][bad % 5]
                )
                continue
            if texts and rng.random() < 0.1:
                body = rng.choice(texts)  # exact duplicate
            elif texts and rng.random() < 0.1:
                words = rng.choice(texts).split()
                words[rng.randrange(len(words))] = "changed"  # near duplicate
                body = " ".join(words)
            else:
                body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 80)))
                texts.append(body)
            fh.write(json.dumps({"id": i, "body": body}).encode() + b"\n")
    return bad


def config(corpus: Path, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "sources": [
            {"path": str(corpus), "name": "c", "fields": {"id": "id", "text": "body"}, "max_record_bytes": 4000}
        ],
        "quality": {"min_words": 5, "min_stop_words": 1, "max_top_2gram_fraction": 0.5, "max_dup_5gram_fraction": 0.5},
        "workers": 1,
        "chunk_size": 250,
    }
    cfg.update(extra)
    return cfg


def run_stage(ws: Path, data: dict[str, Any]) -> Path:
    stage = get_stage("curate")
    cfg = parse_config(stage.config, data, "test")
    return Workspace(ws).run(stage, cfg).artifact.path


def payload(art: Path) -> dict[str, bytes]:
    return {name: (art / name).read_bytes() for name in PAYLOAD}


def test_five_percent_malformed_corpus_is_fully_accounted(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    bad = make_corpus(corpus, 2000)
    art = run_stage(tmp_path / "ws", config(corpus))
    stats = json.loads((art / "manifest.json").read_text())["stats"]
    assert stats["read"] == 2000 and stats["quarantined"] == bad == 100
    assert stats["read"] == stats["kept"] + stats["dropped"] + stats["quarantined"]
    assert set(stats["quarantine_reasons"]) == {
        "bad_json",
        "invalid_utf8",
        "wrong_type:body",
        "not_an_object",
        "oversized",
    }
    q = [json.loads(line) for line in (art / "quarantine.jsonl").read_text().splitlines()]
    assert len(q) == 100 and all(e["location"].startswith("line ") for e in q)
    dups = [json.loads(line) for line in (art / "duplicates.jsonl").read_text().splitlines()]
    assert len(dups) == stats["dropped_by"]["dedup"]["exact_duplicate"] + stats["dropped_by"]["dedup"]["near_duplicate"]
    kept_ids = {json.loads(line)["id"] for s in ("train", "validation", "test") for line in (art / f"{s}.jsonl").open()}
    assert {d["cluster_id"] for d in dups} <= kept_ids  # every removed duplicate points at a kept record


def test_local_processes_and_serial_give_identical_output(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    make_corpus(corpus, 600)
    serial = run_stage(tmp_path / "ws1", config(corpus, workers=1, chunk_size=100))
    pooled = run_stage(tmp_path / "ws2", config(corpus, workers=2, chunk_size=100))
    assert payload(serial) == payload(pooled)


def test_worker_count_and_executor_stay_out_of_the_cache_key(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    make_corpus(corpus, 300)
    stage = get_stage("curate")
    ws = Workspace(tmp_path / "ws")
    first = ws.run(stage, parse_config(stage.config, config(corpus, workers=2, chunk_size=100), "test"))
    assert not first.cached
    for extra in ({"workers": 1}, {"executor": "ray", "workers": 3}):  # a cache hit never starts Ray
        again = ws.run(stage, parse_config(stage.config, config(corpus, chunk_size=100, **extra), "test"))
        assert again.cached and again.artifact.path == first.artifact.path
    other = ws.run(stage, parse_config(stage.config, config(corpus, workers=1, chunk_size=150), "test"))
    assert not other.cached  # chunk_size is the checkpoint granularity: it stays in the key


def test_kill_9_then_rerun_with_another_worker_count_is_byte_identical(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    make_corpus(corpus, 2000, seed=1)
    env = {**os.environ, "COLUMNS": "200"}

    def cmd(workers: int) -> list[str]:
        cfg_path = tmp_path / f"cfg-{workers}.yaml"
        cfg_path.write_text(yaml.safe_dump(config(corpus, chunk_size=50, workers=workers)))
        return [sys.executable, "-m", "shoestring.cli", "curate", "--config", str(cfg_path)]

    ws = tmp_path / "killed"
    # Killed with 2 worker processes (chunks finish out of order), resumed with 1.
    proc = subprocess.Popen([*cmd(2), "-w", str(ws)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((ws / "work").glob("*/chunks/*.stats.json"))) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not list((ws / "artifacts").glob("curate-*"))  # no half artifact
    resumed = subprocess.run([*cmd(1), "-w", str(ws)], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr
    fresh = subprocess.run(
        [*cmd(1), "-w", str(tmp_path / "fresh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert fresh.returncode == 0, fresh.stderr
    a, b = Path(resumed.stdout.strip().splitlines()[-1]), Path(fresh.stdout.strip().splitlines()[-1])
    assert a.name == b.name  # same content hash
    assert payload(a) == payload(b)


@pytest.mark.slow
def test_ray_executor_matches_local(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    corpus = tmp_path / "c.jsonl"
    make_corpus(corpus, 300)
    local = run_stage(tmp_path / "ws1", config(corpus, workers=1, chunk_size=100))
    ray_art = run_stage(tmp_path / "ws2", config(corpus, executor="ray", workers=2, chunk_size=100))
    assert payload(local) == payload(ray_art)


def test_shipped_recipes_validate_and_the_logs_recipe_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    for recipe in sorted((ROOT / "recipes").glob("curate*.yaml")):
        load_recipe(recipe)
    res = run_recipe(ROOT / "recipes/curate_logs.yaml", workspace=tmp_path)["events"].artifact
    rows = [json.loads(line) for s in ("train", "validation", "test") for line in (res.path / f"{s}.jsonl").open()]
    assert all(r["ip"].startswith("<IPV4_") for r in rows)  # client IPs pseudonymised
    assert {"method", "path", "status", "time"} <= set(rows[0])
    card = json.loads((res.path / "datacard.json").read_text())
    k = card["k_anonymity"]
    assert k["satisfied"] and k["min_class_size_kept"] >= 5 and k["min_class_size"] < 5  # small classes were dropped
    assert res.stats["dropped_by"]["pii"]["k_anonymity"] == k["records_below_k"] > 0


@pytest.mark.slow
def test_full_curate_recipe_uses_every_reader_and_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    res = run_recipe(ROOT / "recipes/curate.yaml", workspace=tmp_path)["data"].artifact
    stats = res.stats
    card = json.loads((res.path / "datacard.json").read_text())
    assert set(card["sources"]) == {"docs", "reviews", "reviews_extra", "reviews_tsv", "products", "kb"}
    assert all(v["kept"] > 0 for v in card["sources"].values())
    assert {"exact_duplicate", "near_duplicate", "semantic_duplicate"} <= set(stats["dropped_by"]["dedup"])
    assert card["normalize"]["html_converted"] > 0
    assert card["labels"]["coverage"] > 0.3 and "functions" in card["labels"]
    assert stats["augmented"] == stats["splits"]["train"]
    assert stats["leak_check"]["cross_split_pairs"] == 0


def test_cli_quick_input_and_one_line_errors(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    exe = [sys.executable, "-m", "shoestring.cli", "curate", "-w", str(tmp_path)]
    p = subprocess.run(exe, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().startswith("error:") and len(p.stderr.strip().splitlines()) == 1
    p = subprocess.run([*exe, "--input", str(tmp_path / "missing.jsonl")], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "missing.jsonl" in p.stderr and "Traceback" not in p.stderr
    corpus = tmp_path / "in.jsonl"
    make_corpus(corpus, 200)
    # Quick form: the `text` column is read with defaults; `body` is mapped through --text-field.
    p = subprocess.run(
        [*exe, "--input", str(corpus), "--text-field", "body", "--workers", "1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    assert "read 200 = kept" in p.stdout
