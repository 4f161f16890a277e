"""Records, quarantine entries and the per-op accounting every op keeps.

A record is a plain ``dict`` (JSON-serialisable) with at least ``id`` and ``_source``;
content lives in ``text`` or in ``instruction``/``input``/``response``. Fields starting
with ``_`` are bookkeeping and are removed before the dataset is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CONTENT_FIELDS",
    "Drop",
    "OpStats",
    "Quarantined",
    "Record",
    "apply_op",
    "content_fields",
    "full_text",
]

Record = dict[str, Any]
CONTENT_FIELDS = ("instruction", "input", "response", "text")


@dataclass(frozen=True)
class Quarantined:
    """A malformed raw record: kept aside with why and where, never silently lost."""

    source: str
    location: str
    """Where it was: ``line 12``, ``row 7``, ``file a/b.txt``."""
    reason: str
    """Short machine-readable reason: ``bad_json``, ``invalid_utf8``, ``wrong_type:question`` ..."""
    raw: str
    """The first 500 characters of the raw content (for inspection)."""

    def to_json(self) -> dict[str, str]:
        return {"source": self.source, "location": self.location, "reason": self.reason, "raw": self.raw}


@dataclass(frozen=True)
class Drop:
    """An op's verdict that a record is dropped, with the reason."""

    reason: str


@dataclass
class OpStats:
    """What one op did: records in/out, drops by reason, and free-form counters."""

    name: str
    seen: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)

    def merge(self, other: OpStats) -> None:
        self.seen += other.seen
        self.kept += other.kept
        self.dropped.update(other.dropped)
        self.counters.update(other.counters)

    def to_json(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "counters": dict(sorted(self.counters.items())),
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> OpStats:
        return cls(name, data["seen"], data["kept"], Counter(data["dropped"]), Counter(data["counters"]))


def content_fields(rec: Record) -> list[str]:
    """The text-bearing fields present in a record, in a fixed order."""
    return [f for f in CONTENT_FIELDS if isinstance(rec.get(f), str)]


def full_text(rec: Record) -> str:
    """All content of a record as one string (instruction, input, response joined by blank lines)."""
    if any(isinstance(rec.get(f), str) for f in ("instruction", "response")):
        return "\n\n".join(
            rec[f] for f in ("instruction", "input", "response") if isinstance(rec.get(f), str) and rec[f]
        )
    return str(rec.get("text") or "")


def apply_op(
    records: Iterable[Record], name: str, fn: Callable[[Record, OpStats], Record | Drop], stats: OpStats
) -> Iterator[Record]:
    """Generator-in / generator-out wrapper: run ``fn`` per record, count, and drop with a reason.

    Dropped records are not yielded; they are counted under ``stats.dropped[reason]`` and,
    when the record carries a ``_drops`` list, appended there for the data card examples.
    """
    for rec in records:
        stats.seen += 1
        out = fn(rec, stats)
        if isinstance(out, Drop):
            stats.dropped[out.reason] += 1
            continue
        stats.kept += 1
        yield out
