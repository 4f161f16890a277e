"""Leak-free, stratified train/validation/test assignment.

Records are assigned by *group*, never one by one: a group is a dedup cluster joined with
every other cluster whose representative is a near-duplicate of it (found by a deliberately
sensitive LSH pass, see :func:`leak_pairs`). So no exact or near-duplicate pair can cross
splits, even when dedup is switched off or LSH banding missed a pair.

Within each stratum, groups are ordered by a seeded SHA-1 of their key and cut at the
requested fractions, which gives exact proportions (not just in expectation) and a result
that does not depend on input order beyond the group keys.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

__all__ = ["SPLITS", "UnionFind", "assign_splits", "leak_pairs"]

SPLITS = ("train", "validation", "test")


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller index (earlier group) stays root so results are order-stable.
            self.parent[max(ra, rb)] = min(ra, rb)


def leak_pairs(signatures: np.ndarray, threshold: float, rows: int = 4) -> list[tuple[int, int]]:
    """Pairs (i < j) of rows of ``signatures`` (n, num_perm) whose estimated Jaccard is >= threshold.

    Uses bands of ``rows`` (4 -> P(candidate | J=0.7) ~ 0.997 at 128 permutations), far more
    sensitive than the dedup LSH, so pairs the dedup banding missed are still found. Each
    pair is reported once.
    """
    if len(signatures) == 0:
        return []
    num_perm = signatures.shape[1]
    found: set[tuple[int, int]] = set()
    checked: set[tuple[int, int]] = set()
    for band in range(num_perm // rows):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i, sig in enumerate(signatures):
            buckets[sig[band * rows : (band + 1) * rows].tobytes()].append(i)
        for members in buckets.values():
            if len(members) < 2:
                continue
            block = signatures[np.asarray(members)]  # (M, P)
            for j in range(1, len(members)):
                sims = (block[:j] == block[j]).mean(axis=1)  # (j,) estimated Jaccard with earlier members
                for k in range(j):
                    pair = (members[k], members[j])
                    if pair in checked:
                        continue
                    checked.add(pair)
                    if sims[k] >= threshold:
                        found.add(pair)
    return sorted(found)


def _order_key(seed: int, key: str) -> bytes:
    return hashlib.sha1(f"{seed}\0{key}".encode()).digest()


def assign_splits(keys: Sequence[str], strata: Sequence[str], validation: float, test: float, seed: int) -> list[int]:
    """Split index (0 train, 1 validation, 2 test) per unit, stratified, exact proportions.

    ``keys``: a stable key per unit (a leak group); ``strata``: its stratum ("" = none).
    """
    by_stratum: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(strata):
        by_stratum[s].append(i)
    out = [0] * len(keys)
    for members in by_stratum.values():
        members.sort(key=lambda i: _order_key(seed, keys[i]))
        n = len(members)
        n_val = round(n * validation)
        n_test = round(n * test)
        if n_val + n_test > n:
            n_test = max(0, n - n_val)
        for rank, i in enumerate(members):
            out[i] = 1 if rank < n_val else 2 if rank < n_val + n_test else 0
    return out
