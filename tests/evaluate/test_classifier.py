"""Tabular classification through the real train stage, then `evaluate` with fairness,
mitigation, feature importance, report and drift reference."""

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


def _biased_rows(n: int, rng: np.random.Generator, start: int) -> list[dict[str, object]]:
    rows = []
    for i in range(n):
        group = "a" if rng.random() < 0.5 else "b"
        f1, f2 = rng.normal(), rng.normal()
        # The label leans on f1 and on the group, so a model trained on f1/f2/proxy is biased.
        proxy = (1.0 if group == "b" else 0.0) + rng.normal(0, 0.3)
        label = int(f1 + 1.2 * (group == "b") + rng.normal(0, 0.5) > 0.6)
        rows.append({"id": f"r{start + i}", "f1": f1, "f2": f2, "proxy": proxy, "group": group, "label": label})
    return rows


@pytest.fixture(scope="module")
def tabular_model(tmp_path_factory: pytest.TempPathFactory, make_artifact: Any) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    data = tmp_path_factory.mktemp("tab-data")
    for split, n in (("train", 600), ("validation", 100), ("test", 300)):
        rows = _biased_rows(n, rng, {"train": 0, "validation": 1000, "test": 2000}[split])
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    make_artifact(data, "dataset")
    train = get_stage("train")
    cfg = train.config.model_validate({"dataset": str(data), "task": "tabular-classification", "epochs": 5,
                                       "lr": 0.01, "tabular": {"hidden_sizes": [16]}, "progress": False})
    ws = Workspace(tmp_path_factory.mktemp("tab-ws"))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 16-unit MLP gains nothing from more threads on a shared machine
    try:
        res = ws.run(train, cfg, {"dataset": Artifact.load(data)})
    finally:
        torch.set_num_threads(threads)
    return res.artifact.path, data


def test_tabular_fairness_mitigation_and_report(tmp_path: Path, tabular_model: tuple[Path, Path]) -> None:
    model, data = tabular_model
    stage = get_stage("evaluate")
    cfg = stage.config.model_validate({"model": str(model), "dataset": str(data), "sensitive": ["group"],
                                       "bootstrap": 200, "explain": 2, "ig_steps": 16, "max_records": 300})
    res = Workspace(tmp_path / "ws").run(stage, cfg, {"model": Artifact.load(model), "dataset": Artifact.load(data)})
    art = res.artifact
    assert art.manifest["task"] == "tabular"
    m = json.loads((art.path / "metrics.json").read_text())
    acc = m["model"]["accuracy"]
    assert m["model"]["records"] == 300 and acc["low"] <= acc["value"] <= acc["high"] and acc["value"] > 0.7
    f = m["fairness"]["group"]
    assert set(f["groups"]) == {"a", "b"}
    sel = [g["selection_rate"] for g in f["groups"].values()]
    assert f["demographic_parity_difference"] == pytest.approx(max(sel) - min(sel))
    rows = {r["method"].split(" ")[0]: r for r in f["mitigation"]["rows"]}
    assert set(rows) == {"none", "threshold", "retrained"} or len(f["mitigation"]["rows"]) == 4
    thr = f["mitigation"]["rows"][1]
    assert thr["demographic_parity_difference"] < f["mitigation"]["rows"][0]["demographic_parity_difference"]
    rew = f["mitigation"]["rows"][3]
    assert rew["method"] == "retrained with reweighing"
    assert rew["demographic_parity_difference"] < f["mitigation"]["rows"][2]["demographic_parity_difference"]
    ex = m["explanations"]["model"][0]
    assert ex["within_tolerance"] and abs(sum(ex["scores"]) - (ex["f_x"] - ex["f_baseline"])) <= ex["tolerance"] * max(
        abs(ex["f_x"] - ex["f_baseline"]), 1e-3) + 1e-6
    names = [n for n, _ in m["feature_importance"]["features"]]
    assert names[0] in ("f1", "proxy") and "f2" in names
    ref = json.loads((art.path / "reference.json").read_text())
    assert ref["predictions"]["label"]["kind"] == "categorical"
    assert math.isclose(sum(ref["predictions"]["confidence"]["proportions"]), 1.0)
    assert set(ref["features"]) == {"f1", "f2", "proxy"}
    html = (art.path / "report.html").read_text()
    assert "Fairness by group" in html and "Mitigation" in html and "data:image/png;base64," in html
