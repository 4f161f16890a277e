"""Drift reference: the input and prediction distributions of the evaluation data.

``reference.json`` (read by the server to detect drift)::

    {"version": 1,
     "features":    {NAME: {"kind": "numeric", "edges": [...], "proportions": [...]}
                         | {"kind": "categorical", "categories": [...], "proportions": [...]}},
     "predictions": {same shape}}

Numeric edges are bin edges (``len(edges) == len(proportions) + 1``). The outer edges are
the observed minimum and maximum (finite, so every JSON reader parses them); the end bins
are open, i.e. future values below the first edge or above the last fall in the first or
last bin. Inner edges are quantiles of the evaluation data, so each bin holds a similar
share and a population stability index over them is well conditioned. Proportions sum to 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["REFERENCE_VERSION", "build_reference", "categorical_histogram", "numeric_histogram"]

REFERENCE_VERSION = 1


def numeric_histogram(values: Sequence[float] | np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Quantile-binned histogram with open outer bins; ties collapse duplicate edges."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return {"kind": "numeric", "edges": [0.0, 0.0], "proportions": [1.0], "count": 0}
    inner = np.unique(np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1]))
    # Bin i holds values in [edges[i], edges[i+1]); the end bins are open-ended.
    counts = np.bincount(np.searchsorted(inner, v, side="right"), minlength=len(inner) + 1)
    props = counts / counts.sum()
    return {
        "kind": "numeric",
        "edges": [float(v.min()), *[float(e) for e in inner], float(v.max())],
        "proportions": [float(p) for p in props],
        "count": len(v),
        "mean": float(v.mean()),
        "std": float(v.std()),
    }


def categorical_histogram(values: Iterable[Any]) -> dict[str, Any]:
    """Share of each category (as strings), most frequent first."""
    counts = Counter(str(x) for x in values)
    total = sum(counts.values())
    cats = [c for c, _ in counts.most_common()]
    return {
        "kind": "categorical",
        "categories": cats,
        "proportions": [counts[c] / total for c in cats] if total else [],
        "count": total,
    }


def build_reference(
    features: Mapping[str, Sequence[Any]],
    predictions: Mapping[str, Sequence[Any]],
    categorical: Iterable[str] = (),
    n_bins: int = 10,
) -> dict[str, Any]:
    """Histograms of every feature and prediction column; names in ``categorical`` are categorical."""
    cat = set(categorical)

    def one(name: str, vals: Sequence[Any]) -> dict[str, Any]:
        return categorical_histogram(vals) if name in cat else numeric_histogram(vals, n_bins)

    return {
        "version": REFERENCE_VERSION,
        "features": {k: one(k, v) for k, v in features.items()},
        "predictions": {k: one(k, v) for k, v in predictions.items()},
    }
