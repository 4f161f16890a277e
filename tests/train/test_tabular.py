"""Tabular MLP: digits end to end, curated tabular datasets, loader, CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lm_helpers import make_ctx
from rich.console import Console

from shoestring.core.errors import ShoestringError
from shoestring.train.config import TrainConfig
from shoestring.train.tabular import load_tabular, train_tabular

pytestmark = pytest.mark.usefixtures("one_thread")


def write_dataset(root: Path, train: list[Any], validation: list[Any] | None = None) -> Path:
    """A dataset artifact folder (curate's contract); string rows are written verbatim."""
    root.mkdir(parents=True, exist_ok=True)
    for name, recs in (("train", train), ("validation", validation or []), ("test", [])):
        (root / f"{name}.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs))
    digest = hashlib.sha256((root / "train.jsonl").read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps({"kind": "dataset", "stage": "curate", "hash": digest, "stats": {}}))
    return root


def digits_cfg(**extra: Any) -> TrainConfig:
    return TrainConfig.model_validate({"task": "tabular-classification", "tabular": {"source": "digits"},
                                       "epochs": 8, "lr": 0.003, "seed": 0, **extra})


def test_digits_mlp_learns_and_loader_predicts(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    ctx = make_ctx(tmp_path)
    stats = train_tabular(digits_cfg(), ctx)
    assert stats["rows"] == {"train": 1257, "validation": 270, "test": 270}
    assert stats["test"]["accuracy"] > 0.9, stats["test"]
    assert stats["train_loss_last"] < stats["train_loss_first"] / 4
    assert (ctx.out_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(r) for r in (ctx.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "val_accuracy" in r] == list(range(1, 9))

    clf = load_tabular(ctx.out_dir)
    d = load_digits()
    proba = clf.predict_proba(d.data[:50])
    assert proba.shape == (50, 10) and np.allclose(proba.sum(1), 1.0, atol=1e-5)
    assert (proba.argmax(1) == d.target[:50]).mean() > 0.9
    as_dicts = [dict(zip(clf.features, row, strict=True)) for row in d.data[:3]]
    assert clf.predict(as_dicts) == [clf.classes[i] for i in proba[:3].argmax(1)]
    with pytest.raises(ShoestringError, match="expected 64 features"):
        clf.predict_proba(np.zeros((1, 5)))


def test_curated_dataset_quarantines_bad_rows_and_carves_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows: list[Any] = []
    for i in range(300):
        x1, x2 = rng.normal(size=2)
        rows.append({"id": str(i), "text": "", "x1": float(x1), "x2": float(x2), "label": "pos" if x1 + x2 > 0 else "neg"})
    rows += [{"id": "bad1", "x1": "n/a", "x2": 1.0, "label": "pos"}, {"id": "bad2", "x1": 1.0, "x2": 2.0}]
    folder = write_dataset(tmp_path / "ds", rows)
    ctx = make_ctx(tmp_path, folder)
    stats = train_tabular(TrainConfig.model_validate({"task": "tabular-classification", "epochs": 15, "lr": 0.01}), ctx)
    assert stats["read"] == 302 and stats["quarantined"] == 2
    assert stats["quarantine_reasons"] == {"non_numeric_or_missing_feature": 1, "missing_label": 1}
    assert stats["features"] == 2 and stats["classes"] == 2
    assert sum(stats["rows"].values()) == 300 and stats["rows"]["test"] == 45
    assert stats["test"]["accuracy"] > 0.9
    clf = load_tabular(ctx.out_dir / "model")
    assert clf.predict([{"x1": 2.0, "x2": 2.0}, {"x1": -2.0, "x2": -2.0}]) == ["pos", "neg"]


def test_clear_errors_for_bad_tabular_input(tmp_path: Path) -> None:
    cfg = TrainConfig.model_validate({"task": "tabular-classification", "epochs": 1})
    with pytest.raises(ShoestringError, match="needs rows"):
        train_tabular(cfg, make_ctx(tmp_path / "a"))
    folder = write_dataset(tmp_path / "nolabel", [{"id": "1", "x": 1.0}])
    with pytest.raises(ShoestringError, match="no 'label' column"):
        train_tabular(cfg, make_ctx(tmp_path / "b", folder))
    folder = write_dataset(tmp_path / "text", [{"id": "1", "text": "hi", "label": "a"}])
    with pytest.raises(ShoestringError, match="no numeric feature columns"):
        train_tabular(cfg, make_ctx(tmp_path / "c", folder))
    with pytest.raises(ShoestringError, match=r"no model/shoestring_model\.json"):
        load_tabular(tmp_path)


def test_shipped_recipes_validate(repo_root: Path) -> None:
    from shoestring.core.recipe import load_recipe

    for name in ("tabular_digits.yaml", "recsys_movielens.yaml", "recsys_logs.yaml"):
        load_recipe(repo_root / "recipes" / name)  # every stage config is validated here


def test_cli_runs_the_shipped_digits_recipe_plus_a_recommender(tmp_path: Path, repo_root: Path) -> None:
    """One subprocess: the shipped recipe's stages (shortened) and a GRU on a curated event log."""
    import yaml

    recipe = yaml.safe_load((repo_root / "recipes" / "tabular_digits.yaml").read_text())
    recipe["stages"]["mlp"]["epochs"] = 3
    recipe["stages"]["mlp_dp"].update(epochs=2)
    recipe["stages"]["mlp_dp"]["privacy"]["accountant"] = "rdp"
    events = []
    for u in range(20):
        events += [{"id": f"{u}-{t}", "text": "", "user": f"u{u}", "path": f"/p{(u + t) % 12}", "time": 1000 + t}
                   for t in range(8)]
    recipe["stages"]["rec"] = {
        "stage": "train", "task": "sequential-recommendation", "dataset": str(write_dataset(tmp_path / "events", events)),
        "epochs": 3, "micro_batch_size": 16, "lr": 0.01,
        "recsys": {"architecture": "gru", "max_len": 8, "hidden_size": 16, "num_layers": 1,
                   "user_field": "user", "item_field": "path", "time_field": "time"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run(
        [sys.executable, "-m", "shoestring.cli", "run", str(path), "--workspace", str(tmp_path / "ws")],
        capture_output=True, text=True, cwd=repo_root, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ws = tmp_path / "ws"
    plain = json.loads((ws / "mlp" / "manifest.json").read_text())
    private = json.loads((ws / "mlp_dp" / "manifest.json").read_text())
    rec = json.loads((ws / "rec" / "manifest.json").read_text())
    assert plain["task"] == "tabular-classification" and plain["stats"]["test"]["accuracy"] > 0.8
    assert "privacy" not in plain and (ws / "mlp" / "loss.png").is_file()
    assert private["privacy"]["mode"] == "target-epsilon" and private["privacy"]["epsilon_spent"] <= 3.0 + 1e-6
    assert rec["task"] == "sequential-recommendation" and rec["stats"]["users"] == 20 and rec["stats"]["items"] == 12


def test_unsupported_common_knobs_are_named() -> None:
    from shoestring.train.tabular_fit import warn_unsupported

    console = Console(record=True, width=200)
    warn_unsupported(TrainConfig(task="tabular-classification", device="cuda", grad_accum=4, epochs=3), console)
    warn_unsupported(TrainConfig(task="tabular-classification", device="cpu", epochs=3), console)
    out = console.export_text()
    assert out.count("ignores") == 1 and "device=cuda" in out and "grad_accum" in out
