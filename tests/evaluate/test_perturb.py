"""Kernel SHAP and LIME: exact answers on analytical value functions, then through `evaluate`
on the tabular MLP and a tiny BERT text classifier (additivity reported like IG's completeness)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoestring.core.artifact import Artifact
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace
from shoestring.evaluate.perturb import kernel_shap, lime


def test_shap_and_lime_on_analytical_value_functions() -> None:
    coef = np.array([2.0, -1.0, 0.5, 0.0])

    def linear(m: np.ndarray) -> np.ndarray:
        return np.asarray(m, dtype=float) @ coef + 1.0

    # Linear in the mask: the Shapley value of feature i is exactly coef_i (all-off baseline).
    s = kernel_shap(linear, 4, samples=64, seed=0, tolerance=1e-6)
    assert s["scores"] == pytest.approx(coef.tolist(), abs=1e-6)
    assert s["within_tolerance"] and s["f_x"] - s["f_baseline"] == pytest.approx(1.5)

    # An interaction x0*x1 is split equally between the two players (Shapley symmetry).
    def inter(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=float)
        return 3.0 * m[:, 0] * m[:, 1] + m[:, 2]

    s2 = kernel_shap(inter, 3, samples=64, seed=0, tolerance=1e-6)
    assert s2["scores"] == pytest.approx([1.5, 1.5, 1.0], abs=1e-6)
    li = lime(linear, 4, samples=400, seed=0)
    assert li["local_r2"] > 0.99 and li["scores"] == pytest.approx(coef.tolist(), rel=0.15, abs=0.05)  # ridge (alpha 1) shrinks
    assert li["relative_gap"] is None  # LIME makes no completeness claim


@pytest.fixture(scope="module")
def tiny_text_classifier(tmp_path_factory: pytest.TempPathFactory, make_artifact: Any) -> tuple[Path, Path]:
    from tiny_models import save_tiny_bert

    model = save_tiny_bert(tmp_path_factory.mktemp("bert-cls"), "BertForSequenceClassification", hidden=32,
                           intermediate=64, layers=2, max_positions=64)
    data = tmp_path_factory.mktemp("cls-data")
    texts = ["he is a good doctor", "she wrote a fine book", "the man fixed the car", "my sister likes tea",
             "the weather is nice today", "her father is a teacher"]
    rows = [{"id": str(i), "text": t, "label": i % 2} for i, t in enumerate(texts)]
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model, make_artifact(data, "dataset")


@pytest.mark.parametrize("method", ["shap", "lime"])
def test_text_classifier_perturbation_explanations(
    tmp_path: Path, tiny_text_classifier: tuple[Path, Path], method: str
) -> None:
    model, data = tiny_text_classifier
    stage = get_stage("evaluate")
    cfg = stage.config.model_validate({"model": str(model), "dataset": str(data), "task": "classification",
                                       "bootstrap": 100, "explain": 2, "explain_method": method, "shap_samples": 128})
    res = Workspace(tmp_path / "ws").run(stage, cfg, {"dataset": Artifact.load(data)})
    m = json.loads((res.artifact.path / "metrics.json").read_text())
    exs = m["explanations"]["model"]
    assert len(exs) == 2
    for ex in exs:
        assert ex["method"] == ("kernel-shap" if method == "shap" else "lime")
        assert len(ex["tokens"]) == len(ex["scores"]) == len(ex["tokens"])
        assert "[CLS]" not in ex["tokens"] and "[SEP]" not in ex["tokens"]
        if method == "shap":
            assert ex["within_tolerance"] and ex["gap"] < 1e-4  # additivity holds by construction
        else:
            assert -1.0 <= ex["local_r2"] <= 1.0
    html = (res.artifact.path / "report.html").read_text()
    assert f"Explanations ({method})" in html and "<svg" in html
