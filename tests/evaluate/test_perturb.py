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
    probes = m["probes"]["attributes"]  # the documented default templates and groups
    assert set(probes) == {"gender", "age"} and probes["gender"]["sentences_per_group"] == 48
    assert "Counterfactual template probes" in html


def test_counterfactual_template_probes_on_classifier_and_lm(
    tmp_path: Path, tiny_text_classifier: tuple[Path, Path], tiny_lm: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shoestring.evaluate.probes import probe_classifier, probe_lm

    stage = get_stage("evaluate")
    groups = {"gender": {"male": ["man", "boy"], "female": ["woman", "girl"]}}
    cfg = stage.config.model_validate({"model": "x", "bootstrap": 100, "probe_groups": groups,
                                       "probe_templates": ["The {term} is here.", "A {term} ran."],
                                       "probe_continuations": [" fast", " home"]})

    # A scorer that only reacts to "woman"/"girl": the female probability of class 1 is 0.9.
    def score(texts: list[str]) -> np.ndarray:
        p1 = np.array([0.9 if ("woman" in t or "girl" in t) else 0.2 for t in texts])
        return np.stack([1 - p1, p1], 1)

    res = probe_classifier(score, ["neg", "pos"], cfg)["attributes"]["gender"]
    assert res["sentences_per_group"] == 4 and res["probed_class"] == "pos"
    assert res["by_group"]["female"]["value"] == pytest.approx(0.9)
    pair = res["pairs"][0]
    assert pair["difference"]["value"] == pytest.approx(-0.7) and pair["flip_rate"] == 1.0
    # The LM probe on a real (tiny) model: log-probabilities equal a direct computation.
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    lm = probe_lm(model, tok, cfg)["attributes"]["gender"]
    assert lm["prefixes_per_group"] == 4 and len(lm["gaps"]) == 2
    import torch

    def direct(prefix: str, cont: str) -> float:
        pre = tok(prefix)["input_ids"]
        ids = pre + tok(cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        return sum(float(lp[i - 1, ids[i]]) for i in range(len(pre), len(ids)))

    row = next(r for r in lm["gaps"] if r["continuation"] == " fast")
    male = np.mean([direct(t.replace("{term}", w), " fast") for t in ("The {term} is here.", "A {term} ran.")
                    for w in ("man", "boy")])
    assert row["group_means"]["male"]["value"] == pytest.approx(male, abs=1e-4)
