"""Leak-free, stratified train/validation/test assignment.

Records are assigned by *unit*, never one by one: a unit is a dedup cluster joined with
every other cluster that holds a near-duplicate of one of its documents (a candidate pair
verified at >= threshold that the clustering left in two clusters, see
:mod:`shoestring.data.cluster`). So no exact or verified near-duplicate pair crosses splits,
even when near dedup is switched off (clusters still form, nothing is removed).

Within each stratum, groups are ordered by a seeded SHA-1 of their key and cut at the
requested fractions, which gives exact proportions (not just in expectation) and a result
that does not depend on input order beyond the group keys.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["SPLITS", "assign_splits", "assign_splits_ordered", "leak_units", "split_order"]

SPLITS = ("train", "validation", "test")


def leak_units(n_groups: int, pairs: np.ndarray) -> tuple[np.ndarray, int]:
    """(root per group, joins): groups linked by ``pairs`` (P, 2) form one unit, named by its
    smallest (earliest) group; joins = merges of two different units (n_groups - units)."""
    if n_groups == 0:
        return np.zeros(0, dtype=np.int64), 0
    if len(pairs) == 0:
        return np.arange(n_groups, dtype=np.int64), 0
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n_groups, n_groups))
    n_units, label = connected_components(graph, directed=False)
    root = np.full(n_units, n_groups, dtype=np.int64)
    np.minimum.at(root, label, np.arange(n_groups))
    return root[label], n_groups - n_units


def split_order(seed: int, key: str) -> int:
    """A unit's place in the split order: the first 64 bits of a seeded SHA-1 of its key."""
    return int.from_bytes(hashlib.sha1(f"{seed}\0{key}".encode()).digest()[:8], "big")


def assign_splits(keys: Sequence[str], strata: Sequence[str], validation: float, test: float, seed: int) -> list[int]:
    """Split index (0 train, 1 validation, 2 test) per unit, stratified, exact proportions.

    ``keys``: a stable key per unit (a leak group); ``strata``: its stratum ("" = none).
    """
    order = np.fromiter((split_order(seed, k) for k in keys), dtype=np.uint64, count=len(keys))
    return assign_splits_ordered(order, strata, validation, test).tolist()


def assign_splits_ordered(
    order: np.ndarray, strata: Sequence[str] | None, validation: float, test: float
) -> np.ndarray:
    """(U,) uint8 split per unit from its :func:`split_order` value (ties: unit index).

    Within each stratum the units are sorted by their order and cut at the requested
    fractions (rounded), so the proportions are exact, not just expected.
    """
    out = np.zeros(order.size, dtype=np.uint8)
    if strata is None:
        groups = [np.arange(order.size)]
    else:
        by_stratum: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(strata):
            by_stratum[s].append(i)
        groups = [np.asarray(m, dtype=np.int64) for m in by_stratum.values()]
    for members in groups:
        members = members[np.lexsort((members, order[members]))]
        n = members.size
        n_val = round(n * validation)
        n_test = round(n * test)
        if n_val + n_test > n:
            n_test = max(0, n - n_val)
        out[members[:n_val]] = 1
        out[members[n_val : n_val + n_test]] = 2
    return out
