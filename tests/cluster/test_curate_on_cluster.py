"""curate on the 3-node cluster: the same bytes as the local executor, and it survives a node's death."""

from __future__ import annotations

import io
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from shoestring.core.artifact import Artifact
from shoestring.core.cluster import place_on_cluster, using_cluster
from shoestring.core.config import parse_config
from shoestring.core.local_cluster import LocalCluster
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = ("train.jsonl", "validation.jsonl", "test.jsonl", "quarantine.jsonl", "duplicates.jsonl", "datacard.json")
WORDS = ["backup", "restore", "snapshot", "schedule", "the", "a", "to", "of", "and", "disk", "network", "agent",
         "vault", "key", "encrypt", "replicate", "cloud", "bucket", "retention", "prune", "firmware", "update",
         "error", "log", "user", "role", "invite", "web", "console", "status", "light"]  # fmt: skip


def make_corpus(path: Path, n: int, seed: int = 0) -> int:
    """``n`` lines of support text: near-duplicates, e-mail addresses (PII), short junk and malformed lines."""
    rng = random.Random(seed)
    base = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(14, 40))) for _ in range(n // 3)]
    lines = []
    for i in range(n):
        if i % 25 == 7:
            lines.append('{"id": broken json')
            continue
        text = rng.choice(base) if i % 4 == 0 else " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 45)))
        if i % 9 == 0:
            text += f" contact user{i}@example.com"
        lines.append(json.dumps({"id": f"r{i}", "text": text}))
    path.write_text("\n".join(lines) + "\n")
    return n


def curate_config(corpus: Path, **extra: Any) -> Any:
    body = {"sources": [{"path": str(corpus), "name": "support"}], "quality": {"min_words": 5},
            "dedup": {"threshold": 0.8}, "pii": {"mode": "redact"}, "split": {"validation": 0.1, "test": 0.1},
            "chunk_size": 100, **extra}  # fmt: skip
    return parse_config(get_stage("curate").config, body, "test")


def run_curate(ws: Path, cfg: Any, console: Console | None = None) -> Artifact:
    stage = get_stage("curate")
    console = console or Console(stderr=True, quiet=True)
    return Workspace(ws, console=console).run(stage, cfg, {}).artifact


def payload(art: Artifact) -> dict[str, bytes]:
    return {name: (art.path / name).read_bytes() for name in PAYLOAD}


def test_curate_on_cluster_matches_local_bytes(ray_cluster: LocalCluster, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    make_corpus(corpus, 1500)
    local = run_curate(tmp_path / "local", curate_config(corpus, workers=1))
    with using_cluster(ray_cluster.address):
        on_cluster = run_curate(tmp_path / "cluster", place_on_cluster(curate_config(corpus)))
    assert on_cluster.manifest["config"]["executor"] == "ray"
    assert payload(on_cluster) == payload(local)
    spread = on_cluster.manifest["ray"]["tasks_by_node"]
    assert len(spread) >= 2 and sum(spread.values()) >= 15, f"chunks did not spread over the nodes: {spread}"


def test_curate_survives_a_worker_node_killed_mid_run(ray_cluster: LocalCluster, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    n = make_corpus(corpus, 6000, seed=1)
    local = run_curate(tmp_path / "local", curate_config(corpus, workers=1, chunk_size=150))
    victim = "worker-2"
    killed = threading.Event()

    def kill_when_chunks_start() -> None:  # the first finished chunk means the others are in flight
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if list((tmp_path / "cluster").glob("work/curate-*/chunks/*.stats.json")):
                ray_cluster.kill_node(victim)
                killed.set()
                return
            time.sleep(0.05)

    out = io.StringIO()
    killer = threading.Thread(target=kill_when_chunks_start, daemon=True)
    try:
        with using_cluster(ray_cluster.address):
            killer.start()
            art = run_curate(tmp_path / "cluster", place_on_cluster(curate_config(corpus, chunk_size=150)),
                             Console(file=out, width=200))  # fmt: skip
        killer.join(timeout=5)
        assert killed.is_set(), "the node was never killed: curate finished before the first chunk was seen"
        assert payload(art) == payload(local), "the run that lost a node wrote different bytes"
        st = art.stats
        assert st["read"] == n == st["kept"] + st["dropped"] + st["quarantined"], st
        assert art.manifest["ray"]["dead_nodes"] == [victim]
        died = [line for line in out.getvalue().splitlines() if "died" in line]
        assert len(died) == 1 and f"node {victim}" in died[0], out.getvalue()
        assert not [p for p in ray_cluster.leftover_processes() if p.pid == ray_cluster.node(victim).proc.pid]
    finally:
        ray_cluster.replace_node(victim)
