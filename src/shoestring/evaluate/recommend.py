"""Sequential-recommendation evaluation: leave-last-out full ranking (HR@K, NDCG@K, MRR with
bootstrap CIs), a paired comparison, quality and exposure by user group (MovieLens-100k
users carry gender, age and occupation), item exposure concentration, report and drift
reference (``history_length``, which the server observes on /recommend)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from shoestring.core.artifact import atomic_write_json, atomic_write_text
from shoestring.evaluate.config import model_spec
from shoestring.evaluate.drift import build_reference
from shoestring.evaluate.report import Report, fmt_interval, png_img, table
from shoestring.evaluate.stats import bootstrap_ci, paired_comparison

if TYPE_CHECKING:
    from shoestring.core.workspace import StageContext
    from shoestring.evaluate.config import EvaluateConfig

__all__ = ["age_bucket", "evaluate_recommender", "rank_cases"]

HEAD_SHARE = 0.2
"""Items in the top 20% by training interactions are the 'head' for exposure figures."""


def age_bucket(age: Any) -> str:
    """MovieLens ages bucketed as in the ML-1M documentation (under 18 ... 56+)."""
    try:
        a = int(age)
    except (TypeError, ValueError):
        return str(age)
    for hi, name in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55")):
        if a < hi:
            return name
    return "56+"


def rank_cases(rec: Any, cases: list[tuple[str, list[str], str]], k_max: int, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of each held-out item among all items (seen items excluded, ties share
    the mean rank) and each user's top-``k_max`` item columns."""
    import torch

    ranks: list[float] = []
    tops: list[np.ndarray] = []
    for s in range(0, len(cases), batch):
        chunk = cases[s : s + batch]
        scores = rec.score_next([h for _, h, _ in chunk]).float().clone()  # (B, N)
        for row, (_, hist, target) in enumerate(chunk):
            seen = [rec.index[i] - 1 for i in hist if i in rec.index and i != target]
            if seen:
                scores[row, torch.tensor(seen)] = float("-inf")
        targets = torch.tensor([rec.index[t] - 1 for _, _, t in chunk])
        ts = scores.gather(1, targets[:, None])  # (B, 1)
        greater = (scores > ts).sum(1).float()
        ties = (scores == ts).sum(1).float() - 1
        ranks.extend((1 + greater + 0.5 * ties).tolist())
        tops.append(torch.topk(scores, k_max, dim=1).indices.numpy())
    return np.asarray(ranks), np.concatenate(tops) if tops else np.zeros((0, k_max), dtype=np.int64)


def _per_user(ranks: np.ndarray, k: int) -> dict[str, np.ndarray]:
    return {
        f"hr@{k}": (ranks <= k).astype(np.float64),
        f"ndcg@{k}": np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0),
    }


def _gini(x: np.ndarray) -> float:
    """Gini coefficient of non-negative exposure counts (0 = equal, 1 = one item gets all)."""
    v = np.sort(np.asarray(x, dtype=np.float64))
    if v.sum() == 0:
        return 0.0
    n = len(v)
    return float((2 * np.arange(1, n + 1) - n - 1) @ v / (n * v.sum()))


def _score(spec: str, cfg: EvaluateConfig) -> dict[str, Any]:
    from shoestring.train.recsys import load_recommender

    rec = load_recommender(spec)
    cases = [c for c in rec.test_cases() if c[2] in rec.index][: cfg.max_records]
    k_max = max(cfg.k)
    ranks, tops = rank_cases(rec, cases, k_max)
    return {"rec": rec, "cases": cases, "ranks": ranks, "tops": tops}


def evaluate_recommender(cfg: EvaluateConfig, ctx: StageContext) -> dict[str, Any]:

    spec = model_spec("model", cfg, ctx)
    assert spec is not None
    main = _score(spec, cfg)
    rec, cases, ranks, tops = main["rec"], main["cases"], main["ranks"], main["tops"]
    kw: dict[str, Any] = {"n_boot": cfg.bootstrap, "confidence": cfg.confidence, "seed": cfg.seed}
    headline: dict[str, Any] = {"users": len(cases), "mrr": bootstrap_ci(1.0 / ranks, **kw)}
    for k in cfg.k:
        for name, vals in _per_user(ranks, k).items():
            headline[name] = bootstrap_ci(vals, **kw)
    metrics: dict[str, Any] = {"task": "recommendation", "model": {"spec": spec, **headline}}

    # Exposure: how recommendations spread over items, and how much goes to the popular head.
    k0 = min(cfg.k)
    pop = np.zeros(len(rec.item_ids))
    for seq in rec.sequences.values():
        for item in seq[:-1]:
            if item in rec.index:
                pop[rec.index[item] - 1] += 1
    head = pop >= np.quantile(pop, 1 - HEAD_SHARE)
    exposure = np.bincount(tops[:, :k0].reshape(-1), minlength=len(rec.item_ids))
    user_head = head[tops[:, :k0]].mean(1)
    metrics["exposure"] = {"k": k0, "catalogue_coverage": float((exposure > 0).mean()), "gini": _gini(exposure),
                           "head_share_of_slots": float(user_head.mean()), "head_share_of_catalogue": float(head.mean())}

    names = cfg.sensitive or [a for a in ("gender", "age", "occupation") if any(a in u for u in rec.users.values())]
    per_user = _per_user(ranks, k0)
    groups_out: dict[str, Any] = {}
    for attr in names:
        values = [rec.users.get(u, {}).get(attr, "missing") for u, _, _ in cases]
        labels = np.asarray([age_bucket(v) if attr == "age" else str(v) for v in values])
        rows: dict[str, Any] = {}
        for g in sorted(set(labels)):
            sel = labels == g
            rows[g] = {"users": int(sel.sum()), f"hr@{k0}": float(per_user[f"hr@{k0}"][sel].mean()),
                       f"ndcg@{k0}": bootstrap_ci(per_user[f"ndcg@{k0}"][sel], **kw),
                       "mrr": float((1.0 / ranks[sel]).mean()), "head_share": float(user_head[sel].mean())}
        big = {g: r for g, r in rows.items() if r["users"] >= 10}  # tiny groups make spreads meaningless
        nd = [r[f"ndcg@{k0}"]["value"] for r in big.values()]
        groups_out[attr] = {
            "groups": rows,
            f"ndcg@{k0}_difference": float(max(nd) - min(nd)) if nd else None,
            f"ndcg@{k0}_ratio": float(min(nd) / max(nd)) if nd and max(nd) > 0 else None,
            "groups_with_10_or_more_users": len(big),
        }
    metrics["fairness"] = groups_out

    other = model_spec("compare", cfg, ctx)
    if other is not None:
        base = _score(other, cfg)
        common = {u: i for i, (u, _, _) in enumerate(base["cases"])}
        ia = [i for i, (u, _, _) in enumerate(cases) if u in common]
        ib = [common[cases[i][0]] for i in ia]
        b_ranks = base["ranks"]
        metrics["compare"] = {"spec": other, "mrr": bootstrap_ci(1.0 / b_ranks, **kw),
                              **{n: bootstrap_ci(v, **kw) for n, v in _per_user(b_ranks, k0).items()}}
        metrics["comparison"] = {
            f"ndcg@{k0}": paired_comparison(per_user[f"ndcg@{k0}"][ia], _per_user(b_ranks[ib], k0)[f"ndcg@{k0}"], **kw),
            "mrr": paired_comparison(1.0 / ranks[ia], 1.0 / b_ranks[ib], **kw),
        }
    top1_pct = [float((pop < pop[t]).mean()) for t in tops[:, 0]] if len(tops) else []
    reference = build_reference({"history_length": [float(len(h)) for _, h, _ in cases]},
                                {"top1_item_popularity_percentile": top1_pct})
    atomic_write_json(ctx.out_dir / "metrics.json", metrics)
    atomic_write_json(ctx.out_dir / "reference.json", reference)
    atomic_write_text(ctx.out_dir / "report.html", _render(metrics, ranks, cfg))
    lines = [f"users {len(cases)}  " + "  ".join(f"{n} {fmt_interval(v, 3)}" for n, v in headline.items() if n != "users")]
    return {"task": "recommendation", "users": len(cases), "mrr": headline["mrr"]["value"],
            **{n: v["value"] for n, v in headline.items() if isinstance(v, dict)}, "headline": lines}


def _render(metrics: dict[str, Any], ranks: np.ndarray, cfg: EvaluateConfig) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = metrics["model"]
    rep = Report(f"Evaluation: {m['spec']}", f"sequential recommendation, leave-last-out full ranking over all items, "
                 f"{m['users']} users; {cfg.confidence:.0%} bootstrap intervals over users ({cfg.bootstrap} resamples).")
    names = [n for n in m if n not in ("spec", "users")]
    rows = [[role, metrics[role]["spec"], *[fmt_interval(metrics[role][n], 3) if n in metrics[role] else "" for n in names]]
            for role in ("model", "compare") if role in metrics]
    rep.add("Ranking quality", table(["role", "model", *names], rows))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(np.log10(ranks), bins=40)
    ax.set_xlabel("log10 rank of the held-out item")
    ax.set_ylabel("users")
    rep.add("Rank distribution", png_img(fig, "rank histogram"))
    if "comparison" in metrics:
        c = metrics["comparison"]
        rep.add("Paired comparison", table(["metric (model - compare)", "difference", "permutation p", "Wilcoxon p"],
                                           [[n, fmt_interval(v["difference"], 3), v["p_value_permutation"],
                                             v["p_value_wilcoxon"]] for n, v in c.items()]))
    e = metrics["exposure"]
    rep.add("Item exposure", table(["K", "catalogue coverage", "Gini of exposure", "head share of slots",
                                    "head share of catalogue"],
                                   [[e["k"], e["catalogue_coverage"], e["gini"], e["head_share_of_slots"],
                                     e["head_share_of_catalogue"]]]))
    k0 = min(cfg.k)
    for attr, f in metrics["fairness"].items():
        body = table(["group", "users", f"HR@{k0}", f"NDCG@{k0} [CI]", "MRR", "head share of recommendations"],
                     [[g, r["users"], r[f"hr@{k0}"], fmt_interval(r[f"ndcg@{k0}"], 3), r["mrr"], r["head_share"]]
                      for g, r in f["groups"].items()])
        d, rt = f[f"ndcg@{k0}_difference"], f[f"ndcg@{k0}_ratio"]
        body += (f'<p>NDCG@{k0} spread over groups with at least 10 users: difference '
                 f'{"n/a" if d is None else f"{d:.4f}"}, ratio {"n/a" if rt is None else f"{rt:.3f}"}.</p>')
        rep.add(f"Quality and exposure by {attr}", body)
    rep.add("Drift reference", "<p>reference.json stores the distribution of user history lengths (what the "
            "server observes on /recommend) and of the popularity percentile of each user's top item.</p>")
    return rep.render()
