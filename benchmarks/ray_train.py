"""Training across processes: local DDP (torchrun, 2 processes) vs Ray Train (2 workers on a 2-node cluster).

The same job both ways: full SFT of a small Llama (SmolLM2's tokenizer, ``--hidden`` wide,
``--layers`` deep, built from a config: no weights are downloaded) on chats made from
Python's own reference docs, DDP over gloo on CPU, ``--steps`` optimizer steps. The Ray
cluster is real (:class:`shoestring.core.local_cluster.LocalCluster`): a head and one worker
node of 1 logical CPU each, separate ``ray start`` processes on ports 20800-20999, so each
Ray Train worker runs on its own node. Reported per executor: the training loop's tokens/s
(rank 0, from the run's stats), the stage's wall time, and start-up = wall - loop seconds
(process launch, joining the process group, model and data loading, the final save); the
cluster's own start-up is reported apart. The two runs' final weights are compared.

Usage: ``benchmarks/timed.sh python benchmarks/ray_train.py``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PORT_BASE = 20800


def chat_dataset(root: Path, n: int = 200) -> Path:
    """A dataset artifact folder of ``n`` training chats (90%) and validation chats from pydoc topics."""
    from pydoc_data.topics import topics

    items = sorted(topics.items())
    recs = [{"id": f"doc{i}", "messages": [{"role": "user", "content": f"What does the Python reference say about {k}?"},
                                           {"role": "assistant", "content": " ".join(t.split())[:600]}]}
            for i, (k, t) in enumerate((items * (n // len(items) + 1))[:n])]  # fmt: skip
    cut = int(n * 0.9)
    root.mkdir(parents=True)
    for name, part in (("train", recs[:cut]), ("validation", recs[cut:]), ("test", [])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    digest = hashlib.sha256((root / "train.jsonl").read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps({"kind": "dataset", "stage": "curate", "hash": digest,
                                                    "stats": {"kept": cut}}))  # fmt: skip
    return root


def train(ws: Path, ds: Path, model: Path, args: argparse.Namespace, **extra: object) -> tuple[float, dict[str, Any], Path]:
    from rich.console import Console

    from shoestring.core.artifact import Artifact
    from shoestring.core.cluster import place_on_cluster
    from shoestring.core.registry import get_stage
    from shoestring.core.workspace import Workspace

    stage = get_stage("train")
    cfg = stage.config.model_validate({
        "dataset": str(ds), "model": str(model), "task": "sft", "method": "full", "seq_len": args.seq_len,
        "micro_batch_size": 4, "max_steps": args.steps, "lr": 1e-3, "val_max_examples": 8, "progress": False,
        "tracking": {"tensorboard": False}, "devices": 2, "threads": 1, "checkpoint_every": 10**6, **extra,
    })  # fmt: skip
    if "executor" not in extra:
        cfg = place_on_cluster(cfg)
    t0 = time.perf_counter()
    art = Workspace(ws, console=Console(stderr=True, quiet=True)).run(stage, cfg, {"dataset": Artifact.load(ds)}).artifact
    return time.perf_counter() - t0, art.stats, art.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    import torch
    from safetensors.torch import load_file

    from shoestring.core.cluster import using_cluster
    from shoestring.core.local_cluster import LocalCluster

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import save_tiny_llama

    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="ray-train-"))
    model = save_tiny_llama(work / "model", hidden=args.hidden, intermediate=args.hidden * 3, layers=args.layers)
    ds = chat_dataset(work / "ds")
    runs = {}
    wall, st, path = train(work / "local", ds, model, args, executor="torchrun", strategy="ddp")
    runs["local DDP (torchrun), 2 processes"] = (wall, st, path, 0.0)
    print(f"local: {wall:.1f} s", flush=True)
    with LocalCluster(port_base=PORT_BASE, head_cpus=1, worker_cpus=[1], memory_bytes=4 * 2**30,
                      object_store_bytes=200 * 2**20) as cluster, using_cluster(cluster.address):  # fmt: skip
        wall, st, path = train(work / "ray", ds, model, args)
        runs["Ray Train, 2 workers on 2 nodes"] = (wall, st, path, cluster.startup_seconds)
    print(f"ray: {wall:.1f} s", flush=True)
    (_, _, a, _), (_, _, b, _) = runs.values()
    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    first = next(iter(runs.values()))[1]
    print(f"\nmodel: {first['parameters'] / 1e6:.1f} M parameters, seq_len {args.seq_len}, micro-batch 4, "
          f"{args.steps} steps, {os.cpu_count()} cores, torch {torch.__version__}\n")
    print("| executor | loop tokens/s | loop s | stage wall s | start-up s (wall - loop) | cluster start-up s | "
          "val loss |")
    print("|---|---|---|---|---|---|---|")
    for name, (wall, st, _, cl) in runs.items():
        print(f"| {name} | {st['tokens_per_second']:.0f} | {st['train_seconds']:.1f} | {wall:.1f} | "
              f"{wall - st['train_seconds']:.1f} | {cl:.1f} | {st['val_loss']:.4f} |")
    print(f"\nlargest weight difference between the two runs: {diff:.2e}")


if __name__ == "__main__":
    main()
