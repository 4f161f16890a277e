"""Dense networks on tabular / vector data for ``shoestring train``.

Task ``tabular-classification``: a plain MLP trained by gradient descent on scikit-learn's
digits (offline) or a curated dataset artifact with numeric feature columns and ``label``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shoestring.core.config import StageConfig

if TYPE_CHECKING:
    from shoestring.core.workspace import StageContext

__all__ = ["TabularOptions", "train_tabular", "load_tabular"]


class TabularOptions(StageConfig):
    """Knobs specific to ``task: tabular-classification`` (common ones live in TrainConfig)."""

    source: Literal["digits", "dataset"] = "dataset"
    """Where rows come from: 'digits' (scikit-learn's bundled 8x8 digits) or 'dataset' (the input artifact)."""
    features: list[str] | None = None
    """Feature column names in the dataset; None uses every numeric column except id/label."""
    label_column: str = "label"
    """Column holding the class label."""
    hidden_sizes: list[int] = [128, 64]
    """Widths of the hidden layers, in units (empty list = logistic regression)."""
    dropout: float = 0.1
    """Dropout probability after each hidden layer (0-1)."""
    standardize: bool = True
    """Scale features to zero mean, unit variance using training-split statistics."""
    validation_fraction: float = 0.15
    """Share of rows held out for validation when the source has no validation split (0-1)."""
    test_fraction: float = 0.15
    """Share of rows held out for test when the source has no test split (0-1)."""


def train_tabular(cfg: Any, ctx: StageContext) -> dict[str, Any]:
    """Train an MLP classifier from ``cfg.tabular``; write ``model/`` and return stats."""
    raise NotImplementedError("tabular-classification training is being implemented")


def load_tabular(artifact_path: str | Path) -> Any:
    """Load a trained tabular classifier (exposes ``.predict_proba(X)``)."""
    raise NotImplementedError("load_tabular is being implemented")
