"""Partitions: sizes, determinism, label skew that follows alpha, one client per column value."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from shoestring.core.errors import ShoestringError
from shoestring.federate.partition import partition_units


def _labels(n: int, k: int) -> list[str]:
    return [f"l{i % k}" for i in range(n)]


def _mean_entropy(part, labels: list[str]) -> float:  # type: ignore[no-untyped-def]
    """Mean over clients of the entropy (bits) of each client's label mix."""
    out = []
    for c in range(len(part.clients)):
        counts = Counter(labels[i] for i in part.members(c))
        total = sum(counts.values())
        out.append(-sum(v / total * math.log2(v / total) for v in counts.values()))
    return sum(out) / len(out)


def test_iid_deals_units_evenly_and_is_seeded() -> None:
    a = partition_units(103, "iid", 10, seed=3)
    b = partition_units(103, "iid", 10, seed=3)
    assert a.assignment == b.assignment
    sizes = sorted(len(a.members(c)) for c in range(10))
    assert sizes[0] == 10 and sizes[-1] == 11
    assert partition_units(103, "iid", 10, seed=4).assignment != a.assignment


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    labels = _labels(2000, 10)
    skewed = partition_units(2000, "dirichlet", 10, labels=labels, alpha=0.1, min_units=5, seed=0)
    near_iid = partition_units(2000, "dirichlet", 10, labels=labels, alpha=100.0, min_units=5, seed=0)
    assert min(len(skewed.members(c)) for c in range(10)) >= 5
    # log2(10) = 3.32 bits is a perfectly mixed client; alpha 0.1 leaves clients with few labels.
    assert _mean_entropy(near_iid, labels) > 3.2
    assert _mean_entropy(skewed, labels) < 2.0
    counts = skewed.counts(labels, [2] * 2000)
    assert sum(r["units"] for r in counts) == 2000 and sum(r["records"] for r in counts) == 4000
    assert set(counts[0]) == {"client", "partition_id", "units", "records", "labels"}


def test_column_makes_one_client_per_value() -> None:
    part = partition_units(6, "column", 99, column_values=["kb", "faq", "kb", "tickets", "faq", "kb"])
    assert part.clients == ["faq", "kb", "tickets"]
    assert part.members(1) == [0, 2, 5]


def test_partition_errors_are_one_line() -> None:
    with pytest.raises(ShoestringError, match="cannot give 10 clients"):
        partition_units(5, "iid", 10)
    with pytest.raises(ShoestringError, match="distinct value"):
        partition_units(3, "column", 2, column_values=["a", "a", "a"])
    with pytest.raises(ShoestringError, match="raise alpha"):
        partition_units(20, "dirichlet", 10, labels=_labels(20, 2), alpha=0.01, min_units=2)
