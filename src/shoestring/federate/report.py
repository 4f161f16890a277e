"""The federated run's own page (``report.html``) and its round curve (``loss.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoestring.core.artifact import atomic_write_bytes
from shoestring.evaluate.report import Report, fmt_interval, png_img, table

__all__ = ["render_report", "rounds_png"]


def _figure(rows: list[dict[str, Any]], summary: dict[str, Any]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comp = summary["comparison"]
    head = comp["headline"]
    pts = [(r["round"], r[f"test_{head}"]) for r in rows if f"test_{head}" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label="federated (global model)")
    for name, style in (("centralised", "--"), ("local-only (mean over clients)", ":")):
        if name in comp["systems"]:
            ax.axhline(comp["systems"][name][head]["value"], ls=style, color="grey", label=name)
    ax.set_xlabel("round")
    ax.set_ylabel(f"held-out {head}")
    ax.legend(loc="lower right")
    ax.set_title(f"{summary['stats']['strategy']} over {summary['clients']['count']} clients")
    fig.tight_layout()
    return fig


def rounds_png(path: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    import io

    import matplotlib.pyplot as plt

    fig = _figure(rows, summary)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def render_report(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Self-contained HTML: comparison, per-client table, rounds, bytes, robustness, privacy."""
    comp, st = summary["comparison"], summary["stats"]
    head = comp["headline"]
    rep = Report(f"Federated training: {st['task']}",
                 f"{st['clients']} clients ({summary['clients']['method']}), {st['rounds']} rounds of {st['strategy']} "
                 f"on Flower's {st['engine']} engine{' with SecAgg+' if st['secure_aggregation'] else ''}; "
                 "95% bootstrap intervals over held-out units.")  # fmt: skip
    metrics = list(next(iter(comp["systems"].values())))
    rep.add("Federated vs centralised vs local-only (same held-out units)",
            table(["system", *metrics], [[n, *[fmt_interval(v[m], 4) for m in metrics]]
                                         for n, v in comp["systems"].items()]))  # fmt: skip
    if comp["paired"]:
        rep.add("Paired differences", table(["comparison", f"{head} difference", "permutation p"],
                [[n, fmt_interval(p["difference"], 4), p["p_value_permutation"]] for n, p in comp["paired"].items()]))  # fmt: skip
    cols = [c for c in ("federated", "centralised", "local-only (own model)") if any(c in r for r in comp["clients"])]
    rep.add(f"Per client ({head} on each client's own held-out units)",
            table(["client", "held-out units", *cols],
                  [[r["client"], r["held_out_units"], *[fmt_interval(r[c], 3) if c in r else "" for c in cols]]
                   for r in comp["clients"]]))  # fmt: skip
    rep.add("Quality by round", png_img(_figure(rows, summary), "held-out quality by round"))
    t = summary["traffic"]
    rep.add("Communication", table(["measured bytes down", "up", "per round (mean)", "predicted total",
                                    "travelling tensors", "full model", "fraction"],
            [[t["bytes_down"], t["bytes_up"], t["bytes_per_round_mean"], t["predicted"]["bytes_total"],
              t["travelling_tensor_bytes"], t["full_model_bytes"], t["travelling_fraction_of_full"]]]))  # fmt: skip
    r = summary["robustness"]
    rep.add("Clients per round", table(["sampled", "replied", "failed (crashed)", "timed out", "accepted",
                                        "rejected (reason: count)", "aggregates rejected"],
            [[r["sampled"], r["replied"], r["failed"], r["timed_out"], r["accepted"],
              ", ".join(f"{k}: {v}" for k, v in r["rejected"].items()) or "none", r["aggregates_rejected"]]]))  # fmt: skip
    rep.add("Rounds", table(["round", "sampled", "accepted", "failed", "timed out", "bytes down", "bytes up",
                             "seconds", f"held-out {head}"],
            [[x["round"], x.get("sampled", ""), x.get("accepted", ""), x.get("failed", ""), x.get("timed_out", ""),
              x.get("bytes_down", ""), x.get("bytes_up", ""), x.get("seconds", ""), x.get(f"test_{head}", "")]
             for x in rows]))  # fmt: skip
    p = summary["privacy"]
    if p:
        rep.add("Privacy (client-side DP-SGD)", f"<p>{p['mechanism']}; accountant {p['accountant']}; "
                f"overall epsilon {p['epsilon_overall']:.3f} ({p['overall_rule']}).</p>"
                + table(["client", "rounds", "DP steps", "noise multiplier", "delta", "epsilon"],
                        [[c["partition_id"], c["rounds"], c["steps"], c["noise_multiplier"], c["delta"], c["epsilon"]]
                         for c in p["epsilon_per_client"]]))  # fmt: skip
    return rep.render()
