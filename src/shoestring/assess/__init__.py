"""`shoestring assess`: the data barrier and the compute bottleneck, scored from artifacts (docs/ASSESS.md)."""

from __future__ import annotations

__all__: list[str] = []
