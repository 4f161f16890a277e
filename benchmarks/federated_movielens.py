"""Benchmark: federated next-item recommendation on MovieLens-100k (Flower simulation engine).

MovieLens-100k's 943 users are split into N clients whose occupation mix is drawn from
Dirichlet(0.5) (non-IID), GRU4Rec-style model (1 layer, 64 wide, histories of 50), full
ranking over all 1,682 items, leave-last-out. One invocation = one federate stage run through
the stage API (the code `shoestring federate` runs), its figures appended as a JSON line to
``--out``; ``--table`` prints the markdown tables of RESULTS.md from those lines.

Quality runs (no time published)::

    nice -n 19 .venv/bin/python benchmarks/federated_movielens.py --clients 10 --strategy fedavg --baselines all
    nice -n 19 .venv/bin/python benchmarks/federated_movielens.py --clients 10 --strategy fedprox --rounds 20 --local-epochs 5
    nice -n 19 .venv/bin/python benchmarks/federated_movielens.py --clients 10 --strategy fedavg --dropout 0.3
    nice -n 19 .venv/bin/python benchmarks/federated_movielens.py --clients 50 --strategy fedavg --baselines all --rounds 20 --local-epochs 5
    nice -n 19 .venv/bin/python benchmarks/federated_movielens.py --clients 50 --strategy fedprox --rounds 20 --local-epochs 5

Simulation wall time and memory (through the bench lock)::

    benchmarks/timed.sh .venv/bin/python benchmarks/federated_movielens.py --clients 50 --rounds 10 --label sim
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace
from shoestring.federate.config import FederateConfig


def config(a: argparse.Namespace) -> FederateConfig:
    return FederateConfig.model_validate({
        "task": "sequential-recommendation",
        "recsys": {"source": "movielens-100k", "architecture": "gru", "num_layers": 1, "hidden_size": 64, "max_len": 50},
        "clients": a.clients, "partition": "dirichlet", "partition_label": "occupation", "alpha": a.alpha,
        "strategy": a.strategy, "proximal_mu": a.mu, "rounds": a.rounds, "local_epochs": a.local_epochs,
        "local_batch_size": a.batch, "lr": a.lr, "fraction_train": a.fraction, "workers": a.workers,
        "faults": {"dropout": a.dropout, "seed": 1},
        "baselines": {"centralised": a.baselines == "all", "local_only": a.baselines in ("all", "local"),
                      "epochs": 30, "patience": 5},
    })  # fmt: skip


def run(a: argparse.Namespace) -> dict[str, Any]:
    cfg = config(a)
    ws = Workspace(a.work, Console(stderr=True))
    t0 = time.perf_counter()
    res = ws.run(get_stage("federate"), cfg)
    wall = time.perf_counter() - t0
    fed = json.loads((res.artifact.path / "federation.json").read_text())
    rows = [json.loads(x) for x in (res.artifact.path / "rounds.jsonl").read_text().splitlines()]
    return {"label": a.label, "clients": a.clients, "strategy": a.strategy, "dropout": a.dropout, "rounds": a.rounds,
            "local_epochs": a.local_epochs, "batch": a.batch, "lr": a.lr, "alpha": a.alpha, "cached": res.cached,
            "stage_seconds": wall, "artifact": str(res.artifact.path), "systems": fed["comparison"]["systems"],
            "paired": fed["comparison"]["paired"], "traffic": fed["traffic"], "robustness": fed["robustness"],
            "run": fed["run"], "curve": [(r["round"], r.get("test_ndcg@10")) for r in rows],
            "partition": fed["clients"]["per_client"]}  # fmt: skip


def _ci(c: dict[str, Any]) -> str:
    return f"{c['value']:.4f} [{c['low']:.4f}, {c['high']:.4f}]"


def table(lines: list[dict[str, Any]]) -> str:
    out = ["| clients | system | NDCG@10 [95% CI] | HR@10 [95% CI] | / centralised NDCG@10 | rounds to 95% of centralised | MiB sent (down + up) |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for n in sorted({x["clients"] for x in lines}):
        runs = [x for x in lines if x["clients"] == n and x["label"] != "sim"]
        # The centralised model does not depend on the partition: one run trains it for every table row.
        base = next((x for x in lines if "centralised" in x["systems"]), None)
        central = base["systems"]["centralised"]["ndcg@10"]["value"] if base else None
        local = next((x for x in runs if "local-only (mean over clients)" in x["systems"]), None)
        for name, src in (("centralised", base), ("local-only (mean over clients)", local)):
            if src is not None:
                s = src["systems"][name]
                ratio = s["ndcg@10"]["value"] / central if central else float("nan")
                out.append(f"| {n} | {name} | {_ci(s['ndcg@10'])} | {_ci(s['hr@10'])} | {ratio:.2f} | - | 0 |")
        for x in runs:
            s = x["systems"]["federated"]
            to95 = next((r for r, v in x["curve"] if r > 0 and central and v is not None and v >= 0.95 * central), None)
            name = (f"{x['strategy']} ({x['local_epochs']} local epoch{'s' if x['local_epochs'] > 1 else ''}, "
                    f"{x['rounds']} rounds)" + (f", {x['dropout']:.0%} of clients drop per round" if x["dropout"] else ""))  # fmt: skip
            mib = x["traffic"]["bytes_total"] / 2**20
            ratio = s["ndcg@10"]["value"] / central if central else float("nan")
            out.append(f"| {n} | {name} | {_ci(s['ndcg@10'])} | {_ci(s['hr@10'])} | {ratio:.2f} | "
                       f"{to95 if to95 else 'not reached in ' + str(x['rounds'])} | {mib:.0f} |")  # fmt: skip
    sims = [x for x in lines if x["label"] == "sim"]
    if sims:
        out += ["", "| clients | rounds | wall s (stage) | s per round | peak RSS (all processes) |", "|---|---|---|---|---|"]
        for x in sims:
            per = x["run"]["wall_seconds"] / x["rounds"] if x["run"].get("wall_seconds") else None
            out.append(f"| {x['clients']} | {x['rounds']} | {x['run']['wall_seconds']:.0f} | {per:.1f} | "
                       f"{x['run']['peak_rss_bytes'] / 2**30:.2f} GiB |")  # fmt: skip
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedprox", "fedadam", "fedyogi"])
    ap.add_argument("--mu", type=float, default=0.01)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baselines", choices=["none", "local", "all"], default="none",
                    help="also train the local-only (local) or the centralised and local-only (all) baselines")
    ap.add_argument("--label", default="quality")
    ap.add_argument("--work", type=Path, default=Path("/tmp/federate-bench/ws"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/federate-bench/movielens.jsonl"))
    ap.add_argument("--table", action="store_true", help="print the tables from --out and exit")
    a = ap.parse_args()
    if a.table:
        print(table([json.loads(x) for x in a.out.read_text().splitlines() if x.strip()]))
        return
    a.out.parent.mkdir(parents=True, exist_ok=True)
    row = run(a)
    with a.out.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps({k: row[k] for k in ("label", "clients", "strategy", "dropout", "stage_seconds")}))
    print(table([row]))


if __name__ == "__main__":
    main()
