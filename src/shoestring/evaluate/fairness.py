"""Fairness: metrics by sensitive group (fairlearn's MetricFrame), disparity differences and
ratios, and two mitigations with a before/after table.

* Group metrics (binary tasks): selection rate, TPR, FPR, accuracy and count per group;
  demographic-parity and equalised-odds difference and ratio. Multi-class tasks get
  accuracy per group and its difference and ratio.
* Mitigation (binary tasks): threshold optimisation (fairlearn ``ThresholdOptimizer`` on
  the evaluated model's scores, fitted on one half of the records and measured on the
  other) and reweighing (Kamiran & Calders: weight each (group, label) cell by
  P(group) P(label) / P(group, label) and retrain; the caller supplies the retrain).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

__all__ = ["group_fairness", "mitigate", "reweighing_weights"]


def _clean(x: Any) -> Any:
    """pandas/numpy scalars and NaN to JSON-friendly floats."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return None if np.isnan(v) else v


def group_fairness(
    y_true: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    sensitive: Sequence[Any] | np.ndarray,
    *,
    binary: bool,
) -> dict[str, Any]:
    """Metrics by group with max-min differences and min/max ratios (fairlearn definitions).

    For binary tasks ``y_true``/``y_pred`` are 0/1 with 1 the positive (selected) outcome.
    """
    from fairlearn.metrics import (
        MetricFrame,
        count,
        demographic_parity_difference,
        demographic_parity_ratio,
        equalized_odds_difference,
        equalized_odds_ratio,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from sklearn.metrics import accuracy_score

    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    sf = np.asarray([str(s) for s in sensitive])
    metrics: dict[str, Callable[..., Any]] = {"accuracy": accuracy_score, "count": count}
    if binary:
        metrics = {
            "selection_rate": selection_rate,
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
            **metrics,
        }
    mf = MetricFrame(metrics=metrics, y_true=yt, y_pred=yp, sensitive_features=sf)
    by_group = {
        str(g): {m: _clean(v) for m, v in row.items()} for g, row in mf.by_group.to_dict(orient="index").items()
    }
    out: dict[str, Any] = {
        "groups": by_group,
        "overall": {m: _clean(v) for m, v in mf.overall.to_dict().items()},
        "difference": {m: _clean(v) for m, v in mf.difference().to_dict().items() if m != "count"},
        "ratio": {m: _clean(v) for m, v in mf.ratio().to_dict().items() if m != "count"},
    }
    if binary:
        out["demographic_parity_difference"] = float(demographic_parity_difference(yt, yp, sensitive_features=sf))
        out["demographic_parity_ratio"] = float(demographic_parity_ratio(yt, yp, sensitive_features=sf))
        out["equalized_odds_difference"] = float(equalized_odds_difference(yt, yp, sensitive_features=sf))
        out["equalized_odds_ratio"] = float(equalized_odds_ratio(yt, yp, sensitive_features=sf))
    return out


def reweighing_weights(y: Sequence[Any] | np.ndarray, sensitive: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Kamiran-Calders weights w(g, y) = P(g) P(y) / P(g, y): group and label become
    independent in the weighted data. Weights average 1 over the records."""
    yv = np.asarray([str(v) for v in y])
    sv = np.asarray([str(s) for s in sensitive])
    n = len(yv)
    w = np.ones(n, dtype=np.float64)
    for g in np.unique(sv):
        for lab in np.unique(yv):
            cell = (sv == g) & (yv == lab)
            if cell.any():
                w[cell] = (np.mean(sv == g) * np.mean(yv == lab)) / np.mean(cell)
    return w


class _ScoreLookup(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A fitted 'estimator' whose input is a record index and whose output is the evaluated
    model's stored probabilities, so fairlearn post-processes exactly that model."""

    def __init__(self, proba: np.ndarray) -> None:
        self.proba = np.asarray(proba, dtype=np.float64)  # fairlearn writes into float64 frames
        self.classes_ = np.array([0, 1])

    def fit(self, x: Any, y: Any = None, **kw: Any) -> _ScoreLookup:
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        idx = np.asarray(x, dtype=np.int64).reshape(-1)
        return self.proba[idx]

    def predict(self, x: Any) -> np.ndarray:
        return self.predict_proba(x).argmax(1)


def _row(name: str, y: np.ndarray, pred: np.ndarray, sf: np.ndarray) -> dict[str, Any]:
    g = group_fairness(y, pred, sf, binary=True)
    return {
        "method": name,
        "accuracy": float(np.mean(y == pred)),
        "demographic_parity_difference": g["demographic_parity_difference"],
        "equalized_odds_difference": g["equalized_odds_difference"],
        "selection_rate_by_group": {k: v["selection_rate"] for k, v in g["groups"].items()},
    }


def mitigate(
    y: np.ndarray,
    proba: np.ndarray,
    sensitive: Sequence[Any] | np.ndarray,
    *,
    retrain: Callable[[bool], np.ndarray] | None = None,
    seed: int = 0,
    constraint: str = "demographic_parity",
) -> dict[str, Any]:
    """Before/after table for a binary task.

    ``proba`` (n, 2) are the evaluated model's probabilities on the evaluation records;
    ``retrain(reweigh)`` (optional) refits the model on its training data, with
    :func:`reweighing_weights` when ``reweigh`` is true, and returns probabilities on the
    same evaluation records.
    """
    from fairlearn.postprocessing import ThresholdOptimizer

    yv = np.asarray(y, dtype=np.int64)
    sf = np.asarray([str(s) for s in sensitive])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(yv))
    fit_idx, eval_idx = np.sort(order[: len(yv) // 2]), np.sort(order[len(yv) // 2 :])
    rows = [_row("none (evaluated model)", yv[eval_idx], proba[eval_idx].argmax(1), sf[eval_idx])]
    notes = []
    try:
        to = ThresholdOptimizer(
            estimator=_ScoreLookup(proba), constraints=constraint, prefit=True, predict_method="predict_proba"
        )
        to.fit(fit_idx.reshape(-1, 1), yv[fit_idx], sensitive_features=sf[fit_idx])
        pred = np.asarray(to.predict(eval_idx.reshape(-1, 1), sensitive_features=sf[eval_idx], random_state=seed))
        rows.append(_row(f"threshold optimisation ({constraint})", yv[eval_idx], pred, sf[eval_idx]))
    except (ValueError, KeyError) as err:  # e.g. a group with one label only in the fit half
        notes.append(f"threshold optimisation skipped: {str(err).splitlines()[0]}")
    if retrain is not None:
        base = retrain(False)
        rows.append(_row("retrained, unweighted (reference)", yv[eval_idx], base[eval_idx].argmax(1), sf[eval_idx]))
        rew = retrain(True)
        rows.append(_row("retrained with reweighing", yv[eval_idx], rew[eval_idx].argmax(1), sf[eval_idx]))
    return {
        "rows": rows,
        "eval_records": len(eval_idx),
        "fit_records": len(fit_idx),
        "notes": notes,
        "split": "threshold fitted on a random half of the evaluation records, every row measured on the other half",
    }
