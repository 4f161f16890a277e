"""Fairness metrics reproduce fairlearn's documented MetricFrame example; mitigation works."""

from __future__ import annotations

import numpy as np
import pytest

from shoestring.evaluate.classify import classification_metrics
from shoestring.evaluate.fairness import group_fairness, mitigate, reweighing_weights
from shoestring.evaluate.stats import bootstrap_ci, expected_calibration_error, paired_comparison

# From fairlearn's user guide, "Performing a Fairness Assessment".
Y_TRUE = [0, 1, 1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1]
Y_PRED = [0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0]
SF = ["b", "b", "a", "b", "b", "c", "c", "c", "a", "a", "c", "a", "b", "c", "c", "b", "c", "c"]


def test_metricframe_documented_example() -> None:
    g = group_fairness(Y_TRUE, Y_PRED, SF, binary=True)
    assert g["overall"]["tpr"] == pytest.approx(0.5)
    assert g["overall"]["fpr"] == pytest.approx(0.666667, abs=1e-6)
    assert g["overall"]["selection_rate"] == pytest.approx(0.555556, abs=1e-6)
    doc = {"a": (0.5, 1.0, 0.75, 4), "b": (0.6, 0.0, 0.5, 6), "c": (0.4, 0.666667, 0.5, 8)}
    for grp, (tpr, fpr, sel, n) in doc.items():
        row = g["groups"][grp]
        assert (row["tpr"], row["fpr"], row["selection_rate"], row["count"]) == pytest.approx((tpr, fpr, sel, n), abs=1e-6)
    assert g["difference"]["tpr"] == pytest.approx(0.2) and g["difference"]["fpr"] == pytest.approx(1.0)
    assert g["difference"]["selection_rate"] == pytest.approx(0.25)
    assert g["ratio"]["tpr"] == pytest.approx(0.666667, abs=1e-6) and g["ratio"]["fpr"] == 0.0
    assert g["ratio"]["selection_rate"] == pytest.approx(0.666667, abs=1e-6)
    # Demographic parity = selection-rate spread; equalised odds = worse of the TPR and FPR spreads.
    assert g["demographic_parity_difference"] == pytest.approx(0.25)
    assert g["equalized_odds_difference"] == pytest.approx(1.0)


def test_reweighing_makes_group_and_label_independent() -> None:
    y = np.array([1] * 30 + [0] * 10 + [1] * 10 + [0] * 30)
    s = np.array(["m"] * 40 + ["f"] * 40)
    w = reweighing_weights(y, s)
    assert w.mean() == pytest.approx(1.0)
    for g in ("m", "f"):
        rate = np.sum(w[(s == g) & (y == 1)]) / np.sum(w[s == g])
        assert rate == pytest.approx(0.5)


def test_threshold_optimisation_reduces_disparity() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    s = rng.choice(["x", "y"], size=n)
    y = rng.integers(0, 2, size=n)
    # A biased scorer: group y gets its scores pushed up, so it is selected far more often.
    score = np.clip(0.35 * y + 0.3 * (s == "y") + rng.normal(0.2, 0.15, size=n), 0, 1)
    proba = np.stack([1 - score, score], axis=1)
    out = mitigate(y, proba, s, seed=0)
    before, after = out["rows"][0], out["rows"][1]
    assert before["demographic_parity_difference"] > 0.2
    assert after["demographic_parity_difference"] < before["demographic_parity_difference"] / 3


def test_classification_metrics_and_stats() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=300)
    logits = rng.normal(size=(300, 3)) + 2.0 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(y, proba, ["a", "b", "c"], n_boot=200)
    pred = proba.argmax(1)
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["accuracy"]["low"] < m["accuracy"]["value"] < m["accuracy"]["high"]
    assert sum(map(sum, m["confusion_matrix"])) == 300
    # ECE of a perfectly calibrated toy: confidence 0.8 and 80% correct in one bin -> 0.
    assert expected_calibration_error(np.full(10, 0.8), np.array([1] * 8 + [0] * 2)) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(4, 0.9), np.array([1, 0, 0, 0])) == pytest.approx(0.65)
    ci = bootstrap_ci(np.arange(100.0), n_boot=500)
    assert ci["value"] == pytest.approx(49.5) and 43 < ci["low"] < 49.5 < ci["high"] < 56
    same = paired_comparison(np.ones(20), np.ones(20))
    assert same["p_value_permutation"] == 1.0 and same["ties"] == 20
