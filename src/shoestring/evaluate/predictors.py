"""Classifiers behind one interface for evaluation: a Hugging Face sequence classifier on
text records, or the training package's tabular MLP on numeric rows.

A :class:`Predictions` holds, for the evaluation records: true class indices, predicted
probabilities, sensitive attributes, drift features, and how to explain and retrain."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    from shoestring.core.workspace import StageContext
    from shoestring.evaluate.config import EvaluateConfig

__all__ = ["Predictions", "predict_text_classifier", "predict_tabular"]


@dataclass
class Predictions:
    ids: list[str]
    y: np.ndarray
    """True class index per record."""
    proba: np.ndarray
    """Predicted probabilities (n, C)."""
    classes: list[str]
    sensitive: dict[str, list[str]] = field(default_factory=dict)
    drift_features: dict[str, list[Any]] = field(default_factory=dict)
    categorical_features: list[str] = field(default_factory=list)
    explain: Callable[[int], list[dict[str, Any]]] | None = None
    """explain(n) -> explanations of the first n records."""
    importance: Callable[[], dict[str, Any]] | None = None
    """Global feature importance (tabular)."""
    retrain: Callable[[bool], np.ndarray] | None = None
    """retrain(reweigh) -> probabilities on the same records (tabular reweighing)."""
    texts: list[str] = field(default_factory=list)
    score_texts: Callable[[list[str]], np.ndarray] | None = None
    """Probabilities for arbitrary texts (counterfactual probes on text classifiers)."""
    skipped: dict[str, int] = field(default_factory=dict)


def _read_split(ctx: StageContext, cfg: EvaluateConfig, split: str, limit: int) -> list[dict[str, Any]]:
    from shoestring.evaluate.lm import read_records

    if "dataset" not in ctx.inputs:
        raise ShoestringError("evaluate: this task needs --dataset (a dataset artifact with labelled records)")
    recs, _bad = read_records(ctx.inputs["dataset"].path / f"{split}.jsonl", limit)
    return recs


def _sensitive(recs: list[dict[str, Any]], names: list[str]) -> dict[str, list[str]]:
    out = {}
    for name in names:
        if not any(name in r for r in recs):
            raise ShoestringError(f"evaluate: sensitive column '{name}' is not in the records; fix --sensitive")
        out[name] = [str(r.get(name, "missing")) for r in recs]
    return out


# ----------------------------------------------------------------------------- text classifier


def predict_text_classifier(spec: str, cfg: EvaluateConfig, ctx: StageContext) -> Predictions:
    import torch

    from shoestring.evaluate.explain import explain_embeddings
    from shoestring.models import load_model, load_tokenizer

    tok = load_tokenizer(spec)
    model = load_model(spec, "classification", dtype=torch.float32)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # type: ignore[operator]
    model.eval()
    id2label = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    classes = [id2label[i] for i in range(len(id2label))]
    label_index = {c: i for i, c in enumerate(classes)}
    recs = _read_split(ctx, cfg, cfg.split, cfg.max_records)
    kept, y, skipped = [], [], 0
    for r in recs:
        text, lab = r.get(cfg.text_field), r.get(cfg.label_field)
        key = str(lab)
        if isinstance(lab, int) and key not in label_index and 0 <= lab < len(classes):
            key = classes[lab]
        if not isinstance(text, str) or key not in label_index:
            skipped += 1
            continue
        kept.append(r)
        y.append(label_index[key])
    if not kept:
        raise ShoestringError(f"evaluate: no records with '{cfg.text_field}' and a known '{cfg.label_field}' ({classes})")
    texts = [str(r[cfg.text_field]) for r in kept]

    def score_texts(batch_texts: list[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(batch_texts), 16):
                enc = tok(batch_texts[i : i + 16], truncation=True, max_length=cfg.max_seq_len, padding=True,
                          return_tensors="pt")
                out.append(torch.softmax(model(**enc).logits.float(), -1).numpy())
        return np.concatenate(out)

    proba = score_texts(texts)
    lengths = [len(tok(t, truncation=True, max_length=cfg.max_seq_len)["input_ids"]) for t in texts]

    def explain(n: int) -> list[dict[str, Any]]:
        res = []
        for i in range(min(n, len(texts))):
            ids = list(tok(texts[i], truncation=True, max_length=cfg.max_seq_len)["input_ids"])
            target = int(proba[i].argmax())

            if cfg.explain_method != "ig":
                from shoestring.evaluate.perturb import explain_masked, text_value

                value, pos = text_value(model, tok, ids, target)
                ex = explain_masked(cfg.explain_method, value, len(pos), samples=cfg.shap_samples, seed=cfg.seed,
                                    tolerance=cfg.ig_tolerance)
                ex["tokens"] = [tok.decode([ids[j]]) for j in pos]
                res.append(ex | {"id": str(kept[i].get("id")), "target": classes[target],
                                 "output": "log-probability of the predicted class"})
                continue

            def score(out: Any, target: int = target) -> torch.Tensor:
                return torch.log_softmax(out.logits.float(), dim=-1)[:, target]

            ex = explain_embeddings(model, tok, ids, score, steps=cfg.ig_steps, max_steps=cfg.ig_max_steps,
                                    tolerance=cfg.ig_tolerance)
            res.append(ex | {"id": str(kept[i].get("id")), "target": classes[target],
                             "output": "log-probability of the predicted class"})
        return res

    return Predictions(
        ids=[str(r.get("id")) for r in kept], y=np.asarray(y), proba=proba, classes=classes,
        sensitive=_sensitive(kept, cfg.sensitive),
        drift_features={"input_tokens": lengths, "input_chars": [len(t) for t in texts]},
        explain=explain, texts=texts, score_texts=score_texts, skipped={"unusable_records": skipped},
    )


# ----------------------------------------------------------------------------- tabular MLP


def _tabular_arrays(spec: str, clf: Any, cfg: EvaluateConfig, ctx: StageContext) -> dict[str, Any]:
    """Evaluation and training rows: from the dataset artifact, or rebuilt exactly as training
    split scikit-learn's digits when the model was trained on them."""
    manifest_path = Path(spec) / "manifest.json"
    train_cfg = json.loads(manifest_path.read_text()).get("config", {}) if manifest_path.is_file() else {}
    tab = dict(train_cfg.get("tabular") or {})
    if "dataset" not in ctx.inputs and tab.get("source") == "digits":
        from shoestring.train.tabular import TabularOptions, digits_data

        data = digits_data(TabularOptions(**tab), int(train_cfg.get("seed", 0)))
        split = cfg.split if cfg.split in data.x else "test"
        n = min(cfg.max_records, len(data.y[split]))
        if cfg.sensitive:
            raise ShoestringError("evaluate: the digits data has no sensitive columns; drop --sensitive")
        return {"x": data.x[split][:n], "y": data.y[split][:n], "ids": [f"{split}-{i}" for i in range(n)],
                "sensitive": {}, "train_x": data.x["train"], "train_y": data.y["train"], "train_sensitive": {}}
    recs = _read_split(ctx, cfg, cfg.split, cfg.max_records)
    label = clf.label_field or cfg.label_field
    cidx = {c: i for i, c in enumerate(clf.classes)}
    usable = [r for r in recs if str(r.get(label)) in cidx and all(isinstance(r.get(f), int | float) for f in clf.features)]
    if not usable:
        raise ShoestringError(f"evaluate: no rows with the model's {len(clf.features)} features and a known '{label}'")
    train_recs = _read_split(ctx, cfg, "train", 100_000)
    train_ok = [r for r in train_recs if str(r.get(label)) in cidx
                and all(isinstance(r.get(f), int | float) for f in clf.features)]
    return {
        "x": clf._matrix(usable), "y": np.asarray([cidx[str(r[label])] for r in usable]),
        "ids": [str(r.get("id")) for r in usable], "sensitive": _sensitive(usable, cfg.sensitive),
        "train_x": clf._matrix(train_ok) if train_ok else None,
        "train_y": np.asarray([cidx[str(r[label])] for r in train_ok]),
        "train_sensitive": {s: [str(r.get(s, "missing")) for r in train_ok] for s in cfg.sensitive},
        "skipped": len(recs) - len(usable),
    }


def predict_tabular(spec: str, cfg: EvaluateConfig, ctx: StageContext) -> Predictions:
    import torch

    from shoestring.evaluate.explain import integrated_gradients
    from shoestring.train.tabular import load_tabular

    clf = load_tabular(spec)
    d = _tabular_arrays(spec, clf, cfg, ctx)
    x, y = d["x"], d["y"]
    proba = clf.predict_proba(x)
    mean, std = torch.from_numpy(clf.mean), torch.from_numpy(clf.std)
    z = (torch.from_numpy(np.asarray(x, dtype=np.float32)) - mean) / std  # standardised inputs (n, d)
    pred = torch.from_numpy(proba.argmax(1))

    def forward(inp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.softmax(clf.model(inp), -1).gather(1, target[:, None])[:, 0]

    def explain_perturb(n: int) -> list[dict[str, Any]]:
        # Removed columns take background values: up to 50 training rows (standardised), so
        # SHAP's E f is the model's mean output on training-like data.
        from shoestring.evaluate.perturb import explain_masked

        src = d["train_x"] if d["train_x"] is not None and len(d["train_x"]) else x
        rng = np.random.default_rng(cfg.seed)
        bg = (torch.from_numpy(np.asarray(src, dtype=np.float32)) - mean) / std
        bg = bg[rng.permutation(len(bg))[:50]]
        out = []
        for i in range(min(n, len(z))):
            xi, ti = z[i], pred[i : i + 1]

            def value(masks: np.ndarray, xi: torch.Tensor = xi, ti: torch.Tensor = ti) -> np.ndarray:
                m = torch.from_numpy(np.asarray(masks, dtype=np.float32))  # (m, M)
                # Each mask row is averaged over the background rows (interventional SHAP/LIME).
                inp = m[:, None, :] * xi[None, None, :] + (1 - m[:, None, :]) * bg[None, :, :]
                with torch.no_grad():
                    p = forward(inp.reshape(-1, inp.shape[-1]), ti.repeat(inp.shape[0] * inp.shape[1]))
                return p.reshape(len(m), -1).mean(1).double().numpy()

            ex = explain_masked(cfg.explain_method, value, len(clf.features), samples=cfg.shap_samples,
                                seed=cfg.seed, tolerance=cfg.ig_tolerance)
            out.append(ex | {"id": d["ids"][i], "tokens": [f"{f}={float(x[i][j]):g} " for j, f in
                                                           enumerate(clf.features)],
                             "target": clf.classes[int(pred[i])], "output": "probability of the predicted class"})
        return out

    def explain(n: int) -> list[dict[str, Any]]:
        if cfg.explain_method != "ig":
            return explain_perturb(n)
        # Baseline 0 in standardised space = the training mean of every feature.
        k = min(n, len(z))
        res = integrated_gradients(forward, z[:k], torch.zeros_like(z[:k]), steps=cfg.ig_steps,
                                   max_steps=cfg.ig_max_steps, tolerance=cfg.ig_tolerance,
                                   additional_forward_args=(pred[:k],))
        out = []
        attr = res.pop("attributions")
        for i in range(k):
            with torch.no_grad():
                fx = float(forward(z[i : i + 1], pred[i : i + 1]))
                fb = float(forward(torch.zeros_like(z[i : i + 1]), pred[i : i + 1]))
            scores = [float(a) for a in attr[i]]
            out.append(res | {"id": d["ids"][i], "tokens": [f"{f}={float(x[i][j]):g} " for j, f in
                                                           enumerate(clf.features)],
                              "scores": scores, "f_x": fx, "f_baseline": fb, "gap": abs(sum(scores) - (fx - fb)),
                              "target": clf.classes[int(pred[i])],
                              "output": "probability of the predicted class"})
        return out

    def importance() -> dict[str, Any]:
        k = min(len(z), 128)
        res = integrated_gradients(forward, z[:k], torch.zeros_like(z[:k]), steps=cfg.ig_steps,
                                   max_steps=cfg.ig_max_steps, tolerance=cfg.ig_tolerance,
                                   additional_forward_args=(pred[:k],))
        mean_abs = res["attributions"].abs().mean(0)
        order = torch.argsort(mean_abs, descending=True)
        return {"method": "mean |Integrated Gradients| over records", "records": k,
                "relative_gap": res["relative_gap"], "steps": res["steps"],
                "features": [[clf.features[int(j)], float(mean_abs[j])] for j in order[:20]]}

    retrain = None
    if d["train_x"] is not None and d["train_sensitive"] and len(clf.classes) == 2:
        first = next(iter(d["train_sensitive"]))
        retrain = _make_retrain(spec, clf, d["train_x"], d["train_y"], d["train_sensitive"][first], x, cfg.seed)
    return Predictions(
        ids=d["ids"], y=y, proba=proba, classes=list(clf.classes), sensitive=d["sensitive"],
        drift_features={f: [float(v) for v in x[:, j]] for j, f in enumerate(clf.features)},
        explain=explain, importance=importance, retrain=retrain, skipped={"unusable_records": d.get("skipped", 0)},
    )


def _make_retrain(
    spec: str, clf: Any, train_x: np.ndarray, train_y: np.ndarray, train_s: list[str], eval_x: np.ndarray, seed: int
) -> Callable[[bool], np.ndarray]:
    """Refit the same MLP architecture on the training rows, optionally with reweighing."""

    def retrain(reweigh: bool) -> np.ndarray:
        import torch

        from shoestring.evaluate.fairness import reweighing_weights
        from shoestring.train.tabular import build_mlp

        folder = Path(spec) / "model" if (Path(spec) / "model").is_dir() else Path(spec)
        meta = json.loads((folder / "shoestring_model.json").read_text())
        torch.manual_seed(seed)
        net = build_mlp(len(clf.features), meta["hidden_sizes"], len(clf.classes), float(meta.get("dropout", 0.0)))
        xt = (torch.from_numpy(train_x.astype(np.float32)) - torch.from_numpy(clf.mean)) / torch.from_numpy(clf.std)
        yt = torch.from_numpy(train_y.astype(np.int64))
        w = torch.from_numpy(reweighing_weights(train_y, train_s) if reweigh else np.ones(len(yt))).float()
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(30):
            for idx in torch.randperm(len(yt), generator=gen).split(64):
                loss = (torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx], reduction="none") * w[idx]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        xe = (torch.from_numpy(eval_x.astype(np.float32)) - torch.from_numpy(clf.mean)) / torch.from_numpy(clf.std)
        with torch.no_grad():
            return torch.softmax(net(xe), -1).numpy()

    return retrain
