"""Count a dataset's tokens with the model's own tokenizer.

Reads a curated dataset artifact's ``train.jsonl``: records with ``messages`` are rendered
with the tokenizer's chat template (what SFT trains on), others use ``text``. Records that
are not JSON objects or have neither field are counted as skipped, never silently lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TokenCount", "count_dataset_tokens"]


@dataclass(frozen=True)
class TokenCount:
    records: int
    tokens: int
    """Tokens over all records (each record truncated at nothing)."""
    max_tokens: int
    mean_tokens: float
    p95_tokens: int
    skipped: int
    """Records with neither ``messages`` nor ``text`` (or not JSON objects)."""


def _render(tok: Any, rec: dict[str, Any]) -> str | None:
    msgs = rec.get("messages")
    if isinstance(msgs, list) and msgs and getattr(tok, "chat_template", None):
        try:
            return str(tok.apply_chat_template(msgs, tokenize=False))
        except Exception:  # a malformed conversation falls back to its text
            pass
    text = rec.get("text")
    return text if isinstance(text, str) else None


def count_dataset_tokens(train_jsonl: Path, tokenizer: Any, *, batch: int = 256) -> tuple[TokenCount, list[int]]:
    """Token count of every record of ``train_jsonl``; also returns per-record lengths."""
    lengths: list[int] = []
    skipped = 0
    pending: list[str] = []

    def flush() -> None:
        if pending:
            enc = tokenizer(pending, add_special_tokens=True)["input_ids"]
            lengths.extend(len(x) for x in enc)
            pending.clear()

    with open(train_jsonl, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            text = _render(tokenizer, rec) if isinstance(rec, dict) else None
            if text is None:
                skipped += 1
                continue
            pending.append(text)
            if len(pending) >= batch:
                flush()
    flush()
    srt = sorted(lengths)
    return TokenCount(
        records=len(lengths),
        tokens=sum(lengths),
        max_tokens=srt[-1] if srt else 0,
        mean_tokens=sum(lengths) / len(lengths) if lengths else 0.0,
        p95_tokens=srt[int(0.95 * (len(srt) - 1))] if srt else 0,
        skipped=skipped,
    ), lengths
