"""Training: `shoestring train` (SFT, LoRA/QLoRA, causal/masked LM, classification, recsys, tabular)
and the inference helpers the CLI and server share (fill-mask, embeddings, hidden states).

Heavy libraries load lazily: importing this package is cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["embed", "fill_mask", "hidden_states"]


def fill_mask(model: str, text: str, top_k: int = 5) -> list[dict[str, Any]]:
    """Top-k fillers for the mask in ``text``: ``[{token, score, ...}]`` (see :mod:`shoestring.models.inference`)."""
    from shoestring.models.inference import fill_mask as _fill_mask

    return _fill_mask(model, text, top_k)


def embed(model: str, texts: list[str], **kwargs: Any) -> Any:
    """Sentence embeddings as a numpy array of shape (len(texts), hidden) (see :mod:`shoestring.models.inference`)."""
    from shoestring.models.inference import embed as _embed

    return _embed(model, texts, **kwargs)


def hidden_states(model: str, texts: list[str], layer: int = -1) -> list[Any]:
    """Per-token hidden states of one layer for each text (see :mod:`shoestring.models.inference`)."""
    from shoestring.models.inference import hidden_states as _hidden_states

    return _hidden_states(model, texts, layer)
