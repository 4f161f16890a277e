"""Drift of live inputs and predictions against the evaluation artifact's reference.

The reference (``reference.json`` of an evaluation artifact) holds binned distributions::

    {"version": 1,
     "features":    {NAME: {"kind": "numeric", "edges": [...], "proportions": [...]}
                         | {"kind": "categorical", "categories": [...], "proportions": [...]}},
     "predictions": {same shape}}

For each reference entry the server can observe (``input_tokens``, ``input_chars``,
``output_tokens``, ``label``, ``confidence``...), it keeps the last ``window`` values
and computes the population stability index

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

over the reference bins, with proportions floored at 1e-4 so an empty bin is finite.
Thresholds (the usual credit-scoring convention): PSI < 0.1 stable, 0.1-0.25 moderate
shift, > 0.25 significant shift. The reference's outer edges are the evaluation set's
observed min and max, so live values outside them (including +-inf) count in the end
bins rather than being lost; NaN is skipped. Unseen categories form one extra bin whose expected proportion is the floor.
"""

from __future__ import annotations

import bisect
import collections
import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoestring.core.errors import ShoestringError

__all__ = ["DriftMonitor", "Reference", "load_reference", "psi", "drift_level", "MODERATE", "SIGNIFICANT"]

MODERATE = 0.1
"""PSI at or above this is a moderate shift."""
SIGNIFICANT = 0.25
"""PSI above this is a significant shift."""
_FLOOR = 1e-4


@dataclass(frozen=True)
class Reference:
    """One binned reference distribution."""

    name: str
    kind: str
    proportions: tuple[float, ...]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()

    def bin_of(self, value: Any) -> int:
        """Index of the bin ``value`` falls in (``len(proportions)`` = unseen category)."""
        if self.kind == "categorical":
            try:
                return self.categories.index(str(value))
            except ValueError:
                return len(self.categories)
        n = len(self.proportions)
        # Edges may include both ends (n + 1 values) or only the interior cut points (n - 1).
        inner = self.edges[1:-1] if len(self.edges) == n + 1 else self.edges
        return min(bisect.bisect_right(inner, float(value)), n - 1)


def psi(expected: list[float] | tuple[float, ...], actual: list[float]) -> float:
    """Population stability index between two proportion vectors of the same length."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, _FLOOR), max(a, _FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def drift_level(value: float) -> int:
    """0 stable (< 0.1), 1 moderate (0.1-0.25), 2 significant (> 0.25)."""
    return 0 if value < MODERATE else (1 if value <= SIGNIFICANT else 2)


def load_reference(path: str | Path) -> dict[str, Reference]:
    """Read ``reference.json`` (or an evaluation artifact folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "reference.json"
    if not p.is_file():
        raise ShoestringError(f"drift reference not found: {p}; pass an evaluation artifact with a reference.json")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ShoestringError(f"{p}: not valid JSON ({err.msg} at line {err.lineno}); re-run `shoestring evaluate`") from None
    out: dict[str, Reference] = {}
    for section, prefix in (("features", ""), ("predictions", "prediction_")):
        for name, spec in (raw.get(section) or {}).items():
            try:
                props = tuple(float(x) for x in spec["proportions"])
                if spec["kind"] == "numeric":
                    ref = Reference(prefix + name, "numeric", props, edges=tuple(float(x) for x in spec["edges"]))
                elif spec["kind"] == "categorical":
                    ref = Reference(prefix + name, "categorical", props, categories=tuple(map(str, spec["categories"])))
                else:
                    raise KeyError("kind")
            except (KeyError, TypeError, ValueError):
                raise ShoestringError(
                    f"{p}: {section}.{name} is not a numeric (edges, proportions) or categorical "
                    "(categories, proportions) distribution; re-run `shoestring evaluate`"
                ) from None
            out[ref.name] = ref
    return out


class DriftMonitor:
    """Sliding windows of observed values and their PSI against the reference."""

    def __init__(self, references: dict[str, Reference], window: int = 500, min_samples: int = 50) -> None:
        self.references = references
        self.window = window
        self.min_samples = min_samples
        self._values: dict[str, collections.deque[int]] = {n: collections.deque(maxlen=window) for n in references}
        self._lock = threading.Lock()

    def observe(self, inputs: dict[str, Any], predictions: dict[str, Any] | None = None) -> None:
        """Record one request: input features and (optionally) predictions by name."""
        with self._lock:
            for name, value in inputs.items():
                self._add(name, value)
            for name, value in (predictions or {}).items():
                self._add("prediction_" + name, value)

    def _add(self, name: str, value: Any) -> None:
        ref = self.references.get(name)
        if ref is None or value is None:
            return
        if ref.kind == "numeric" and isinstance(value, float) and math.isnan(value):
            return  # NaN has no bin; counting it in the top bin would fake drift
        self._values[name].append(ref.bin_of(value))

    def samples(self) -> int:
        with self._lock:
            return max((len(v) for v in self._values.values()), default=0)

    def scores(self) -> dict[str, float]:
        """PSI per reference entry with at least ``min_samples`` observations."""
        out: dict[str, float] = {}
        with self._lock:
            for name, ref in self.references.items():
                bins = self._values[name]
                if len(bins) < self.min_samples:
                    continue
                counts = collections.Counter(bins)
                actual = [counts.get(i, 0) / len(bins) for i in range(len(ref.proportions))]
                expected = list(ref.proportions)
                if ref.kind == "categorical":  # the extra bin for categories the reference never saw
                    actual.append(counts.get(len(ref.proportions), 0) / len(bins))
                    expected.append(0.0)
                out[name] = psi(expected, actual)
        return out
