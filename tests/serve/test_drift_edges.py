"""Drift reference edges are the observed min/max: values beyond them count in the outer bins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoestring.serve.drift import DriftMonitor, load_reference


def _reference(tmp_path: Path) -> Path:
    # The shape `shoestring evaluate` writes: n + 1 edges, the outer two the observed min and max.
    ref = {"version": 1, "features": {"input_tokens": {"kind": "numeric", "edges": [4, 10, 20, 40, 120],
           "proportions": [0.25, 0.25, 0.25, 0.25]}}}  # fmt: skip
    (tmp_path / "reference.json").write_text(json.dumps(ref))
    return tmp_path


def test_values_beyond_observed_min_max_fall_in_outer_bins(tmp_path: Path) -> None:
    refs = load_reference(_reference(tmp_path))
    ref = refs["input_tokens"]
    assert [ref.bin_of(v) for v in (0, 4, 5, 10, 39.9, 40, 120, 121, 10_000)] == [0, 0, 0, 1, 2, 3, 3, 3, 3]
    assert ref.bin_of(float("-inf")) == 0 and ref.bin_of(float("inf")) == 3

    # Same shape as the reference, but every value beyond the observed range: no drift,
    # because the outer bins absorb them (dropping them would give an empty window).
    mon = DriftMonitor(refs, window=100, min_samples=8)
    for v in (1, 2, 15, 12, 25, 30, 500, 1000):
        mon.observe({"input_tokens": v})
    assert mon.samples() == 8
    assert mon.scores()["input_tokens"] == pytest.approx(0.0, abs=1e-9)

    # All traffic far above the observed max: significant drift, seen in the top bin.
    for _ in range(100):
        mon.observe({"input_tokens": 5000})
    assert mon.scores()["input_tokens"] > 0.25


def test_nan_is_skipped_not_binned(tmp_path: Path) -> None:
    mon = DriftMonitor(load_reference(_reference(tmp_path)), window=10, min_samples=1)
    mon.observe({"input_tokens": float("nan")})
    assert mon.samples() == 0
