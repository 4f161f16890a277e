"""Benchmark: next-item recommendation on MovieLens-100k and DP-SGD accuracy vs epsilon on digits.

Part 1 trains a GRU4Rec-style and a SASRec-style model with ``shoestring train``'s own code
(``train_recommender``) on the MovieLens-100k copy shipped in the recbole wheel, evaluates
leave-last-out with full ranking over all 1,682 items (seen items excluded) and prints
HR@10 / NDCG@10 / MRR / training time beside a popularity baseline on the same split.

Part 2 trains the digits MLP (``train_tabular``) with DP-SGD (Opacus, PRV accountant) at
target epsilon 1, 3, 8 and without DP (epsilon = inf), same architecture and schedule.

Run (bounded: ``--minutes`` caps each recommender's training)::

    .venv/bin/python benchmarks/recsys_movielens.py --minutes 12 --epochs 25
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import types
from pathlib import Path
from typing import Any

from rich.console import Console

from shoestring.train.config import TrainConfig
from shoestring.train.recsys import train_recommender
from shoestring.train.tabular import train_tabular


def _ctx(root: Path, quiet: bool = True) -> types.SimpleNamespace:
    (root / "out").mkdir(parents=True)
    (root / "work").mkdir(parents=True)
    return types.SimpleNamespace(out_dir=root / "out", work_dir=root / "work", inputs={},
                                 console=Console(quiet=quiet), extra_manifest={})


def bench_recsys(epochs: int, minutes: float, threads: int, tmp: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    pop: dict[str, float] | None = None
    # The GRU sits on a popularity plateau for a few epochs at 1e-3; 3e-3 gets it off sooner.
    for arch, lr, extra in (("gru", 3e-3, {"num_layers": 1}), ("sasrec", 1e-3, {"num_layers": 2})):
        cfg = TrainConfig.model_validate({
            "task": "sequential-recommendation", "epochs": epochs, "max_minutes": minutes, "micro_batch_size": 128,
            "lr": lr, "seed": 0, "threads": threads, "early_stopping_patience": 5,
            "recsys": {"source": "movielens-100k", "architecture": arch, "max_len": 50, "hidden_size": 64, **extra},
        })
        t0 = time.perf_counter()
        stats = train_recommender(cfg, _ctx(tmp / arch, quiet=False))
        wall = time.perf_counter() - t0
        pop = stats["popularity_test"]
        rows.append({"model": arch, **stats["test"], "train_s": stats["train_seconds"], "wall_s": wall,
                     "epochs": stats["epochs_run"], "best_epoch": stats["best_epoch"], "params": stats["parameters"],
                     "stopped": stats["stopped"]})
    assert pop is not None
    rows.insert(0, {"model": "popularity", **pop, "train_s": 0.0, "wall_s": 0.0, "epochs": 0, "best_epoch": 0,
                    "params": 0, "stopped": "-"})
    return rows


def bench_dp(epochs: int, threads: int, tmp: Path) -> list[dict[str, Any]]:
    rows = []
    for eps in (1.0, 3.0, 8.0, None):
        cfg = TrainConfig.model_validate({
            "task": "tabular-classification", "epochs": epochs, "micro_batch_size": 128, "lr": 0.01, "seed": 0,
            "dropout": 0.0, "threads": threads, "early_stopping_patience": 1000,
            "tabular": {"source": "digits", "hidden_sizes": [64]},
            **({"privacy": {"target_epsilon": eps, "max_grad_norm": 1.0}} if eps is not None else {}),
        })
        t0 = time.perf_counter()
        stats = train_tabular(cfg, _ctx(tmp / f"dp-{eps}"))
        p = stats.get("privacy") or {}
        rows.append({"target_epsilon": eps if eps is not None else float("inf"),
                     "epsilon_spent": p.get("epsilon_spent", float("inf")), "delta": p.get("delta"),
                     "noise_multiplier": p.get("noise_multiplier", 0.0), "test_accuracy": stats["test"]["accuracy"],
                     "test_macro_f1": stats["test"]["macro_f1"], "wall_s": time.perf_counter() - t0})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=25, help="max epochs per recommender (early stopping, patience 5)")
    ap.add_argument("--minutes", type=float, default=12.0, help="training time cap per recommender, minutes")
    ap.add_argument("--dp-epochs", type=int, default=15, help="epochs per DP-SGD digits run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--skip-recsys", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rec = [] if args.skip_recsys else bench_recsys(args.epochs, args.minutes, args.threads, tmp)
        dp = bench_dp(args.dp_epochs, args.threads, tmp)
    if rec:
        print("\n| model | HR@10 | NDCG@10 | MRR | epochs (best) | train s | params |")
        print("|---|---|---|---|---|---|---|")
        for r in rec:
            print(f"| {r['model']} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | {r['mrr']:.4f} | "
                  f"{r['epochs']} ({r['best_epoch']}) | {r['train_s']:.0f} | {r['params']:,} |")
    print("\n| target ε | ε spent (δ) | noise multiplier | test accuracy | macro-F1 | wall s |")
    print("|---|---|---|---|---|---|")
    for r in dp:
        delta = f" (δ={r['delta']:.1e})" if r["delta"] else ""
        print(f"| {r['target_epsilon']:g} | {r['epsilon_spent']:.3f}{delta} | {r['noise_multiplier']:.3f} | "
              f"{r['test_accuracy']:.4f} | {r['test_macro_f1']:.4f} | {r['wall_s']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"recsys": rec, "dp": dp}, indent=1, default=str))


if __name__ == "__main__":
    main()
