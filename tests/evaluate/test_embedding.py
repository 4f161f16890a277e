"""Embedding evaluation: the metrics on vectors with known answers, then `evaluate --task
embedding` on a tiny BERT (labelled and unlabelled records, paired comparison, drift reference)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shoestring.core.artifact import Artifact
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace
from shoestring.evaluate import embedding_metrics as em


def test_knn_centroid_and_retrieval_on_known_vectors() -> None:
    # Two tight clusters on the x and y axes; query 2 sits in cluster 0 but is labelled 1.
    r = np.array([[1, 0.1], [1, -0.1], [0.9, 0], [0.1, 1], [-0.1, 1], [0, 0.9]], dtype=float)
    ry = np.array([0, 0, 0, 1, 1, 1])
    q = np.array([[1, 0.05], [0.05, 1], [1, 0]], dtype=float)
    qy = np.array([0, 1, 1])
    proba = em.knn_predict(q, r, ry, 2, k=3)
    assert proba.argmax(1).tolist() == [0, 1, 0] and proba[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-5)
    assert em.centroid_predict(q, r, ry, 2).argmax(1).tolist() == [0, 1, 0]
    sc = em.retrieval_scores(q, qy, r, ry, k=3)
    assert sc["precision_at_k"].tolist() == [1.0, 1.0, 0.0]
    assert sc["reciprocal_rank"].tolist() == [1.0, 1.0, 0.25]  # first label-1 vector is 4th nearest
    # Leave-one-out: a point is never its own neighbour.
    loo = em.knn_predict(r, r, ry, 2, k=1, leave_one_out=True)
    assert loo.argmax(1).tolist() == ry.tolist()
    rr = em.retrieval_scores(r, ry, r, ry, k=2, leave_one_out=True)
    assert rr["precision_at_k"].tolist() == [1.0] * 6


def test_intrinsic_geometry_closed_forms() -> None:
    # Two antipodal unit vectors: squared distance 4, so uniformity = log(exp(-8)) = -8;
    # identical vectors: uniformity 0 (the worst), mean cosine 1, effective rank ~1.
    anti = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert em.uniformity(anti, n_boot=100, confidence=0.9, seed=0)["value"] == pytest.approx(-8.0)
    same = np.ones((5, 3))
    assert em.uniformity(same, n_boot=100, confidence=0.9, seed=0)["value"] == pytest.approx(0.0, abs=1e-9)
    assert em.mean_pairwise_cosine(same) == pytest.approx(1.0)
    iso = np.eye(4)
    assert em.mean_pairwise_cosine(iso) == pytest.approx(0.0)
    # The centred 4 basis vectors span 3 directions with equal singular values: rank exp(log 3) = 3.
    assert em.effective_rank(iso) == pytest.approx(3.0, rel=1e-6)
    assert em.word_dropout("one", 0.5, 0) == "one"
    dropped = em.word_dropout("a b c d e f g h i j k l m n o p q r s t", 0.5, 1)
    assert 0 < len(dropped.split()) < 20


FRUIT = ["apple", "banana", "cherry", "grape", "mango", "pear", "plum", "peach", "lemon", "melon"]
CARS = ["engine", "wheel", "brake", "gearbox", "piston", "clutch", "tyre", "exhaust", "bumper", "axle"]


def _texts(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    return [" ".join(rng.choice(words, size=6)) for _ in range(n)]


@pytest.fixture(scope="module")
def topic_data(tmp_path_factory: pytest.TempPathFactory, make_artifact: Any) -> Path:
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("emb-data")
    for split, n in (("train", 30), ("test", 20)):
        rows = []
        for label, words in (("fruit", FRUIT), ("cars", CARS)):
            rows += [{"id": f"{split}-{label}-{i}", "text": t, "label": label} for i, t in enumerate(_texts(words, n, rng))]
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return make_artifact(out, "dataset")


@pytest.fixture(scope="module")
def tiny_berts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch

    from tiny_models import save_tiny_bert

    a = save_tiny_bert(tmp_path_factory.mktemp("bert-a"), "BertModel", hidden=32, intermediate=64, layers=2,
                       max_positions=64)
    torch.manual_seed(1)
    b = tmp_path_factory.mktemp("bert-b")
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(a)
    with torch.no_grad():  # a perturbed copy: close to the original, but not equal
        for p in model.parameters():
            p.add_(0.003 * torch.randn_like(p))
    model.save_pretrained(b)
    AutoTokenizer.from_pretrained(a).save_pretrained(b)
    return a, b


def _run(tmp: Path, data: Path, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], Path]:
    stage = get_stage("evaluate")
    c = stage.config.model_validate({"dataset": str(data), "task": "embedding", "bootstrap": 200, **cfg})
    res = Workspace(tmp / "ws").run(stage, c, {"dataset": Artifact.load(data)})
    p = res.artifact.path
    return json.loads((p / "metrics.json").read_text()), json.loads((p / "reference.json").read_text()), p


def test_labelled_embedding_eval_with_comparison(tmp_path: Path, topic_data: Path, tiny_berts: tuple[Path, Path]) -> None:
    a, b = tiny_berts
    m, ref, path = _run(tmp_path, topic_data, {"model": str(a), "compare": str(b), "k": [5]})
    main = m["model"]
    assert m["labelled"] and m["classes"] == ["cars", "fruit"] and main["records"] == 40
    assert main["reference"].startswith("split 'train' (60")
    # Disjoint vocabularies: even a random BERT's mean-pooled vectors separate the topics.
    for block in (main["knn"]["accuracy"], main["centroid"]["accuracy"], main["retrieval"]["mrr"]):
        assert block["value"] > 0.8 and block["low"] <= block["value"] <= block["high"]
    assert main["knn"]["confusion_matrix"][0][0] + main["knn"]["confusion_matrix"][1][1] == round(
        main["knn"]["accuracy"]["value"] * 40)
    intr = main["intrinsic"]
    assert 0 <= intr["alignment"]["value"] <= 4 and intr["uniformity"]["value"] < 0
    assert 1 <= intr["effective_rank"] <= 32
    comp = m["comparison"]
    cos = comp["cosine_similarity"]
    assert 0.5 < cos["value"] < 1.0 and cos["min"] <= cos["value"] and len(cos["per_record"]) == 40
    assert 0 <= comp["neighbour_overlap@5"]["value"] <= 1
    d = comp["knn_accuracy_difference"]
    assert d["difference"]["value"] == pytest.approx(main["knn"]["accuracy"]["value"] -
                                                     m["compare"]["knn"]["accuracy"]["value"])
    assert ref["embedding"]["dim"] == 32 and len(ref["embedding"]["components"]) == 3
    assert set(ref["predictions"]) == {"embedding_norm", "centroid_cosine", "pc1", "pc2", "pc3", "knn_label"}
    assert math.isclose(sum(ref["predictions"]["pc1"]["proportions"]), 1.0)
    html = (path / "report.html").read_text()
    assert "Classification and retrieval" in html and "Paired comparison" in html and "data:image/png" in html


def test_same_model_compare_is_identical_and_unlabelled_path(
    tmp_path: Path, topic_data: Path, tiny_berts: tuple[Path, Path], make_artifact: Any
) -> None:
    a, _ = tiny_berts
    m, _, _ = _run(tmp_path / "same", topic_data, {"model": str(a), "compare": str(a), "k": [3]})
    comp = m["comparison"]
    assert comp["cosine_similarity"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert comp["neighbour_overlap@3"]["value"] == pytest.approx(1.0)
    assert comp["knn_accuracy_difference"]["difference"]["value"] == 0 and comp["knn_label_agreement"] == 1.0
    # No labels and no train split: intrinsic metrics only.
    plain = tmp_path / "plain"
    plain.mkdir()
    rows = [{"id": str(i), "text": t} for i, t in enumerate(_texts(FRUIT + CARS, 12, np.random.default_rng(3)))]
    (plain / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    make_artifact(plain, "dataset")
    m2, ref2, _ = _run(tmp_path / "plain-ws", plain, {"model": str(a)})
    assert not m2["labelled"] and "knn" not in m2["model"] and m2["model"]["records"] == 12
    assert m2["model"]["intrinsic"]["uniformity"]["value"] < 0
    assert "knn_label" not in ref2["predictions"]
