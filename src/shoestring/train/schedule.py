"""The learning-rate schedule every trainer uses: the LM loop and the shared epoch loop of the
recommender, tabular and DP-SGD trainers (``tabular_fit``)."""

from __future__ import annotations

import math

__all__ = ["lr_at"]


def lr_at(step: int, total: int, warmup: int, peak: float, schedule: str) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup then decay to 10%."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return peak
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = 0.1 * peak
    if schedule == "linear":
        return peak - (peak - floor) * frac
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * frac))
