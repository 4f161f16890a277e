"""Recommendation evaluation on MovieLens-100k with models from the real train stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shoestring.core.artifact import Artifact
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace
from shoestring.evaluate.recommend import _gini, age_bucket


def _train(ws: Workspace, architecture: str) -> Path:
    import torch

    stage = get_stage("train")
    cfg = stage.config.model_validate({
        "task": "sequential-recommendation", "epochs": 1, "micro_batch_size": 256, "lr": 0.003, "progress": False,
        "recsys": {"source": "movielens-100k", "architecture": architecture, "hidden_size": 16, "num_layers": 1,
                   "max_len": 20, "baseline": False},
    })
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ws.run(stage, cfg).artifact.path
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_movielens_gru_vs_popularity(tmp_path_factory: pytest.TempPathFactory) -> None:
    ws = Workspace(tmp_path_factory.mktemp("rec-ws"))
    gru, pop = _train(ws, "gru"), _train(ws, "popularity")
    stage = get_stage("evaluate")
    cfg = stage.config.model_validate({"model": str(gru), "compare": str(pop), "max_records": 943, "bootstrap": 200,
                                       "k": [10, 20]})
    res = ws.run(stage, cfg, {"model": Artifact.load(gru), "compare": Artifact.load(pop)})
    m = json.loads((res.artifact.path / "metrics.json").read_text())
    model = m["model"]
    assert res.artifact.manifest["task"] == "recommendation" and model["users"] > 900
    assert 0 < model["hr@10"]["value"] <= model["hr@20"]["value"] <= 1
    assert model["ndcg@10"]["value"] <= model["hr@10"]["value"]
    # The train stage reports test figures with the same leave-last-out protocol, computed by
    # its own code: an independent implementation must agree to rounding.
    for role, art in (("model", gru), ("compare", pop)):
        own = Artifact.load(art).stats["test"]
        for name in ("hr@10", "ndcg@10", "mrr"):
            assert m[role][name]["value"] == pytest.approx(own[name], rel=1e-9), (role, name)
    assert set(m["fairness"]) == {"gender", "age", "occupation"}
    g = m["fairness"]["gender"]["groups"]
    assert set(g) == {"M", "F"} and g["M"]["users"] + g["F"]["users"] == model["users"]
    e = m["exposure"]
    assert 0 < e["catalogue_coverage"] <= 1 and 0 <= e["gini"] <= 1
    assert "ndcg@10" in m["comparison"] and "p_value_permutation" in m["comparison"]["ndcg@10"]
    ref = json.loads((res.artifact.path / "reference.json").read_text())
    assert ref["features"]["history_length"]["kind"] == "numeric"
    assert "Quality and exposure by gender" in (res.artifact.path / "report.html").read_text()


def test_helpers() -> None:
    assert [age_bucket(a) for a in (7, 18, 30, 44, 49, 52, 70, "x")] == [
        "<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+", "x"]
    assert _gini(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    assert _gini(np.array([0, 0, 0, 8])) == pytest.approx(0.75)
