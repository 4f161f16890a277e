"""Turn the server's round log and the comparison into the artifact's figures and files.

``federation.json`` - everything below in one document; ``rounds.jsonl`` - one row per round
(sampled / replied / failed / timed out / rejected by reason, bytes down and up, seconds,
held-out scores); ``comparison.json``; ``metrics.jsonl`` + ``loss.png`` - held-out quality by
round with the centralised and local-only levels; ``report.html``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.core.artifact import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from shoestring.federate.config import FederateConfig
    from shoestring.federate.tasks import FederatedTask, Job

__all__ = ["federation_summary", "privacy_summary", "rounds_to_reach", "write_outputs"]


def rounds_to_reach(rows: list[dict[str, Any]], metric: str, target: float | None) -> int | None:
    """First round whose held-out ``metric`` is >= ``target`` (None if never, or no target)."""
    if target is None:
        return None
    for r in rows:
        v = r.get(f"test_{metric}")
        if r.get("round", 0) > 0 and v is not None and v >= target:
            return int(r["round"])
    return None


def privacy_summary(cfg: FederateConfig, job: Job, entries: list[dict[str, Any]], n: int) -> dict[str, Any] | None:
    """Epsilon per client from the round log's DP entries (Opacus accountant), and overall."""
    from shoestring.train.privacy import epsilon_for_history

    p = cfg.privacy
    if p is None:
        return None
    hist: dict[int, list[tuple[float, float, int]]] = defaultdict(list)
    for e in entries:
        hist[int(e["partition_id"])].append((e["noise"], e["sample_rate"], e["steps"]))
    clients = []
    for c in range(n):
        delta = job.delta.get(str(c), 0.0)
        clients.append({"partition_id": c, "rounds": len(hist[c]), "steps": sum(s for _, _, s in hist[c]),
                        "noise_multiplier": job.noise.get(str(c)), "delta": delta,
                        "epsilon": epsilon_for_history(hist[c], delta, p.accountant) if hist[c] else 0.0})  # fmt: skip
    eps = [c["epsilon"] for c in clients]
    return {
        "mechanism": "client-side DP-SGD (Opacus): per-example clipping + Gaussian noise on each client",
        "accountant": p.accountant, "max_grad_norm": p.max_grad_norm, "target_epsilon_per_client": p.target_epsilon,
        "epsilon_per_client": clients, "epsilon_max": max(eps), "epsilon_mean": sum(eps) / len(eps),
        "epsilon_overall": max(eps), "delta_max": max(c["delta"] for c in clients),
        "overall_rule": "parallel composition: every record lives on exactly one client, so a record's "
                        "privacy loss is its own client's epsilon; overall = the largest client epsilon",
    }  # fmt: skip


def _robustness(rows: list[dict[str, Any]]) -> dict[str, Any]:
    train = [r for r in rows if r.get("round", 0) > 0]
    rejected: dict[str, int] = defaultdict(int)
    for r in train:
        for k, v in (r.get("rejected") or {}).items():
            rejected[k] += int(v)
    total = {k: sum(int(r.get(k, 0)) for r in train) for k in ("sampled", "replied", "failed", "timed_out", "accepted")}
    return {**total, "rejected": dict(rejected),
            "aggregates_rejected": sum(1 for r in train if r.get("aggregate_rejected"))}  # fmt: skip


def _traffic(task: FederatedTask, cfg: FederateConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    from shoestring.plan.federated import predict_traffic

    train = [r for r in rows if r.get("round", 0) > 0]
    down = sum(int(r.get("bytes_down", 0)) for r in rows)
    up = sum(int(r.get("bytes_up", 0)) for r in rows)
    sizes = task.size_bytes()
    predicted = predict_traffic(task.tensor_numels(), len(task.clients), cfg.rounds, cfg.fraction_train,
                                cfg.min_clients_per_round, cfg.fraction_evaluate, cfg.secure_aggregation)  # fmt: skip
    per_round = [int(r.get("bytes_down", 0)) + int(r.get("bytes_up", 0)) for r in train]
    return {
        "bytes_down": down, "bytes_up": up, "bytes_total": down + up,
        "bytes_per_round_mean": (sum(per_round) / len(per_round)) if per_round else 0,
        "travelling_tensor_bytes": sizes["travelling"], "full_model_bytes": sizes["full_model"],
        "travelling_fraction_of_full": sizes["travelling"] / sizes["full_model"] if sizes["full_model"] else None,
        "predicted": predicted,
        "measured_over_predicted": (down + up) / predicted["bytes_total"] if predicted["bytes_total"] else None,
    }  # fmt: skip


def federation_summary(task: FederatedTask, cfg: FederateConfig, job: Job, saved: dict[str, Any],
                       comparison: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """All figures of the run (federation.json) and the manifest stats."""
    rows = saved["rows"]
    head = comparison["headline"]
    systems = comparison["systems"]
    central = systems.get("centralised", {}).get(head, {}).get("value")
    traffic = _traffic(task, cfg, rows)
    privacy = privacy_summary(cfg, job, saved.get("privacy", []), len(task.clients))
    robustness = _robustness(rows)
    # "95% of centralised" is defined for scores where higher is better (NDCG, accuracy), not for a loss.
    to95 = rounds_to_reach(rows, head, 0.95 * central if central and comparison["higher_is_better"] else None)
    fed = systems["federated"][head]
    lines = [f"{name}: {head} {v[head]['value']:.4f} [{v[head]['low']:.4f}, {v[head]['high']:.4f}]"
             for name, v in systems.items()]  # fmt: skip
    if comparison.get("federated_over_centralised") is not None:
        lines.append(f"federated / centralised {head}: {comparison['federated_over_centralised']:.3f}; "
                     f"rounds to 95% of centralised: {to95 if to95 is not None else 'not reached'}")  # fmt: skip
    lines.append(f"bytes: {traffic['bytes_down'] / 2**20:.1f} MiB down, {traffic['bytes_up'] / 2**20:.1f} MiB up "
                 f"(measured / predicted {traffic['measured_over_predicted'] or 0:.3f})")  # fmt: skip
    if privacy:
        lines.append(f"DP: epsilon per client <= {privacy['epsilon_max']:.3f} (delta <= {privacy['delta_max']:.2g})")
    stats: dict[str, Any] = {
        "task": cfg.task, "clients": len(task.clients), "rounds": cfg.rounds, "strategy": cfg.strategy,
        "engine": cfg.engine, "secure_aggregation": cfg.secure_aggregation, "headline_metric": head,
        head: fed["value"], f"{head}_low": fed["low"], f"{head}_high": fed["high"],
        f"centralised_{head}": central, "federated_over_centralised": comparison.get("federated_over_centralised"),
        "rounds_to_95pct_centralised": to95, "bytes_total": traffic["bytes_total"],
        "bytes_per_round_mean": traffic["bytes_per_round_mean"], "robustness": robustness,
        "wall_seconds": run.get("wall_seconds"), "peak_rss_bytes": run.get("peak_rss_bytes"),
        "epsilon_overall": privacy["epsilon_overall"] if privacy else None, "headline": lines,
    }  # fmt: skip
    local = systems.get("local-only (mean over clients)", {}).get(head)
    if local:
        stats[f"local_only_{head}"] = local["value"]
    return {
        "clients": {"method": cfg.partition, "alpha": cfg.alpha if cfg.partition == "dirichlet" else None,
                    "count": len(task.clients), "per_client": task.partition_summary()},
        "rounds": {"run": len([r for r in rows if r.get("round", 0) > 0]), "strategy": cfg.strategy,
                   "fraction_train": cfg.fraction_train, "local_epochs": cfg.local_epochs},
        "traffic": traffic, "privacy": privacy, "robustness": robustness, "comparison": comparison,
        "run": run, "stats": stats,
    }


def write_outputs(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """federation.json, rounds.jsonl, comparison.json, metrics.jsonl, loss.png, report.html."""
    from shoestring.federate.report import render_report, rounds_png

    atomic_write_json(out / "federation.json", summary)
    atomic_write_json(out / "comparison.json", summary["comparison"])
    atomic_write_text(out / "rounds.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    head = summary["comparison"]["headline"]
    metric_rows = [{"round": r["round"], "step": r["round"], f"val_{head}": r[f"test_{head}"],
                    **({"train_loss": r["train_loss"]} if "train_loss" in r else {})}
                   for r in rows if f"test_{head}" in r]  # fmt: skip
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in metric_rows))
    rounds_png(out / "loss.png", rows, summary)
    atomic_write_text(out / "report.html", render_report(summary, rows))
