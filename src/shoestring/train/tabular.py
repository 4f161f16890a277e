"""Dense networks on tabular / vector data for ``shoestring train``.

Task ``tabular-classification``: a plain MLP trained by mini-batch gradient descent on
scikit-learn's digits (offline) or a curated dataset artifact with numeric feature columns
and a label, optionally with DP-SGD (``privacy:``). Writes ``model/model.safetensors`` +
``model/shoestring_model.json`` (architecture, feature names, classes, standardisation),
``metrics.jsonl`` and ``loss.png``. Load with :func:`load_tabular`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from shoestring.core.artifact import atomic_write_json
from shoestring.core.config import StageConfig
from shoestring.core.errors import ShoestringError
from shoestring.core.jsonl import read_jsonl
from shoestring.train.tabular_fit import small_model_folder, small_model_task

if TYPE_CHECKING:
    import numpy as np
    import torch

    from shoestring.core.workspace import StageContext

__all__ = ["TabularClassifier", "TabularOptions", "build_mlp", "digits_data", "load_tabular", "train_tabular"]

MODEL_FORMAT = "shoestring.tabular"
_RESERVED = {"id", "text", "messages"}


class TabularOptions(StageConfig):
    """Knobs specific to ``task: tabular-classification`` (common ones live in TrainConfig)."""

    source: Literal["digits", "dataset"] = "dataset"
    """Where rows come from: 'digits' (scikit-learn's bundled 8x8 digits, 1,797 rows) or 'dataset' (the input artifact)."""
    features: list[str] | None = None
    """Feature column names in the dataset; None uses every numeric column except id and the label."""
    hidden_sizes: list[int] = Field(default_factory=lambda: [128, 64])
    """Widths of the hidden layers, in units (empty list = multinomial logistic regression)."""
    standardize: bool = True
    """Scale features to zero mean, unit variance using training-split statistics."""
    validation_fraction: float = Field(0.15, gt=0, lt=0.5)
    """Share of rows held out for validation when the source has no validation split (0-1)."""
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    """Share of rows held out for test when the source has no test split (0-1)."""


@dataclass
class TabularData:
    """Feature matrices per split, class names and data accounting."""

    features: list[str]
    classes: list[str]
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    read: int = 0
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    source: str = ""


def build_mlp(num_features: int, hidden_sizes: Sequence[int], num_classes: int, dropout: float) -> torch.nn.Sequential:
    """Linear -> ReLU -> Dropout blocks and a linear head (no BatchNorm, so DP-SGD works)."""
    from torch import nn

    layers: list[nn.Module] = []
    width = num_features
    for h in hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _split_indices(labels: np.ndarray, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Stratified train / validation / test indices (fractions are of the whole)."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    strat = labels if np.min(np.bincount(labels)) >= 3 else None
    rest, test = train_test_split(idx, test_size=fractions[1], random_state=seed, stratify=strat)
    strat_rest = labels[rest] if strat is not None else None
    train, val = train_test_split(
        rest, test_size=fractions[0] / (1 - fractions[1]), random_state=seed, stratify=strat_rest
    )
    return train, val, test


def digits_data(opts: TabularOptions, seed: int) -> TabularData:
    """scikit-learn's 8x8 digits with the train/validation/test split ``seed`` gives (the
    built-in data of the tabular task when no dataset is passed)."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data.astype(np.float32), d.target.astype(np.int64)
    tr, va, te = _split_indices(y, (opts.validation_fraction, opts.test_fraction), seed)
    return TabularData(
        features=[f"pixel_{i}" for i in range(x.shape[1])],
        classes=[str(c) for c in range(10)],
        x={"train": x[tr], "validation": x[va], "test": x[te]},
        y={"train": y[tr], "validation": y[va], "test": y[te]},
        read=len(y),
        source="sklearn-digits",
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))


def _load_dataset(folder: Path, opts: TabularOptions, label: str, limit: int | None, seed: int) -> TabularData:
    import numpy as np

    rows: dict[str, list[dict[str, Any]]] = {}
    for split in ("train", "validation", "test"):
        path = folder / f"{split}.jsonl"
        if path.is_file():
            rows[split] = read_jsonl(path, strict=True, fix="re-run the curate stage")
    if not rows.get("train"):
        raise ShoestringError(
            f"{folder}: no train.jsonl rows; pass a curated tabular dataset or tabular.source: digits"
        )
    if limit is not None:
        rows["train"] = rows["train"][:limit]
    first = rows["train"][0]
    if label not in first:
        raise ShoestringError(f"{folder}: rows have no '{label}' column; set label_field to the label column")
    features = opts.features or [k for k, v in first.items() if k not in _RESERVED and k != label and _is_number(v)]
    if not features:
        raise ShoestringError(f"{folder}: no numeric feature columns found; list them in tabular.features")
    data = TabularData(features=features, classes=[], x={}, y={}, source=str(folder))
    reasons: dict[str, int] = {}
    kept: dict[str, tuple[list[list[float]], list[str]]] = {}
    for split, rs in rows.items():
        xs, ys = [], []
        for r in rs:
            data.read += 1
            if r.get(label) is None:
                reasons["missing_label"] = reasons.get("missing_label", 0) + 1
                continue
            vals = [r.get(f) for f in features]
            if not all(_is_number(v) for v in vals):
                reasons["non_numeric_or_missing_feature"] = reasons.get("non_numeric_or_missing_feature", 0) + 1
                continue
            xs.append([float(v) for v in vals])  # type: ignore[arg-type]
            ys.append(str(r[label]))
        kept[split] = (xs, ys)
    data.quarantine_reasons, data.quarantined = reasons, sum(reasons.values())
    data.classes = sorted({c for _, ys in kept.values() for c in ys}, key=lambda c: (len(c), c))
    if len(data.classes) < 2:
        raise ShoestringError(f"{folder}: need at least 2 label values, found {data.classes}")
    cidx = {c: i for i, c in enumerate(data.classes)}
    arrays = {
        s: (
            np.asarray(xs, dtype=np.float32).reshape(-1, len(features)),
            np.asarray([cidx[c] for c in ys], dtype=np.int64),
        )
        for s, (xs, ys) in kept.items()
    }
    if (
        "validation" not in arrays
        or len(arrays["validation"][1]) == 0
        or "test" not in arrays
        or len(arrays["test"][1]) == 0
    ):
        # Curated data without held-out splits: carve them out of train, stratified.
        x, y = arrays["train"]
        tr, va, te = _split_indices(y, (opts.validation_fraction, opts.test_fraction), seed)
        if "validation" not in arrays or len(arrays["validation"][1]) == 0:
            arrays["validation"] = (x[va], y[va])
        if "test" not in arrays or len(arrays["test"][1]) == 0:
            arrays["test"] = (x[te], y[te])
        arrays["train"] = (x[tr], y[tr])
    data.x = {s: a[0] for s, a in arrays.items()}
    data.y = {s: a[1] for s, a in arrays.items()}
    return data


def _classification_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    import torch
    from sklearn.metrics import f1_score

    loss = float(torch.nn.functional.cross_entropy(logits, y))
    pred = logits.argmax(-1)
    return {
        "loss": loss,
        "accuracy": float((pred == y).float().mean()),
        "macro_f1": float(f1_score(y.numpy(), pred.numpy(), average="macro", zero_division=0)),
    }


@small_model_task
def train_tabular(cfg: Any, ctx: StageContext) -> dict[str, Any]:
    """Train an MLP classifier from ``cfg.tabular``; write ``model/`` and return stats."""
    import torch
    from safetensors.torch import save_file
    from torch.utils.data import TensorDataset

    from shoestring.train.tabular_fit import fit, fit_settings, write_loss_png, write_metrics_jsonl

    opts: TabularOptions = cfg.tabular
    if opts.source == "digits":
        data = digits_data(opts, cfg.seed)
    else:
        art = ctx.inputs.get("dataset")
        if art is None:
            raise ShoestringError(
                "tabular-classification needs rows: pass --dataset <curated dataset> or set tabular.source: digits"
            )
        data = _load_dataset(art.path, opts, cfg.label_field, cfg.max_examples, cfg.seed)
    mean = data.x["train"].mean(0) if opts.standardize else 0.0 * data.x["train"][0]
    std = data.x["train"].std(0) if opts.standardize else 0.0 * data.x["train"][0] + 1.0
    std = std + (std < 1e-6)  # constant columns (digits' blank border pixels) stay finite
    t = {s: (torch.from_numpy((x - mean) / std).float(), torch.from_numpy(data.y[s])) for s, x in data.x.items()}
    dropout = cfg.dropout if cfg.dropout is not None else 0.1
    torch.manual_seed(cfg.seed)
    model = build_mlp(len(data.features), opts.hidden_sizes, len(data.classes), dropout)
    if cfg.privacy is not None:
        from shoestring.train.privacy import check_dp_compatible

        model = check_dp_compatible(model, fix=cfg.privacy.fix_incompatible)

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1])

    def validate(m: torch.nn.Module) -> dict[str, float]:
        return _classification_metrics(m(t["validation"][0]), t["validation"][1])

    settings = fit_settings(cfg, lr=1e-3, batch_size=64, patience=8, console=ctx.console, suggested_epochs=40)
    result = fit(
        model,
        TensorDataset(*t["train"]),
        loss_fn,
        validate,
        monitor="loss",
        higher_is_better=False,
        settings=settings,
        work_dir=ctx.work_dir,
        privacy=cfg.privacy,
        console=ctx.console,
    )
    model.eval()
    with torch.no_grad():
        test = _classification_metrics(model(t["test"][0]), t["test"][1])
    out = ctx.out_dir / "model"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    atomic_write_json(
        out / "shoestring_model.json",
        {
            "format": MODEL_FORMAT,
            "version": 1,
            "task": "tabular-classification",
            "architecture": "mlp",
            "hidden_sizes": list(opts.hidden_sizes),
            "dropout": dropout,
            "features": data.features,
            "classes": data.classes,
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "label_field": cfg.label_field,
            "source": data.source,
        },
    )
    write_metrics_jsonl(ctx.out_dir / "metrics.jsonl", result.rows)
    write_loss_png(ctx.out_dir / "loss.png", result.rows, "accuracy", f"MLP on {data.source}")
    ctx.extra_manifest["task"] = "tabular-classification"
    stats: dict[str, Any] = {
        "source": data.source,
        "read": data.read,
        "quarantined": data.quarantined,
        "quarantine_reasons": data.quarantine_reasons,
        "features": len(data.features),
        "classes": len(data.classes),
        "rows": {s: len(y) for s, y in data.y.items()},
        "test": test,
        **result.stats(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_loss_first": next((r["loss"] for r in result.rows if "loss" in r), None),
        "train_loss_last": next((r["loss"] for r in reversed(result.rows) if "loss" in r), None),
    }
    if result.privacy is not None:
        stats["privacy"] = result.privacy
        ctx.extra_manifest["privacy"] = result.privacy
    return stats


class TabularClassifier:
    """A trained MLP with its preprocessing; ``predict_proba`` takes raw feature values."""

    def __init__(self, folder: Path) -> None:
        import numpy as np
        from safetensors.torch import load_file

        meta = json.loads((folder / "shoestring_model.json").read_text())
        if meta.get("format") != MODEL_FORMAT:
            raise ShoestringError(f"{folder} is not a Shoestring tabular model (format {meta.get('format')!r})")
        self.features: list[str] = meta["features"]
        self.classes: list[str] = meta["classes"]
        self.label_field: str = meta.get("label_field", "label")
        self.mean = np.asarray(meta["mean"], dtype=np.float32)
        self.std = np.asarray(meta["std"], dtype=np.float32)
        self.model = build_mlp(len(self.features), meta["hidden_sizes"], len(self.classes), meta["dropout"])
        self.model.load_state_dict(load_file(str(folder / "model.safetensors")))
        self.model.eval()

    def _matrix(self, x: Any) -> np.ndarray:
        import numpy as np

        if isinstance(x, Mapping):
            x = [x]
        if isinstance(x, list) and x and isinstance(x[0], Mapping):
            missing = [f for f in self.features if f not in x[0]]
            if missing:
                raise ShoestringError(
                    f"rows lack feature columns {missing[:5]}; the model needs {len(self.features)} features"
                )
            x = [[float(r[f]) for f in self.features] for r in x]
        arr = np.asarray(x, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.shape[1] != len(self.features):
            raise ShoestringError(f"expected {len(self.features)} features per row, got {arr.shape[1]}")
        return arr

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities ``(n, classes)`` for ``x``: an ``(n, d)`` array or a list of row dicts."""
        import torch

        arr = (self._matrix(x) - self.mean) / self.std
        with torch.no_grad():
            return torch.softmax(self.model(torch.from_numpy(arr).float()), -1).numpy()

    def predict(self, x: Any) -> list[str]:
        """Most likely class name per row."""
        return [self.classes[i] for i in self.predict_proba(x).argmax(-1)]


def load_tabular(artifact_path: str | Path) -> TabularClassifier:
    """Load a trained tabular classifier from a model artifact (or its ``model/`` folder)."""
    return TabularClassifier(small_model_folder(artifact_path, "tabular-classification"))
