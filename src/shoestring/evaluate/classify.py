"""Classification metrics: accuracy, macro-F1, per-class precision/recall, confusion matrix and
expected calibration error, each headline with a bootstrap interval over records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shoestring.evaluate.stats import bootstrap_ci, expected_calibration_error, paired_comparison

__all__ = ["classification_metrics", "compare_classifiers"]


def _macro_f1(a: np.ndarray, n_classes: int) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(a[:, 0], a[:, 1], labels=list(range(n_classes)), average="macro", zero_division=0))


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """All classification metrics from true class indices and predicted probabilities ``(n, C)``."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    pred = p.argmax(axis=1)
    conf = p.max(axis=1)
    correct = (pred == y).astype(np.float64)
    n_classes = len(classes)
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=list(range(n_classes)), zero_division=0
    )
    both = np.stack([y, pred], axis=1).astype(np.float64)
    ece_rows = np.stack([conf, correct], axis=1)
    kw = {"n_boot": n_boot, "confidence": confidence, "seed": seed}
    return {
        "records": len(y),
        "accuracy": bootstrap_ci(correct, **kw),  # type: ignore[arg-type]
        "macro_f1": bootstrap_ci(both, lambda a: _macro_f1(a, n_classes), **kw),  # type: ignore[arg-type]
        "ece": bootstrap_ci(
            ece_rows, lambda a: expected_calibration_error(a[:, 0], a[:, 1]), **kw  # type: ignore[arg-type]
        ),
        "per_class": {
            c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(n_classes))).tolist(),
        "classes": list(classes),
    }


def compare_classifiers(
    y_true: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray, *, n_boot: int, confidence: float, seed: int
) -> dict[str, Any]:
    """Paired comparison of accuracy (per-record correctness) and log-loss of two classifiers."""
    y = np.asarray(y_true, dtype=np.int64)
    ca = (proba_a.argmax(1) == y).astype(np.float64)
    cb = (proba_b.argmax(1) == y).astype(np.float64)
    eps = 1e-12
    la = -np.log(np.clip(proba_a[np.arange(len(y)), y], eps, 1.0))
    lb = -np.log(np.clip(proba_b[np.arange(len(y)), y], eps, 1.0))
    kw = {"n_boot": n_boot, "confidence": confidence, "seed": seed}
    acc = paired_comparison(ca, cb, **kw)  # type: ignore[arg-type]
    nll = paired_comparison(la, lb, **kw)  # type: ignore[arg-type]
    return {"accuracy_difference": acc, "log_loss_difference": nll}
