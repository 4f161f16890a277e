"""Embedding-model evaluation: sentence embeddings of any encoder or decoder (pooled as
`shoestring embed` pools them), scored with the metrics of :mod:`.embedding_metrics`.

* labelled records: kNN and nearest-centroid classification (accuracy, macro-F1, ECE with
  bootstrap CIs) and retrieval (precision@K, MRR) of the evaluated split against the
  labelled ``reference_split`` (default ``train``; leave-one-out within the evaluated split
  when there is none);
* always: alignment (under 10% word dropout), uniformity, mean pairwise cosine, effective rank;
* ``compare``: per-record cosine similarity of the two models' embeddings of the same text,
  overlap of their K nearest reference neighbours, and paired tests on kNN correctness,
  reciprocal rank and alignment;
* drift reference: text-length histograms, the embedding norm, cosine to the evaluation
  centroid and the projections on the top principal components, plus the centroid and
  components themselves so a server can project new embeddings the same way.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from shoestring.core.artifact import atomic_write_json, atomic_write_text
from shoestring.core.errors import ShoestringError
from shoestring.evaluate import embedding_metrics as em
from shoestring.evaluate.classify import classification_metrics
from shoestring.evaluate.config import model_spec
from shoestring.evaluate.drift import build_reference
from shoestring.evaluate.report import Report, fmt, fmt_interval, png_img, table
from shoestring.evaluate.stats import bootstrap_ci, paired_comparison

if TYPE_CHECKING:
    from shoestring.core.workspace import StageContext
    from shoestring.evaluate.config import EvaluateConfig

__all__ = ["evaluate_embedding"]

DROPOUT_RATE = 0.1
N_COMPONENTS = 3


def _records(ctx: StageContext, cfg: EvaluateConfig, split: str, limit: int) -> list[dict[str, Any]]:
    from shoestring.evaluate.lm import read_records

    path = ctx.inputs["dataset"].path / f"{split}.jsonl"
    if not path.is_file():
        return []
    recs, _bad = read_records(path, limit)
    return [r for r in recs if isinstance(r.get(cfg.text_field), str) and r[cfg.text_field].strip()]


def _embed(spec: str, texts: list[str], cfg: EvaluateConfig) -> tuple[np.ndarray, float]:
    from shoestring.models.inference import embed

    t0 = time.perf_counter()
    vecs = embed(spec, texts, pooling=cfg.pooling, normalize=False, max_length=cfg.max_seq_len)
    return np.asarray(vecs, dtype=np.float64), time.perf_counter() - t0


def _score(spec: str, data: dict[str, Any], cfg: EvaluateConfig) -> dict[str, Any]:
    """Embed the evaluation texts, their word-dropout views and the reference texts with one model."""
    q, secs = _embed(spec, data["texts"], cfg)
    views, _ = _embed(spec, data["views"], cfg)
    r = _embed(spec, data["ref_texts"], cfg)[0] if data["ref_texts"] else None
    return {"spec": spec, "q": q, "views": views, "r": r, "seconds": secs}


def _block(s: dict[str, Any], data: dict[str, Any], cfg: EvaluateConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {"n_boot": cfg.bootstrap, "confidence": cfg.confidence, "seed": cfg.seed}
    q = s["q"]
    out: dict[str, Any] = {"spec": s["spec"], "records": len(q), "dim": int(q.shape[1]),
                           "embed_seconds": round(s["seconds"], 3),
                           "texts_per_s": round(len(q) / s["seconds"], 1) if s["seconds"] > 0 else None}
    align = ((em.l2_normalise(q) - em.l2_normalise(s["views"])) ** 2).sum(1)
    s["alignment_per_record"] = align
    out["intrinsic"] = {
        "alignment": bootstrap_ci(align, **kw),
        "uniformity": em.uniformity(q, **kw),
        "mean_pairwise_cosine": em.mean_pairwise_cosine(q),
        "effective_rank": em.effective_rank(q),
        "mean_norm": float(np.linalg.norm(q, axis=1).mean()),
    }
    if data["labelled"]:
        loo = s["r"] is None
        r = q if loo else s["r"]
        r_y = data["y"] if loo else data["ref_y"]
        n_c = len(data["classes"])
        proba = em.knn_predict(q, r, r_y, n_c, cfg.knn_k, leave_one_out=loo)
        s["knn_proba"] = proba
        out["knn"] = {"k": cfg.knn_k, **classification_metrics(data["y"], proba, data["classes"], **kw)}
        cent = classification_metrics(data["y"], em.centroid_predict(q, r, r_y, n_c), data["classes"], **kw)
        out["centroid"] = {m: cent[m] for m in ("records", "accuracy", "macro_f1")}
        ret = {}
        for k in cfg.k:
            sc = em.retrieval_scores(q, data["y"], r, r_y, k, leave_one_out=loo)
            ret[f"precision@{k}"] = bootstrap_ci(sc["precision_at_k"], **kw)
            s["reciprocal_rank"] = sc["reciprocal_rank"]
        ret["mrr"] = bootstrap_ci(s["reciprocal_rank"], **kw)
        out["retrieval"] = ret
        out["reference"] = "leave-one-out within the evaluated split" if loo else \
            f"split '{cfg.reference_split}' ({len(r)} records)"
    return out


def _neighbours(q: np.ndarray, r: np.ndarray, k: int, loo: bool) -> np.ndarray:
    sim = em.l2_normalise(q) @ em.l2_normalise(r).T
    if loo:
        np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1)[:, :k]


def _compare(a: dict[str, Any], b: dict[str, Any], data: dict[str, Any], cfg: EvaluateConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {"n_boot": cfg.bootstrap, "confidence": cfg.confidence, "seed": cfg.seed}
    out: dict[str, Any] = {}
    if a["q"].shape[1] == b["q"].shape[1]:
        cos = (em.l2_normalise(a["q"]) * em.l2_normalise(b["q"])).sum(1)
        out["cosine_similarity"] = {**bootstrap_ci(cos, **kw), "min": float(cos.min()),
                                    "p05": float(np.quantile(cos, 0.05)), "per_record": [float(c) for c in cos]}
    else:
        out["cosine_similarity"] = {"note": f"dimensions differ ({a['q'].shape[1]} vs {b['q'].shape[1]})"}
    loo = a["r"] is None
    k = max(cfg.k)
    na = _neighbours(a["q"], a["q"] if loo else a["r"], k, loo)
    nb = _neighbours(b["q"], b["q"] if loo else b["r"], k, loo)
    overlap = np.array([len(set(x) & set(y)) / k for x, y in zip(na, nb, strict=True)])
    out[f"neighbour_overlap@{k}"] = bootstrap_ci(overlap, **kw)
    out["alignment_difference"] = paired_comparison(a["alignment_per_record"], b["alignment_per_record"], **kw)
    if data["labelled"]:
        y = data["y"]
        ca = (a["knn_proba"].argmax(1) == y).astype(np.float64)
        cb = (b["knn_proba"].argmax(1) == y).astype(np.float64)
        out["knn_accuracy_difference"] = paired_comparison(ca, cb, **kw)
        out["knn_label_agreement"] = float(np.mean(a["knn_proba"].argmax(1) == b["knn_proba"].argmax(1)))
        out["mrr_difference"] = paired_comparison(a["reciprocal_rank"], b["reciprocal_rank"], **kw)
    return out


def _prepare(cfg: EvaluateConfig, ctx: StageContext) -> dict[str, Any]:
    if "dataset" not in ctx.inputs:
        raise ShoestringError("evaluate: the embedding task needs --dataset with text records (labels optional)")
    recs = _records(ctx, cfg, cfg.split, cfg.max_records)
    if len(recs) < 3:
        raise ShoestringError(f"evaluate: need at least 3 records with '{cfg.text_field}' text in {cfg.split}.jsonl")
    lab = cfg.label_field
    labelled = all(r.get(lab) is not None for r in recs) and len({str(r[lab]) for r in recs}) >= 2
    ref = _records(ctx, cfg, cfg.reference_split, cfg.max_reference_records) \
        if labelled and cfg.reference_split != cfg.split else []
    ref = [r for r in ref if r.get(lab) is not None]
    classes = sorted({str(r[lab]) for r in recs + ref}) if labelled else []
    idx = {c: i for i, c in enumerate(classes)}
    texts = [str(r[cfg.text_field]) for r in recs]
    return {
        "ids": [str(r.get("id", i)) for i, r in enumerate(recs)], "texts": texts,
        "views": [em.word_dropout(t, DROPOUT_RATE, cfg.seed + i) for i, t in enumerate(texts)],
        "labelled": labelled, "classes": classes,
        "y": np.array([idx[str(r[lab])] for r in recs]) if labelled else None,
        "ref_texts": [str(r[cfg.text_field]) for r in ref],
        "ref_y": np.array([idx[str(r[lab])] for r in ref]) if ref else None,
    }


def _reference(main: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    q = main["q"]
    mean = q.mean(0)
    _, sv, vt = np.linalg.svd(q - mean, full_matrices=False)
    comps = vt[:N_COMPONENTS]
    proj = (q - mean) @ comps.T
    centroid = em.l2_normalise(mean[None])[0]
    preds: dict[str, list[Any]] = {
        "embedding_norm": np.linalg.norm(q, axis=1).tolist(),
        "centroid_cosine": (em.l2_normalise(q) @ centroid).tolist(),
        **{f"pc{i + 1}": proj[:, i].tolist() for i in range(proj.shape[1])},
    }
    cat = []
    if "knn_proba" in main:
        preds["knn_label"] = [data["classes"][i] for i in main["knn_proba"].argmax(1)]
        cat.append("knn_label")
    ref = build_reference({"input_chars": [len(t) for t in data["texts"]],
                           "input_words": [len(t.split()) for t in data["texts"]]}, preds, categorical=cat)
    var = sv**2
    ref["embedding"] = {"dim": int(q.shape[1]), "mean": mean.tolist(), "components": comps.tolist(),
                        "explained_variance_ratio": (var[:N_COMPONENTS] / max(float(var.sum()), 1e-12)).tolist(),
                        "note": "pcN = (embedding - mean) . components[N-1], on unnormalised pooled embeddings"}
    return ref


def evaluate_embedding(cfg: EvaluateConfig, ctx: StageContext) -> dict[str, Any]:

    spec = model_spec("model", cfg, ctx)
    assert spec is not None
    data = _prepare(cfg, ctx)
    ctx.console.print(f"  embedding {len(data['texts'])} records (+{len(data['ref_texts'])} reference) with {spec}")
    main = _score(spec, data, cfg)
    metrics: dict[str, Any] = {"task": "embedding", "split": cfg.split, "pooling": cfg.pooling,
                               "labelled": data["labelled"], "classes": data["classes"],
                               "word_dropout_rate": DROPOUT_RATE, "model": _block(main, data, cfg)}
    other = model_spec("compare", cfg, ctx)
    cmp_s = None
    if other is not None:
        ctx.console.print(f"  embedding the same records with {other} (comparison)")
        cmp_s = _score(other, data, cfg)
        metrics["compare"] = _block(cmp_s, data, cfg)
        metrics["comparison"] = _compare(main, cmp_s, data, cfg)
    atomic_write_json(ctx.out_dir / "metrics.json", metrics)
    atomic_write_json(ctx.out_dir / "reference.json", _reference(main, data))
    atomic_write_text(ctx.out_dir / "report.html", _render(metrics, main, data, cfg))
    m = metrics["model"]
    headline = []
    stats: dict[str, Any] = {"task": "embedding", "records": m["records"], "dim": m["dim"],
                             "uniformity": m["intrinsic"]["uniformity"]["value"],
                             "alignment": m["intrinsic"]["alignment"]["value"]}
    if "knn" in m:
        stats.update(knn_accuracy=m["knn"]["accuracy"]["value"], mrr=m["retrieval"]["mrr"]["value"])
        headline.append(f"kNN (k={cfg.knn_k}) accuracy {fmt_interval(m['knn']['accuracy'])}  macro-F1 "
                        f"{fmt_interval(m['knn']['macro_f1'])}  MRR {fmt_interval(m['retrieval']['mrr'])}")
    headline.append(f"alignment {fmt_interval(m['intrinsic']['alignment'])}  uniformity "
                    f"{fmt_interval(m['intrinsic']['uniformity'])}")
    comp = metrics.get("comparison")
    if comp and "value" in comp["cosine_similarity"]:
        stats["compare_cosine"] = comp["cosine_similarity"]["value"]
        headline.append(f"cosine(model, compare) {fmt_interval(comp['cosine_similarity'])}")
    if comp and "knn_accuracy_difference" in comp:
        d = comp["knn_accuracy_difference"]
        headline.append(f"kNN accuracy difference {fmt_interval(d['difference'])}, p={fmt(d['p_value_permutation'], 3)}")
    stats["headline"] = headline
    return stats


def _render(metrics: dict[str, Any], main: dict[str, Any], data: dict[str, Any], cfg: EvaluateConfig) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = [r for r in ("model", "compare") if r in metrics]
    rep = Report(f"Evaluation: {metrics['model']['spec']}",
                 f"embedding, split '{cfg.split}', {metrics['model']['records']} records, pooling '{cfg.pooling}'; "
                 f"intervals are {cfg.confidence:.0%} percentile bootstrap over records ({cfg.bootstrap} resamples).")
    if data["labelled"]:
        ks = [f"precision@{k}" for k in cfg.k]
        rows = [[r, metrics[r]["spec"], metrics[r]["records"], fmt_interval(metrics[r]["knn"]["accuracy"]),
                 fmt_interval(metrics[r]["knn"]["macro_f1"]), fmt_interval(metrics[r]["centroid"]["accuracy"]),
                 fmt_interval(metrics[r]["centroid"]["macro_f1"]),
                 *[fmt_interval(metrics[r]["retrieval"][k]) for k in ks], fmt_interval(metrics[r]["retrieval"]["mrr"])]
                for r in roles]
        rep.add("Classification and retrieval", table(
            ["role", "model", "records", f"kNN (k={cfg.knn_k}) accuracy", "kNN macro-F1", "centroid accuracy",
             "centroid macro-F1", *ks, "MRR"], rows)
            + f'<p class="note">Queries: the evaluated split; reference: {metrics["model"]["reference"]}; '
            f"cosine similarity. {len(data['classes'])} classes.</p>")
    rows = [[r, metrics[r]["dim"], fmt_interval(metrics[r]["intrinsic"]["alignment"]),
             fmt_interval(metrics[r]["intrinsic"]["uniformity"]), metrics[r]["intrinsic"]["mean_pairwise_cosine"],
             metrics[r]["intrinsic"]["effective_rank"], metrics[r]["texts_per_s"]] for r in roles]
    rep.add("Intrinsic geometry", table(
        ["role", "dim", f"alignment ({DROPOUT_RATE:.0%} word dropout; lower better)", "uniformity (lower better)",
         "mean pairwise cosine", "effective rank", "texts/s"], rows)
        + '<p class="note">Alignment and uniformity as defined by Wang &amp; Isola (2020), on L2-normalised '
        "embeddings.</p>")
    comp = metrics.get("comparison")
    if comp:
        k = max(cfg.k)
        body_rows = []
        cs = comp["cosine_similarity"]
        if "value" in cs:
            body_rows.append(["per-record cosine(model, compare)", fmt_interval(cs), f"min {fmt(cs['min'])}, 5th pct "
                              f"{fmt(cs['p05'])}"])
        body_rows.append([f"top-{k} neighbour overlap", fmt_interval(comp[f"neighbour_overlap@{k}"]), ""])
        for name in ("knn_accuracy_difference", "mrr_difference", "alignment_difference"):
            if name in comp:
                d = comp[name]
                body_rows.append([f"{name.replace('_', ' ')} (model - compare)", fmt_interval(d["difference"]),
                                  f"permutation p {fmt(d['p_value_permutation'], 3)}, Wilcoxon p "
                                  f"{fmt(d['p_value_wilcoxon'], 3)}"])
        body = table(["figure", f"value [{cfg.confidence:.0%} CI]", "test"], body_rows)
        if "per_record" in cs:
            fig, ax = plt.subplots(figsize=(6, 3.2))
            lo, hi = min(cs["per_record"]), max(cs["per_record"])
            pad = 1e-3 if hi - lo < 1e-6 else 0.0  # identical models: one bar, not a numpy error
            ax.hist(cs["per_record"], bins=30, range=(lo - pad, hi + pad))
            ax.set_xlabel("cosine similarity of the two models' embeddings")
            ax.set_ylabel("records")
            body += png_img(fig, "per-record cosine similarity histogram")
        rep.add("Paired comparison", body)
    q = main["q"] - main["q"].mean(0)
    _, _, vt = np.linalg.svd(q, full_matrices=False)
    xy = q @ vt[:2].T
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if data["labelled"] and len(data["classes"]) <= 20:
        for c, name in enumerate(data["classes"]):
            sel = data["y"] == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.7, label=name)
        ax.legend(fontsize=7, markerscale=2)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.7)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    rep.add("Embedding map", png_img(fig, "first two principal components"))
    rep.add("Drift reference", "<p>reference.json stores the distributions of input characters and words, the "
            "embedding norm, the cosine to the evaluation centroid and the projections on the top "
            f"{N_COMPONENTS} principal components (with the mean and components to project new embeddings).</p>")
    return rep.render()
