"""One Hypothesis profile for the fuzz suite: derandomised (a fixed example sequence, so CI
time and results are reproducible), no example database, no per-example deadline, and a
bounded example count per property so the whole suite stays within its time budget."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
"""The default: 40 examples a property."""

FUZZ_SLOW = settings(FUZZ, max_examples=10)
"""For properties whose one example runs a whole stage (~0.3 s)."""
