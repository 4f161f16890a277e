"""Metrics on sentence embeddings (numpy only; the model side is in :mod:`.embedding`).

Labelled records (held-out queries ``q`` against a labelled reference set ``r``, usually the
train split; cosine similarity on L2-normalised vectors):

* **kNN classification**: the majority label of the ``k`` most similar reference records
  (ties broken by summed similarity), probabilities = vote shares; accuracy, macro-F1, ECE.
* **nearest centroid**: the label whose mean reference embedding is most similar.
* **retrieval**: rank the reference records by similarity; ``precision@k`` = share of the
  top k with the query's label, ``MRR`` = 1 / rank of the first reference with that label.

When the reference set is the query set itself (no labelled train split) the query is
excluded from its own neighbours (leave-one-out).

Unlabelled text (Wang & Isola, 2020, "Understanding contrastive representation learning
through alignment and uniformity on the hypersphere"):

* **alignment** = mean ||f(x) - f(x')||^2 over positive pairs; here x' is x with a seeded
  10% of its words dropped (lower is better: the embedding is stable under small edits);
* **uniformity** = log mean_{i != j} exp(-2 ||f(x_i) - f(x_j)||^2) (lower is better: the
  embeddings spread over the sphere);
* **mean pairwise cosine** (anisotropy; near 1 = every text points the same way) and
  **effective rank** = exp(entropy of the normalised singular values) of the centred
  embedding matrix (how many directions the data uses).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shoestring.evaluate.stats import bootstrap_ci

__all__ = [
    "centroid_predict",
    "effective_rank",
    "knn_predict",
    "l2_normalise",
    "retrieval_scores",
    "uniformity",
    "word_dropout",
]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _similarities(q: np.ndarray, r: np.ndarray, leave_one_out: bool) -> np.ndarray:
    sim = l2_normalise(q) @ l2_normalise(r).T
    if leave_one_out:
        np.fill_diagonal(sim, -np.inf)
    return sim


def knn_predict(
    q: np.ndarray, r: np.ndarray, r_labels: np.ndarray, n_classes: int, k: int, *, leave_one_out: bool = False
) -> np.ndarray:
    """Vote shares (n_q, n_classes) of the ``k`` nearest reference records; a tiny
    similarity-weighted term breaks ties between equal vote counts."""
    sim = _similarities(q, r, leave_one_out)
    k = min(k, r.shape[0] - (1 if leave_one_out else 0))
    top = np.argsort(-sim, axis=1)[:, :k]
    votes = np.zeros((len(q), n_classes))
    for i in range(len(q)):
        for j in top[i]:
            votes[i, r_labels[j]] += 1.0 + 1e-6 * sim[i, j]
    return votes / votes.sum(1, keepdims=True)


def centroid_predict(q: np.ndarray, r: np.ndarray, r_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Softmax over cosine similarity to each class centroid (temperature 0.05, as in
    contrastive training); classes absent from the reference get probability 0."""
    rn = l2_normalise(r)
    cents = np.zeros((n_classes, r.shape[1]))
    present = np.zeros(n_classes, dtype=bool)
    for c in range(n_classes):
        sel = r_labels == c
        if sel.any():
            cents[c] = rn[sel].mean(0)
            present[c] = True
    sim = l2_normalise(q) @ l2_normalise(cents).T
    sim[:, ~present] = -np.inf
    z = (sim - sim.max(1, keepdims=True)) / 0.05
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def retrieval_scores(
    q: np.ndarray, q_labels: np.ndarray, r: np.ndarray, r_labels: np.ndarray, k: int, *, leave_one_out: bool = False
) -> dict[str, np.ndarray]:
    """Per query: ``precision_at_k`` and ``reciprocal_rank`` (0 if no reference shares its label)."""
    sim = _similarities(q, r, leave_one_out)
    order = np.argsort(-sim, axis=1)
    if leave_one_out:
        order = order[:, :-1]  # the query itself sorts last (-inf)
    same = r_labels[order] == q_labels[:, None]
    kk = min(k, same.shape[1])
    prec = same[:, :kk].mean(1)
    first = np.where(same.any(1), same.argmax(1) + 1, 0)
    rr = np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)
    return {"precision_at_k": prec.astype(np.float64), "reciprocal_rank": rr.astype(np.float64)}


def _pair_kernel(x: np.ndarray) -> np.ndarray:
    xn = l2_normalise(x)
    sq = np.clip(2.0 - 2.0 * (xn @ xn.T), 0.0, None)  # squared distance of unit vectors
    return np.exp(-2.0 * sq)


def uniformity(x: np.ndarray, *, n_boot: int, confidence: float, seed: int) -> dict[str, Any]:
    """Uniformity with a bootstrap interval (resampling records; self-pairs excluded)."""
    kern = _pair_kernel(x)

    def stat(a: np.ndarray) -> float:
        idx = a[:, 0].astype(np.int64)
        sub = kern[np.ix_(idx, idx)]
        off = idx[:, None] != idx[None, :]
        return float(np.log(sub[off].mean())) if off.any() else float("nan")

    return bootstrap_ci(np.arange(len(x), dtype=np.float64), stat, n_boot=n_boot, confidence=confidence, seed=seed)


def mean_pairwise_cosine(x: np.ndarray) -> float:
    """Mean cosine similarity over distinct pairs (anisotropy)."""
    xn = l2_normalise(x)
    sim = xn @ xn.T
    n = len(x)
    return float((sim.sum() - np.trace(sim)) / max(n * (n - 1), 1))


def effective_rank(x: np.ndarray) -> float:
    """exp(Shannon entropy of the normalised singular values) of the centred matrix
    (Roy & Vetterli, 2007): between 1 and min(n, dim)."""
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = s / max(float(s.sum()), 1e-12)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def word_dropout(text: str, rate: float, seed: int) -> str:
    """The text with a seeded ``rate`` of its words removed (at least one word kept)."""
    words = text.split()
    if len(words) < 2:
        return text
    rng = np.random.default_rng(seed)
    keep = rng.random(len(words)) >= rate
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return " ".join(w for w, k in zip(words, keep, strict=True) if k)
