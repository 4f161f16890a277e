"""Evaluate a MovieLens-100k recommender (GRU, trained by the train stage) against the
popularity baseline with `shoestring evaluate`: HR@10/NDCG@10/MRR with 95% CIs, a paired
test, and quality/exposure by user gender and age. Bounded: a few GRU epochs.

    .venv/bin/python benchmarks/eval_movielens.py --epochs 3 --work /tmp/eval-ml
"""

from __future__ import annotations

import argparse
import json
import time

from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--work", default="/tmp/eval-movielens")
    args = ap.parse_args()
    ws = Workspace(args.work)
    train = get_stage("train")
    arts = {}
    for arch in ("gru", "popularity"):
        cfg = train.config.model_validate({
            "task": "sequential-recommendation", "epochs": args.epochs, "micro_batch_size": 128, "lr": 0.001,
            "progress": False, "recsys": {"source": "movielens-100k", "architecture": arch, "hidden_size": 64,
                                          "num_layers": 1, "max_len": 50, "baseline": False}})
        arts[arch] = ws.run(train, cfg).artifact
    ev = get_stage("evaluate")
    cfg = ev.config.model_validate({"model": str(arts["gru"].path), "compare": str(arts["popularity"].path),
                                    "max_records": 943, "k": [10, 20]})
    t0 = time.perf_counter()
    res = ws.run(ev, cfg, {"model": arts["gru"], "compare": arts["popularity"]}, force=True)
    seconds = time.perf_counter() - t0
    m = json.loads((res.artifact.path / "metrics.json").read_text())

    def ci(d: dict) -> str:
        return f"{d['value']:.4f} [{d['low']:.4f}, {d['high']:.4f}]"

    print("| model | users | HR@10 | NDCG@10 | MRR |\n|---|---|---|---|---|")
    for role, name in (("model", f"GRU ({args.epochs:g} epochs)"), ("compare", "popularity")):
        r = m[role]
        print(f"| {name} | {m['model']['users']} | {ci(r['hr@10'])} | {ci(r['ndcg@10'])} | {ci(r['mrr'])} |")
    c = m["comparison"]["ndcg@10"]
    print(f"\nNDCG@10 difference (GRU - popularity): {ci(c['difference'])}, permutation p = {c['p_value_permutation']:.4f}")
    print("\n| attribute | group | users | HR@10 | NDCG@10 | head share |\n|---|---|---|---|---|---|")
    for attr in ("gender", "age"):
        for g, r in m["fairness"][attr]["groups"].items():
            print(f"| {attr} | {g} | {r['users']} | {r['hr@10']:.4f} | {ci(r['ndcg@10'])} | {r['head_share']:.3f} |")
        f = m["fairness"][attr]
        print(f"| {attr} | spread (groups >= 10 users) | | | diff {f['ndcg@10_difference']:.4f}, ratio {f['ndcg@10_ratio']:.3f} | |")
    e = m["exposure"]
    print(f"\nExposure@10: catalogue coverage {e['catalogue_coverage']:.3f}, Gini {e['gini']:.3f}, "
          f"head (top-20% items) share of slots {e['head_share_of_slots']:.3f}")
    print(f"evaluate stage: {seconds:.1f} s; report: {res.artifact.path / 'report.html'}")


if __name__ == "__main__":
    main()
