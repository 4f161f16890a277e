"""Curation on Ray vs the local executor: the same corpus, local 1 and 2 workers, Ray 1, 2 and 3 nodes.

Corpus: ``--docs N`` documents sampled (half of them perturbed copies) from the apt package
index this machine keeps (:func:`curate_dedup.write_corpus`; nothing is downloaded). The op
chain is the full one (normalize, quality, PII, exact + near dedup, split), as a recipe runs it.

Each Ray cluster is a real one (:class:`shoestring.core.local_cluster.LocalCluster`): a head
and 0, 1 or 2 worker nodes as separate ``ray start`` processes with 1 logical CPU each, on
ports 20400-20999. All nodes share this machine's cores, so 3 nodes cannot run 3x faster on a
2-core machine: the table reports scaling efficiency (speed-up over Ray 1 node / nodes, and
over the cores the machine actually has) rather than a speed-up the hardware cannot give.
Ray's overhead per record is (Ray 1 node wall - local 1 worker wall) / records read; cluster
start-up is reported apart from the run. Every run's output bytes are checked equal to the
local 1-worker run's.

Usage: ``benchmarks/timed.sh python benchmarks/ray_curate.py --docs 20000``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from curate_dedup import write_corpus

PAYLOAD = ("train.jsonl", "validation.jsonl", "test.jsonl", "quarantine.jsonl", "duplicates.jsonl", "datacard.json")
PORT_BASES = {1: 20400, 2: 20600, 3: 20800}
"""One port block per cluster size: after a cluster stops, this driver process may still hold the
worker port Ray gave it on that cluster's head for a while, so a block is never reused in one run."""


def curate_config(corpus: Path, workers: int) -> Any:
    from shoestring.core.config import parse_config
    from shoestring.core.registry import get_stage

    body = {"sources": [{"path": str(corpus), "name": "corpus", "max_record_bytes": 1_000_000}], "workers": workers,
            "chunk_size": 1000, "quality": {"min_words": 20}, "dedup": {"threshold": 0.8},
            "pii": {"mode": "redact"}, "split": {"validation": 0.1, "test": 0.1}}  # fmt: skip
    return parse_config(get_stage("curate").config, body, "ray_curate")


def run_once(corpus: Path, ws: Path, workers: int, address: str | None) -> tuple[float, Any]:
    from rich.console import Console

    from shoestring.core.cluster import place_on_cluster, using_cluster
    from shoestring.core.registry import get_stage
    from shoestring.core.workspace import Workspace

    cfg = curate_config(corpus, workers)
    with using_cluster(address):
        if address is not None:
            cfg = place_on_cluster(cfg)
        t0 = time.perf_counter()
        art = Workspace(ws, console=Console(stderr=True, quiet=True)).run(get_stage("curate"), cfg, {},
                                                                           force=True).artifact  # fmt: skip
        wall = time.perf_counter() - t0
    return wall, art


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20000)
    args = ap.parse_args()
    from shoestring.core.local_cluster import LocalCluster

    os.environ.pop("RAY_ADDRESS", None)
    work = Path(tempfile.mkdtemp(prefix="ray-curate-"))
    corpus = work / "corpus.jsonl"
    write_corpus(corpus, args.docs)
    rows: list[dict[str, Any]] = []
    ref: dict[str, bytes] | None = None
    for label, workers, nodes in (("local", 1, 0), ("local", 2, 0), ("ray", 0, 1), ("ray", 0, 2), ("ray", 0, 3)):
        startup = 0.0
        if nodes:
            with LocalCluster(port_base=PORT_BASES[nodes], head_cpus=1, worker_cpus=[1] * (nodes - 1),
                              memory_bytes=2 * 2**30, object_store_bytes=200 * 2**20) as cluster:  # fmt: skip
                startup = cluster.startup_seconds
                wall, art = run_once(corpus, work / f"ws-ray{nodes}", nodes, cluster.address)
                spread = art.manifest["ray"]["tasks_by_node"]
        else:
            wall, art = run_once(corpus, work / f"ws-local{workers}", workers, None)
            spread = {}
        got = {name: (art.path / name).read_bytes() for name in PAYLOAD}
        ref = ref or got
        st = art.stats
        rows.append({"run": f"{label} {nodes or workers} {'node' if nodes else 'worker'}{'s' if (nodes or workers) > 1 else ''}",
                     "nodes": nodes, "workers": workers, "wall": wall, "startup": startup, "read": st["read"],
                     "kept": st["kept"], "same": got == ref, "spread": spread})  # fmt: skip
        print(f"{rows[-1]['run']}: {wall:.1f} s (start-up {startup:.1f} s), same bytes {got == ref}", flush=True)
    base_local = rows[0]["wall"]
    ray1 = next(r["wall"] for r in rows if r["nodes"] == 1)
    cores = os.cpu_count() or 1
    print(f"\n{args.docs} documents, {rows[0]['read']} read, {rows[0]['kept']} kept; {cores} cores\n")
    print("| run | wall s | records/s | speed-up vs local 1 | efficiency (per node or worker) | "
          "efficiency vs min(n, cores) | cluster start-up s | tasks by node | bytes = local 1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["nodes"] or r["workers"]
        base = ray1 if r["nodes"] else base_local
        speed = base / r["wall"]
        print(f"| {r['run']} | {r['wall']:.1f} | {r['read'] / r['wall']:.0f} | {base_local / r['wall']:.2f}x | "
              f"{speed / n:.0%} | {speed / min(n, cores):.0%} | {r['startup']:.1f} | "
              f"{', '.join(f'{k}: {v}' for k, v in r['spread'].items()) or '-'} | {'yes' if r['same'] else 'NO'} |")
    print(f"\nRay's overhead per record (Ray 1 node - local 1 worker): "
          f"{(ray1 - base_local) / rows[0]['read'] * 1e6:.0f} us")


if __name__ == "__main__":
    main()
