"""Sentence embeddings from the packaged all-MiniLM-L6-v2, for semantic dedup and zero-shot labels.

Embeddings are mean-pooled over tokens (attention-masked) and L2-normalised, as the model
was trained, so a dot product is a cosine similarity. Texts are truncated to 256 tokens.
Runs on CPU in the per-record phase; each worker loads the model once (~90 MB).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["EMBED_MODEL", "Embedder", "SemanticIndex"]

EMBED_MODEL = "all-minilm-l6-v2"


class Embedder:
    """Lazy all-MiniLM-L6-v2 encoder: ``encode(texts) -> (N, 384) float32``, unit rows."""

    def __init__(self, model: str = EMBED_MODEL, max_tokens: int = 256, batch_size: int = 32) -> None:
        self.model_name, self.max_tokens, self.batch_size = model, max_tokens, batch_size
        self._model: Any = None
        self._tok: Any = None

    def _load(self) -> None:
        import torch

        from shoestring.models import load_model, load_tokenizer

        torch.set_num_threads(1)  # one thread per worker process: workers already fill the cores
        self._tok = load_tokenizer(self.model_name)
        self._model = load_model(self.model_name, "embedding").eval()

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        if self._model is None:
            self._load()
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self._tok(
                    texts[i : i + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state  # (B, T, H)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32)


class SemanticIndex:
    """Kept records' embeddings; ``query_or_add`` finds one with cosine >= threshold.

    Brute force (a matrix-vector product per record): exact, and fast enough up to about
    10^5 kept records on a CPU; the near-dup MinHash pass has already removed most duplicates.
    """

    def __init__(self, dim: int, threshold: float) -> None:
        self.threshold = threshold
        self.vectors = np.zeros((1024, dim), dtype=np.float32)
        self.owner: list[int] = []
        self.n = 0

    def query(self, vec: np.ndarray) -> tuple[int, float]:
        """(owner of the most similar kept vector, cosine) if >= threshold, else (-1, best cosine)."""
        if self.n == 0:
            return -1, 0.0
        sims = self.vectors[: self.n] @ vec  # (n,)
        i = int(np.argmax(sims))
        best = float(sims[i])
        return (self.owner[i], best) if best >= self.threshold else (-1, best)

    def add(self, vec: np.ndarray, owner: int) -> None:
        if self.n == len(self.vectors):
            self.vectors = np.concatenate([self.vectors, np.zeros_like(self.vectors)])
        self.vectors[self.n] = vec
        self.owner.append(owner)
        self.n += 1
