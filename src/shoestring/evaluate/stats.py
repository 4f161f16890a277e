"""Statistics for evaluation: bootstrap confidence intervals and paired significance tests.

Every headline metric is reported as ``{"value", "low", "high", "confidence", "n"}``: the
point estimate on the full sample plus a percentile bootstrap interval over records.
Paired comparisons (model A vs model B on the *same* records) resample record indices
jointly, so the interval is on the difference itself, and the p-value comes from a paired
sign-flip permutation test (exact null for "A and B are exchangeable per record") with
the Wilcoxon signed-rank test alongside for readers who expect it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["Interval", "bootstrap_ci", "paired_comparison", "ratio_metric", "expected_calibration_error"]

Interval = dict[str, float]
Statistic = Callable[[np.ndarray], float]


def _as_columns(data: np.ndarray | Sequence[Any]) -> np.ndarray:
    arr = np.asarray(data, dtype=np.float64)
    return arr.reshape(-1, 1) if arr.ndim == 1 else arr


def bootstrap_ci(
    data: np.ndarray | Sequence[Any],
    statistic: Statistic | None = None,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Point estimate and percentile bootstrap interval of ``statistic`` over rows of ``data``.

    ``data`` is one row per record (1-D, or 2-D when the statistic needs several columns,
    e.g. summed loss and token count). ``statistic`` maps a (n, k) array to a float; the
    default is the mean of column 0.
    """
    arr = _as_columns(data)
    stat = statistic or (lambda a: float(a[:, 0].mean()))
    n = len(arr)
    if n == 0:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "confidence": confidence, "n": 0}
    value = float(stat(arr))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = np.array([stat(arr[i]) for i in idx], dtype=np.float64)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(boots, [alpha, 1.0 - alpha])
    return {"value": value, "low": float(low), "high": float(high), "confidence": confidence, "n": n}


def ratio_metric(a: np.ndarray) -> float:
    """Sum of column 0 over sum of column 1: a token-weighted mean (e.g. NLL per token)."""
    den = float(a[:, 1].sum())
    return float(a[:, 0].sum()) / den if den > 0 else float("nan")


def paired_comparison(
    a: np.ndarray | Sequence[float],
    b: np.ndarray | Sequence[float],
    *,
    weights: np.ndarray | Sequence[float] | None = None,
    n_boot: int = 1000,
    n_perm: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare per-record scores of two systems on the same records (``a`` minus ``b``).

    ``weights`` (e.g. token counts) make the compared statistic a weighted mean, matching a
    token-weighted corpus loss; the permutation test flips the sign of each record's
    difference, which is exact under the null that the two systems are exchangeable.
    Returns the difference with its bootstrap interval, both p-values and the win/loss counts.
    """
    from scipy import stats as sps

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired scores must be 1-D arrays of equal length, got {x.shape} and {y.shape}")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    d = x - y
    rows = np.stack([d * w, w], axis=1)
    diff = bootstrap_ci(rows, ratio_metric, n_boot=n_boot, confidence=confidence, seed=seed)
    observed = abs(float((d * w).sum()))
    rng = np.random.default_rng(seed + 1)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, len(d)))
    null = np.abs(signs @ (d * w))
    # +1 in numerator and denominator: the observed labelling is one of the permutations.
    p_perm = float((1 + np.sum(null >= observed - 1e-12)) / (n_perm + 1))
    nonzero = d[np.abs(d) > 1e-12]
    if len(nonzero) >= 1:
        p_wilcoxon = float(sps.wilcoxon(nonzero).pvalue)
    else:
        p_wilcoxon = 1.0
    return {
        "difference": diff,
        "p_value_permutation": p_perm,
        "p_value_wilcoxon": p_wilcoxon,
        "n": len(d),
        "a_better": int(np.sum(d < -1e-12)),
        "b_better": int(np.sum(d > 1e-12)),
        "ties": int(np.sum(np.abs(d) <= 1e-12)),
    }


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE: bin predictions by confidence into equal-width bins, average |accuracy - confidence|
    weighted by the bin's share of predictions (Guo et al., 2017)."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if len(conf) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins so a confidence of exactly 1.0 lands in the last bin
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(hit[mask].mean() - conf[mask].mean())
    return float(ece)
