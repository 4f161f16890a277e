"""Classification evaluation (text classifiers and the tabular MLP): metrics with CIs, paired
comparison, fairness by sensitive group with mitigation, counterfactual probes for text,
explanations, report and drift reference."""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from shoestring.core.artifact import atomic_write_json, atomic_write_text
from shoestring.evaluate.classify import classification_metrics, compare_classifiers
from shoestring.evaluate.config import model_spec
from shoestring.evaluate.drift import build_reference
from shoestring.evaluate.fairness import group_fairness, mitigate
from shoestring.evaluate.report import Report, fmt_interval, png_img, table

if TYPE_CHECKING:
    from shoestring.core.workspace import StageContext
    from shoestring.evaluate.config import EvaluateConfig
    from shoestring.evaluate.predictors import Predictions

__all__ = ["COUNTERFACTUAL_PAIRS", "counterfactual_probe", "evaluate_classifier"]

# Group terms swapped in both directions by the counterfactual probe.
COUNTERFACTUAL_PAIRS = [
    ("he", "she"), ("him", "her"), ("his", "her"), ("man", "woman"), ("men", "women"), ("male", "female"),
    ("boy", "girl"), ("boys", "girls"), ("father", "mother"), ("son", "daughter"), ("husband", "wife"),
    ("brother", "sister"), ("mr", "ms"), ("king", "queen"), ("gentleman", "lady"),
]


def _swap_map() -> dict[str, str]:
    m: dict[str, str] = {}
    for a, b in COUNTERFACTUAL_PAIRS:
        m.setdefault(a, b)
        m.setdefault(b, a)
    return m


def swap_group_terms(text: str) -> str | None:
    """The text with every group term swapped (case kept), or None if it has none."""
    mapping = _swap_map()
    pattern = re.compile(r"\b(" + "|".join(sorted(mapping, key=len, reverse=True)) + r")\b", re.IGNORECASE)
    if not pattern.search(text):
        return None

    def repl(m: re.Match[str]) -> str:
        word = m.group(0)
        out = mapping[word.lower()]
        return out.capitalize() if word[0].isupper() else out

    return pattern.sub(repl, text)


def counterfactual_probe(pred: Predictions) -> dict[str, Any] | None:
    """Swap group terms in the evaluation texts; measure the change in the predicted-class
    probability and how often the predicted class flips."""
    if pred.score_texts is None or not pred.texts:
        return None
    pairs = [(i, s) for i, t in enumerate(pred.texts) if (s := swap_group_terms(t)) is not None]
    if not pairs:
        return {"records": 0, "note": "no evaluation text contains a group term"}
    idx = np.array([i for i, _ in pairs])
    swapped = pred.score_texts([s for _, s in pairs])
    orig = pred.proba[idx]
    top = orig.argmax(1)
    delta = swapped[np.arange(len(idx)), top] - orig[np.arange(len(idx)), top]
    return {
        "records": len(idx),
        "mean_abs_change": float(np.abs(delta).mean()),
        "max_abs_change": float(np.abs(delta).max()),
        "flip_rate": float(np.mean(swapped.argmax(1) != top)),
        "pairs": [list(p) for p in COUNTERFACTUAL_PAIRS],
    }


def evaluate_classifier(cfg: EvaluateConfig, ctx: StageContext, task: str) -> dict[str, Any]:
    from shoestring.evaluate.predictors import predict_tabular, predict_text_classifier

    predict = predict_tabular if task == "tabular" else predict_text_classifier
    spec = model_spec("model", cfg, ctx)
    assert spec is not None
    main = predict(spec, cfg, ctx)
    kw: dict[str, Any] = {"n_boot": cfg.bootstrap, "confidence": cfg.confidence, "seed": cfg.seed}
    metrics: dict[str, Any] = {"task": task, "split": cfg.split, "skipped": main.skipped,
                               "model": {"spec": spec, **classification_metrics(main.y, main.proba, main.classes, **kw)}}
    other = model_spec("compare", cfg, ctx)
    if other is not None:
        cmp_pred = predict(other, cfg, ctx)
        metrics["compare"] = {"spec": other, **classification_metrics(cmp_pred.y, cmp_pred.proba, cmp_pred.classes, **kw)}
        if cmp_pred.ids == main.ids and cmp_pred.classes == main.classes:
            metrics["comparison"] = compare_classifiers(main.y, main.proba, cmp_pred.proba, **kw)
    binary = len(main.classes) == 2
    pred_idx = main.proba.argmax(1)
    fairness: dict[str, Any] = {}
    for name, groups in main.sensitive.items():
        fairness[name] = group_fairness(main.y, pred_idx, groups, binary=binary)
        if binary and cfg.mitigate:
            fairness[name]["mitigation"] = mitigate(
                main.y, main.proba, groups, retrain=main.retrain if name == next(iter(main.sensitive)) else None,
                seed=cfg.seed,
            )
    metrics["fairness"] = fairness
    probe = counterfactual_probe(main)
    if probe is not None:
        metrics["counterfactual"] = probe
    if cfg.probe and main.score_texts is not None:
        from shoestring.evaluate.probes import probe_classifier

        metrics["probes"] = probe_classifier(main.score_texts, main.classes, cfg)
    metrics["explanations"] = {"model": main.explain(cfg.explain) if main.explain and cfg.explain else []}
    if main.importance is not None and cfg.explain:
        metrics["feature_importance"] = main.importance()
    reference = build_reference(
        main.drift_features,
        {"label": [main.classes[i] for i in pred_idx], "confidence": main.proba.max(1).tolist()},
        categorical=["label", *main.categorical_features],
    )
    atomic_write_json(ctx.out_dir / "metrics.json", metrics)
    atomic_write_json(ctx.out_dir / "reference.json", reference)
    atomic_write_text(ctx.out_dir / "report.html", _render(metrics, main, cfg))
    m = metrics["model"]
    headline = [f"accuracy {fmt_interval(m['accuracy'])}  macro-F1 {fmt_interval(m['macro_f1'])}  "
                f"ECE {fmt_interval(m['ece'])}"]
    for name, f in fairness.items():
        if "demographic_parity_difference" in f:
            headline.append(f"{name}: DP diff {f['demographic_parity_difference']:.3f}, "
                            f"EO diff {f['equalized_odds_difference']:.3f}")
    return {"task": task, "records": m["records"], "accuracy": m["accuracy"]["value"],
            "macro_f1": m["macro_f1"]["value"], "ece": m["ece"]["value"], "headline": headline}


def _render(metrics: dict[str, Any], main: Predictions, cfg: EvaluateConfig) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shoestring.evaluate.explain import render_explanations

    conf = f"{cfg.confidence:.0%}"
    rep = Report(f"Evaluation: {metrics['model']['spec']}",
                 f"{metrics['task']}, split '{cfg.split}', {metrics['model']['records']} records; intervals are {conf} "
                 f"percentile bootstrap over records ({cfg.bootstrap} resamples).")
    rows = [[role, metrics[role]["spec"], metrics[role]["records"], fmt_interval(metrics[role]["accuracy"]),
             fmt_interval(metrics[role]["macro_f1"]), fmt_interval(metrics[role]["ece"])]
            for role in ("model", "compare") if role in metrics]
    rep.add("Metrics", table(["role", "model", "records", "accuracy", "macro-F1", "ECE (15 bins)"], rows))
    m = metrics["model"]
    rep.add("Per class", table(["class", "precision", "recall", "F1", "support"],
                               [[c, v["precision"], v["recall"], v["f1"], v["support"]] for c, v in m["per_class"].items()]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    cm = np.asarray(m["confusion_matrix"])
    axes[0].imshow(cm, cmap="Blues")
    axes[0].set_xlabel("predicted")
    axes[0].set_ylabel("true")
    axes[0].set_title("confusion matrix")
    if len(main.classes) <= 20:
        axes[0].set_xticks(range(len(main.classes)), main.classes, rotation=90)
        axes[0].set_yticks(range(len(main.classes)), main.classes)
    conf_v, hit = main.proba.max(1), (main.proba.argmax(1) == main.y)
    edges = np.linspace(0, 1, 11)
    mids, accs = [], []
    for lo, hi in itertools.pairwise(edges):
        sel = (conf_v > lo) & (conf_v <= hi)
        if sel.any():
            mids.append(conf_v[sel].mean())
            accs.append(hit[sel].mean())
    axes[1].plot([0, 1], [0, 1], color="grey", lw=1)
    axes[1].plot(mids, accs, marker="o")
    axes[1].set_xlabel("confidence")
    axes[1].set_ylabel("accuracy")
    axes[1].set_title("reliability diagram")
    rep.add("Confusion and calibration", png_img(fig, "confusion matrix and reliability diagram"))
    if "comparison" in metrics:
        c = metrics["comparison"]
        rep.add("Paired comparison", table(
            ["metric (model - compare)", "difference", "permutation p", "Wilcoxon p"],
            [["accuracy", fmt_interval(c["accuracy_difference"]["difference"]),
              c["accuracy_difference"]["p_value_permutation"], c["accuracy_difference"]["p_value_wilcoxon"]],
             ["log-loss", fmt_interval(c["log_loss_difference"]["difference"]),
              c["log_loss_difference"]["p_value_permutation"], c["log_loss_difference"]["p_value_wilcoxon"]]]))
    for name, f in metrics["fairness"].items():
        cols = [k for k in ("selection_rate", "tpr", "fpr", "accuracy", "count") if k in f["overall"]]
        body = table(["group", *cols], [[g, *[v.get(k) for k in cols]] for g, v in f["groups"].items()])
        body += table(["", *[k for k in cols if k != "count"]],
                      [["difference (max - min)", *[f["difference"].get(k) for k in cols if k != "count"]],
                       ["ratio (min / max)", *[f["ratio"].get(k) for k in cols if k != "count"]]])
        if "demographic_parity_difference" in f:
            body += table(["demographic parity difference", "ratio", "equalised odds difference", "ratio"],
                          [[f["demographic_parity_difference"], f["demographic_parity_ratio"],
                            f["equalized_odds_difference"], f["equalized_odds_ratio"]]])
        mit = f.get("mitigation")
        if mit:
            body += "<h3>Mitigation (before / after)</h3>" + table(
                ["method", "accuracy", "demographic parity difference", "equalised odds difference"],
                [[r["method"], r["accuracy"], r["demographic_parity_difference"], r["equalized_odds_difference"]]
                 for r in mit["rows"]]) + f'<p class="note">{mit["split"]}. {" ".join(mit["notes"])}</p>'
        rep.add(f"Fairness by {name}", body)
    cf = metrics.get("counterfactual")
    if cf:
        rep.add("Counterfactual probe (group terms swapped)", table(
            ["records with group terms", "mean |change| in predicted-class probability", "max |change|", "flip rate"],
            [[cf["records"], cf.get("mean_abs_change"), cf.get("max_abs_change"), cf.get("flip_rate")]]))
    if "probes" in metrics:
        from shoestring.evaluate.probes import render_probes

        rep.add("Counterfactual template probes", render_probes(metrics["probes"]))
    fi = metrics.get("feature_importance")
    if fi:
        rep.add("Feature importance", table(["feature", "mean |IG attribution|"], fi["features"]) +
                f'<p class="note">{fi["method"]}, {fi["records"]} records, {fi["steps"]} steps, worst relative '
                f'completeness gap {fi["relative_gap"]:.2g}.</p>')
    if metrics["explanations"]["model"]:
        rep.add(f"Explanations ({cfg.explain_method})", render_explanations(metrics["explanations"]))
    rep.add("Drift reference", "<p>reference.json stores the distribution of every input feature and of the "
            "predicted label and confidence, for drift detection by the server.</p>")
    return rep.render()
