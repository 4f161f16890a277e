"""The scoring model shared by both walls: components -> pillars -> a wall score.

Every component is one measurement in its own unit (``value``, ``unit``) plus a score in
[0, 1] from a documented normalisation (``rule``): 0 = no obstacle, 1 = a wall. A pillar's
score is the mean of its *measured* components; a wall's score is the mean of its measured
pillars. A component nothing measured has ``score = None``, says what would measure it
(``missing``) and does not count, so a score is never made up from absent data.
Formulas: docs/ASSESS.md.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["MIN_REDUCTION", "Change", "Component", "Wall", "clip01", "wall_from"]

MIN_REDUCTION = 0.01
"""A change must lower a wall's score by at least this much to be named the one that helps most."""


def clip01(x: float) -> float:
    """``x`` limited to [0, 1]."""
    return min(1.0, max(0.0, float(x)))


@dataclass(frozen=True)
class Component:
    """One measured input of a wall."""

    key: str
    """Stable id, e.g. ``malformed_share``."""
    pillar: str
    """acquisition | processing | sharing | hardware | allocation | algorithmic."""
    label: str
    value: float | None
    """The measurement, in ``unit``; None = not measured."""
    unit: str
    score: float | None
    """Normalised to [0, 1] by ``rule``; None = not measured (left out of the means)."""
    rule: str
    """The normalisation, as a formula."""
    source: str
    """Artifact and field the measurement comes from."""
    detail: str = ""
    """The counts behind it, in words."""
    missing: str = ""
    """When not measured: what would measure it."""

    def rescored(self, value: float, score: float, detail: str = "") -> Component:
        return replace(self, value=value, score=clip01(score), detail=detail or self.detail)


@dataclass(frozen=True)
class Change:
    """A change that lowers a wall, with its predicted effect."""

    action: str
    """What to do, one sentence."""
    basis: str
    """Where the effect comes from: ``measured counts`` or ``planner prediction``."""
    before: float
    """Wall score now (the same basis as ``after``)."""
    after: float
    """Wall score after the change."""
    effect: str
    """The predicted effect in the component's own units."""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def reduction(self) -> float:
        return self.before - self.after


@dataclass(frozen=True)
class Wall:
    """A wall's score, its pillars and components, and the change that lowers it most."""

    name: str
    pillars: dict[str, float | None]
    score: float | None
    components: list[Component]
    changes: list[Change]
    """Every change considered, the biggest reduction first."""

    @property
    def best_change(self) -> Change | None:
        return self.changes[0] if self.changes and self.changes[0].reduction >= MIN_REDUCTION else None

    def as_dict(self) -> dict[str, Any]:
        best = self.best_change
        return {
            "name": self.name,
            "score": self.score,
            "pillars": self.pillars,
            "components": [asdict(c) for c in self.components],
            "best_change": {**asdict(best), "reduction": best.reduction} if best else None,
            "changes": [{**asdict(c), "reduction": c.reduction} for c in self.changes],
        }


def pillar_scores(components: list[Component], pillars: tuple[str, ...]) -> dict[str, float | None]:
    """Mean of the measured component scores of each pillar (None when none is measured)."""
    out: dict[str, float | None] = {}
    for p in pillars:
        scores = [c.score for c in components if c.pillar == p and c.score is not None]
        out[p] = statistics.fmean(scores) if scores else None
    return out


def wall_score(components: list[Component], pillars: tuple[str, ...]) -> float | None:
    """Mean of the measured pillar scores (None when no pillar is measured)."""
    measured = [s for s in pillar_scores(components, pillars).values() if s is not None]
    return statistics.fmean(measured) if measured else None


def wall_from(name: str, components: list[Component], pillars: tuple[str, ...], changes: list[Change]) -> Wall:
    ranked = sorted(changes, key=lambda c: -c.reduction)
    return Wall(name, pillar_scores(components, pillars), wall_score(components, pillars), components, ranked)
