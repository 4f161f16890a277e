"""Reading JSON Lines files: dataset splits, quarantine files, run logs, live training rows.

One reader so that every stage treats a bad line the same way: blank lines are passed over;
a line that is not JSON, or not a JSON object, is either a one-line error naming
``path:line`` (``strict``) or skipped and counted by reason (``malformed_json``,
``not_an_object``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shoestring.core.errors import ShoestringError

__all__ = ["iter_jsonl", "read_jsonl"]


def iter_jsonl(
    path: str | Path,
    *,
    strict: bool = False,
    skipped: Counter[str] | None = None,
    fix: str = "re-run the stage that wrote it",
) -> Iterator[dict[str, Any]]:
    """The JSON-object records of ``path``, in file order.

    ``strict``: a bad line raises ``ShoestringError("<path>:<line>: ...; <fix>")``; otherwise it
    is skipped and, when ``skipped`` is given, counted there under its reason.
    """
    import json

    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if strict:
                    raise ShoestringError(f"{path}:{n}: not valid JSON; {fix}") from None
                if skipped is not None:
                    skipped["malformed_json"] += 1
                continue
            if not isinstance(rec, dict):
                if strict:
                    raise ShoestringError(f"{path}:{n}: a record must be a JSON object; {fix}")
                if skipped is not None:
                    skipped["not_an_object"] += 1
                continue
            yield rec


def read_jsonl(
    path: str | Path,
    *,
    limit: int | None = None,
    missing_ok: bool = False,
    strict: bool = False,
    skipped: Counter[str] | None = None,
    fix: str = "re-run the stage that wrote it",
) -> list[dict[str, Any]]:
    """At most ``limit`` records of ``path`` (see :func:`iter_jsonl`); ``missing_ok``: a file
    that does not exist or cannot be read is an empty list."""
    out: list[dict[str, Any]] = []
    if limit is not None and limit <= 0:
        return out
    try:
        for rec in iter_jsonl(path, strict=strict, skipped=skipped, fix=fix):
            out.append(rec)
            if limit is not None and len(out) >= limit:
                break
    except OSError:
        if not missing_ok:
            raise
        return out
    return out
