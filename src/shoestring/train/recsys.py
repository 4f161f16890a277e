"""Sequential recommendation (next-item prediction) for ``shoestring train``.

Task ``sequential-recommendation``: GRU4Rec-style and SASRec-style models trained on
behaviour logs (MovieLens-100k shipped by the recbole wheel, or a curated event dataset
with ``user_id``/``item_id``/``timestamp``), evaluated leave-last-out with full ranking.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shoestring.core.config import StageConfig

if TYPE_CHECKING:
    from shoestring.core.workspace import StageContext

__all__ = ["RecsysOptions", "train_recommender", "load_recommender"]


class RecsysOptions(StageConfig):
    """Knobs specific to ``task: sequential-recommendation`` (common ones live in TrainConfig)."""

    architecture: Literal["sasrec", "gru"] = "sasrec"
    """Sequence encoder: 'sasrec' (causal self-attention) or 'gru' (GRU4Rec-style recurrent)."""
    source: Literal["movielens-100k", "dataset"] = "dataset"
    """Where events come from: 'movielens-100k' (bundled with recbole) or 'dataset' (the input artifact)."""
    max_len: int = 50
    """Longest history fed to the model, in items (older events are cut)."""
    hidden_size: int = 64
    """Item embedding / hidden width, in units."""
    num_layers: int = 2
    """Transformer blocks (sasrec) or stacked GRU layers (gru)."""
    num_heads: int = 1
    """Attention heads per block (sasrec only)."""
    dropout: float = 0.2
    """Dropout probability on embeddings and blocks (0-1)."""
    min_user_events: int = 5
    """Users with fewer events are skipped (they cannot give train/validation/test items)."""
    rating_threshold: float | None = None
    """If set, keep only events whose rating is >= this value (None keeps all interactions)."""
    top_k: int = 10
    """Cut-off K for HR@K and NDCG@K."""


def train_recommender(cfg: Any, ctx: StageContext) -> dict[str, Any]:
    """Train a next-item recommender from ``cfg.recsys``; write ``model/`` and return stats."""
    raise NotImplementedError("sequential-recommendation training is being implemented")


def load_recommender(artifact_path: str | Path) -> Any:
    """Load a trained recommender from a model artifact (or its ``model/`` folder)."""
    raise NotImplementedError("load_recommender is being implemented")
