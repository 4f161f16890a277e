"""Benchmark: federated text classification, all-MiniLM-L6-v2 + LoRA, accuracy vs client-side epsilon.

Data: the Python-docs topic set of ``train_dp_classify.py`` (paragraphs of four reference topics,
445 train / 151 validation / 150 test), split into 4 clients by Dirichlet(0.5) label skew.
Only the LoRA adapters (r=8 on query/value) and the classifier head travel; the script reports
their bytes against the full model's per round. One run per epsilon (inf = no DP) through the
stage API; figures as JSON lines in ``--out``; ``--table`` prints the RESULTS.md table.

    nice -n 19 .venv/bin/python benchmarks/federated_text.py --epsilons inf 8 3
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from train_dp_classify import write_dataset

from shoestring.core.artifact import Artifact
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace
from shoestring.federate.config import FederateConfig


def run(eps: float, a: argparse.Namespace, ds: Path) -> dict[str, Any]:
    cfg = FederateConfig.model_validate({
        "task": "classification", "dataset": str(ds), "model": "all-minilm-l6-v2", "clients": a.clients,
        "partition": "dirichlet", "alpha": 0.5, "min_client_units": 20, "rounds": a.rounds, "local_epochs": a.local_epochs,
        "local_batch_size": a.batch, "lr": a.lr, "seq_len": 64, "lora": {"r": 8, "alpha": 16, "target_modules": ["query", "value"]},
        "privacy": None if math.isinf(eps) else {"target_epsilon": eps, "accountant": "rdp"},
        "baselines": {"centralised": a.baselines and math.isinf(eps), "local_only": a.baselines and math.isinf(eps),
                      "epochs": a.rounds * a.local_epochs, "patience": 3},
    })  # fmt: skip
    ws = Workspace(a.work, Console(stderr=True))
    t0 = time.perf_counter()
    res = ws.run(get_stage("federate"), cfg, {"dataset": Artifact.load(ds)})
    fed = json.loads((res.artifact.path / "federation.json").read_text())
    return {"epsilon": eps, "clients": a.clients, "rounds": a.rounds, "stage_seconds": time.perf_counter() - t0,
            "systems": fed["comparison"]["systems"], "traffic": fed["traffic"], "privacy": fed["privacy"],
            "curve": [json.loads(x).get("test_accuracy") for x in (res.artifact.path / "rounds.jsonl").read_text().splitlines()]}  # fmt: skip


def table(lines: list[dict[str, Any]]) -> str:
    out = ["| client-side epsilon (target) | epsilon spent, max over clients | test accuracy [95% CI] | "
           "bytes per round (adapters + head) | full model bytes per round | ratio |", "|---|---|---|---|---|---|"]  # fmt: skip
    for x in sorted(lines, key=lambda r: -r["epsilon"]):
        acc = x["systems"]["federated"]["accuracy"]
        t = x["traffic"]
        per = t["bytes_per_round_mean"]
        full = t["full_model_bytes"] * 2 * t["predicted"]["clients_per_round"]  # down + up, every client
        spent = x["privacy"]["epsilon_max"] if x["privacy"] else float("inf")
        out.append(f"| {x['epsilon']} | {spent:.3f} | {acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}] | "
                   f"{per / 2**20:.2f} MiB | {full / 2**20:.1f} MiB | {per / full:.2%} |")  # fmt: skip
    for x in lines:
        for name in ("centralised", "local-only (mean over clients)"):
            if name in x["systems"]:
                acc = x["systems"][name]["accuracy"]
                out.append(f"| {name} (no DP) | - | {acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}] | - | - | - |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epsilons", type=float, nargs="*", default=[math.inf, 8.0, 3.0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--baselines", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/federate-bench/text-ws"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/federate-bench/text.jsonl"))
    ap.add_argument("--table", action="store_true")
    a = ap.parse_args()
    if a.table:
        print(table([json.loads(x) for x in a.out.read_text().splitlines() if x.strip()]))
        return
    ds = a.work.parent / "pydoc-topics"
    if not (ds / "manifest.json").is_file():
        write_dataset(ds)
    for eps in a.epsilons:
        row = run(eps, a, ds)
        with a.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(table([row]))


if __name__ == "__main__":
    main()
