"""Exact and near-duplicate detection: hashing, MinHash signatures, the LSH candidate index.

* Exact: SHA-1 of the case-folded, whitespace-collapsed text.
* Near: MinHash over word n-gram shingles and LSH banding for *candidates*; the decision
  (verification against exact Jaccard in an uncertainty band, representative choice) is in
  :mod:`shoestring.data.cluster`.

Verification band: the MinHash estimate of Jaccard J from P permutations is a mean of P
Bernoulli(J) draws, so its standard error is ``sqrt(J (1 - J) / P)`` (0.0354 at J = 0.8,
P = 128). An estimate within ``z`` standard errors of the threshold (z = 3 by default:
[0.694, 0.906] at 0.8 / 128) cannot be trusted either way and is replaced by the exact
Jaccard of the two shingle sets; outside the band the estimate decides (a wrong call there
needs a 3-sigma error: P < 0.0014 per pair). The LSH banding is tuned to the band's *lower*
edge so that candidates down to it surface (P(candidate | J = 0.694) = 0.988 at 25 x 5).

Hashing is deterministic across processes and machines: words are hashed with two seeded
CRC-32s (64 bits), shingles combine word hashes with a fixed
polynomial, and permutations are seeded from ``numpy.random.default_rng(seed)``. Python's
randomised ``hash()`` is never used.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib

import numpy as np

__all__ = [
    "LSHIndex",
    "MinHasher",
    "estimated_jaccard",
    "exact_jaccard",
    "exact_key",
    "lsh_params",
    "shingle_hashes",
    "verification_band",
    "words",
]

_WORD = re.compile(r"\w+", re.UNICODE)
_BLOCK = 256


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore)."""
    return _WORD.findall(text.lower())


def exact_key(text: str) -> str:
    """Key for exact dedup: SHA-1 of case-folded text with whitespace collapsed."""
    return hashlib.sha1(" ".join(text.casefold().split()).encode("utf-8")).hexdigest()


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, vectorised: spreads shingle hashes over all 64 bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_hashes(text: str, n: int = 5) -> np.ndarray:
    """64-bit hashes of the distinct word n-grams of ``text`` (a text shorter than n words is one shingle)."""
    toks = words(text)
    if not toks:
        return np.zeros(0, dtype=np.uint64)
    # Hash each distinct word once (two CRC-32s with different seeds = 64 bits), then gather.
    vocab: dict[str, int] = {}
    ids = [vocab.setdefault(w, len(vocab)) for w in toks]
    hv = np.fromiter(
        ((zlib.crc32(b := w.encode()) << 32) | zlib.crc32(b, 0x9E3779B9) for w in vocab),
        dtype=np.uint64,
        count=len(vocab),
    )
    wh = hv[np.asarray(ids, dtype=np.intp)]
    k = min(n, len(toks))
    m = len(toks) - k + 1
    with np.errstate(over="ignore"):
        acc = wh[:m].copy()
        for j in range(1, k):  # polynomial combination of k consecutive word hashes, mod 2^64
            acc *= np.uint64(0x100000001B3)
            acc += wh[j : j + m]
        return np.unique(_mix64(acc))


class MinHasher:
    """Vectorised MinHash: ``num_perm`` multiply-shift hash functions over 64-bit shingle hashes."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm, self.ngram = num_perm, ngram
        # Odd multipliers make x -> a*x + b a bijection mod 2^64; the top 32 bits are the hash.
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray:
        """(num_perm,) uint32 signature; an empty text gets all-max values."""
        return self.signature_of(shingle_hashes(text, self.ngram))

    def signature_of(self, sh: np.ndarray) -> np.ndarray:
        """(num_perm,) uint32 signature of a set of 64-bit shingle hashes (from :func:`shingle_hashes`)."""
        if sh.size == 0:
            return np.full(self.num_perm, 0xFFFFFFFF, dtype=np.uint32)
        out = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        buf = np.empty((min(sh.size, _BLOCK), self.num_perm), dtype=np.uint64)
        with np.errstate(over="ignore"):
            # (S, 1) * (1, P) -> (S, P) in blocks of 256 shingles: the block stays in L2 cache
            # (256 x 128 x 8 B = 256 KiB), which measured ~2x faster than one big product.
            for start in range(0, sh.size, _BLOCK):
                blk = sh[start : start + _BLOCK]
                b = buf[: blk.size]
                np.multiply(blk[:, None], self.a[None, :], out=b)
                b += self.b
                np.minimum(out, b.min(axis=0), out=out)
        return (out >> np.uint64(32)).astype(np.uint32)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal signature entries: an unbiased estimate of Jaccard similarity."""
    return float(np.count_nonzero(a == b)) / a.size


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted, duplicate-free shingle-hash arrays (two empty sets: 1.0)."""
    inter = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - inter
    return inter / union if union else 1.0


def verification_band(threshold: float, num_perm: int, z: float = 3.0) -> tuple[float, float]:
    """(low, high): estimates in [low, high) are checked against the exact Jaccard.

    Half-width = ``z`` standard errors of the MinHash estimate at the threshold,
    ``sqrt(t (1 - t) / num_perm)``; clipped to [0, 1].
    """
    half = z * math.sqrt(threshold * (1 - threshold) / num_perm)
    return max(0.0, threshold - half), min(1.0, threshold + half)


def lsh_params(threshold: float, num_perm: int, fn_weight: float = 0.98) -> tuple[int, int]:
    """(bands, rows) minimising weighted false-positive + false-negative area around ``threshold``.

    False negatives weigh more because verification removes false positives afterwards.
    Called with the verification band's lower edge, so candidates surface down to it.
    """
    xs = np.linspace(0, 1, 201)
    best, best_cost = (1, num_perm), float("inf")
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if bands < 1:
            continue
        p = 1 - (1 - xs**rows) ** bands
        fp = np.trapezoid(np.where(xs < threshold, p, 0), xs)
        fn = np.trapezoid(np.where(xs >= threshold, 1 - p, 0), xs)
        cost = (1 - fn_weight) * fp + fn_weight * fn
        if cost < best_cost:
            best, best_cost = (bands, rows), float(cost)
    return best


class LSHIndex:
    """Signatures in LSH buckets: ``candidates`` lists indexed documents sharing a band.

    Memory grows with the number of indexed documents only: per document, its signature
    (4 bytes x num_perm, in one growing array) and one int -> int bucket entry per band
    (a band's rows are folded into one 64-bit key; a list only where keys collide).
    """

    def __init__(self, num_perm: int, low: float) -> None:
        self.bands, self.rows = lsh_params(low, num_perm)
        self.buckets: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        self._sigs = np.zeros((1024, num_perm), dtype=np.uint32)
        self.n = 0
        self._pow = np.uint64(0x100000001B3) ** np.arange(self.rows, dtype=np.uint64)

    @property
    def signatures(self) -> np.ndarray:
        """(n, num_perm) signatures of the indexed documents, in the order they were added."""
        return self._sigs[: self.n]

    def signature(self, idx: int) -> np.ndarray:
        return self._sigs[idx]

    def keys(self, sig: np.ndarray) -> list[int]:
        """One 64-bit key per band."""
        bands = sig[: self.bands * self.rows].reshape(self.bands, self.rows).astype(np.uint64)  # (B, R)
        with np.errstate(over="ignore"):
            return [int(k) for k in (bands * self._pow).sum(axis=1, dtype=np.uint64)]  # (B,) keys mod 2^64

    def candidates(self, keys: list[int]) -> list[int]:
        """Indexed documents sharing at least one band key, each once, in index order."""
        seen: set[int] = set()
        for band, key in enumerate(keys):
            hit = self.buckets[band].get(key)
            if hit is None:
                continue
            if isinstance(hit, int):
                seen.add(hit)
            else:
                seen.update(hit)
        return sorted(seen)

    def add(self, sig: np.ndarray, keys: list[int]) -> int:
        """Index a signature (with its precomputed band keys); returns its index."""
        idx = self.n
        if idx == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.zeros_like(self._sigs)])
        self._sigs[idx] = sig
        self.n += 1
        for band, key in enumerate(keys):
            bucket = self.buckets[band]
            hit = bucket.get(key)
            if hit is None:
                bucket[key] = idx
            elif isinstance(hit, int):
                bucket[key] = [hit, idx]
            else:
                hit.append(idx)
        return idx
