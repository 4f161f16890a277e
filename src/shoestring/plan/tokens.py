"""Count a dataset's tokens with the model's own tokenizer.

Reads a curated dataset artifact's ``train.jsonl``: records with ``messages`` are rendered
with the tokenizer's chat template (what SFT trains on), others use ``text``. Records that
are not JSON objects or have neither field are counted as skipped, never silently lost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoestring.core.jsonl import iter_jsonl

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

    bad: Counter[str] = Counter()
    for rec in iter_jsonl(train_jsonl, skipped=bad):
        text = _render(tokenizer, rec)
        if text is None:
            skipped += 1
            continue
        pending.append(text)
        if len(pending) >= batch:
            flush()
    flush()
    skipped += sum(bad.values())
    srt = sorted(lengths)
    return TokenCount(
        records=len(lengths),
        tokens=sum(lengths),
        max_tokens=srt[-1] if srt else 0,
        mean_tokens=sum(lengths) / len(lengths) if lengths else 0.0,
        p95_tokens=srt[int(0.95 * (len(srt) - 1))] if srt else 0,
        skipped=skipped,
    ), lengths


def length_quantiles(lengths: list[int], seq_len: int, n: int = 64) -> tuple[int, ...]:
    """``n`` evenly spaced quantiles of the records' lengths truncated at ``seq_len`` (what a
    padded batch's width is drawn from; :meth:`TrainingSetup.expected_width`)."""
    srt = sorted(min(x, seq_len) for x in lengths if x > 0)
    if not srt:
        return ()
    return tuple(srt[min(len(srt) - 1, (2 * i + 1) * len(srt) // (2 * n))] for i in range(n))


def attention_grid(seq_len: int) -> list[int]:
    """Document lengths at which per-document attention is timed: 16·2^k and 24·2^k below
    ``seq_len``, and ``seq_len`` itself."""
    grid = {seq_len}
    base = 16
    while base < seq_len:
        grid.add(base)
        if base * 3 // 2 < seq_len:
            grid.add(base * 3 // 2)
        base *= 2
    return sorted(grid)


def packed_segments(lengths: list[int], seq_len: int, *, chunk: bool) -> tuple[tuple[tuple[int, float], ...], int]:
    """The documents a packed row holds, as the trainer packs them, on the timing grid.

    ``lengths`` are the records' token counts; ``chunk`` splits a long record into
    ``seq_len`` pieces (causal-LM pretraining) instead of truncating it (SFT). Rows are
    packed best-fit-decreasing (:func:`shoestring.train.data.pack_lengths`); a row's unused
    tail is one more document (the trainer's padding pseudo-document). Each segment length
    is split between its two neighbouring grid lengths (:func:`attention_grid`) in
    proportion, so ``((grid length, mean count per row), ...)`` reproduces the per-row
    document mix with a few timed shapes; returns it and the number of packed rows.
    """
    from shoestring.train.data import pack_lengths

    docs: list[int] = []
    for n in lengths:
        if n <= 0:
            continue
        if chunk:
            docs.extend([seq_len] * (n // seq_len) + ([n % seq_len] if n % seq_len else []))
        else:
            docs.append(min(n, seq_len))
    rows = pack_lengths(docs, seq_len)
    if not rows:
        return ((seq_len, 1.0),), 0
    grid = attention_grid(seq_len)
    weight: dict[int, float] = {}

    def add(n: int) -> None:
        if n <= grid[0]:
            weight[grid[0]] = weight.get(grid[0], 0.0) + 1.0
            return
        hi = next(g for g in grid if g >= n)
        lo = grid[grid.index(hi) - 1] if hi != n else hi
        f = 1.0 if hi == lo else (n - lo) / (hi - lo)
        weight[hi] = weight.get(hi, 0.0) + f
        if f < 1.0:
            weight[lo] = weight.get(lo, 0.0) + 1.0 - f

    for members in rows:
        used = 0
        for i in members:
            add(docs[i])
            used += docs[i]
        if used < seq_len:
            add(seq_len - used)
    return tuple((g, round(w / len(rows), 4)) for g, w in sorted(weight.items())), len(rows)


def training_rows(train_jsonl: Path | None, tokenizer: Any, task: str, seq_len: int, *, packing: bool, n: int,
                  seed: int = 0, max_records: int = 4096) -> tuple[list[dict[str, Any]], bool]:
    """The first ``n`` rows the trainer would feed (its own tokenising, packing or padding, and
    its epoch-0 order), as JSON-able dicts; and whether they are packed. Without a dataset:
    full-length rows of random ids, every position labelled."""
    import numpy as np

    from shoestring.train import data as D

    packed = packing and task in ("sft", "causal-lm")
    if train_jsonl is None or not train_jsonl.is_file():
        rng = np.random.default_rng(seed)
        vocab = max(8, int(getattr(tokenizer, "vocab_size", 1000) or 1000) - 1)
        rows = []
        for i in range(n):
            ids = [int(x) for x in rng.integers(1, vocab, seq_len)]
            label = i % 2 if task == "classification" else None
            rows.append({"input_ids": ids, "labels": [] if label is not None else list(ids),
                         "position_ids": list(range(seq_len)), "label": label})
        return rows, packed
    records = D.read_records(train_jsonl, max_records)
    label_to_id = None
    if task == "classification":
        labels = sorted({str(r.get("label")) for r in records if r.get("label") is not None}) or ["0", "1"]
        label_to_id = {lab: i for i, lab in enumerate(labels)}
    examples, _ = D.build_examples(records, tokenizer, task=task, seq_len=seq_len, text_field="text",  # type: ignore[arg-type]
                                   messages_field="messages", label_field="label", label_to_id=label_to_id)
    if packed:
        built = D.pack_examples(examples, seq_len)
    elif packing and task == "masked-lm":
        built = D.concat_segments(examples, seq_len, getattr(tokenizer, "cls_token_id", None))
    else:
        built = D.pad_rows(examples)
    if not built:
        return training_rows(None, tokenizer, task, seq_len, packing=packing, n=n, seed=seed)
    order = [int(i) for i in np.random.default_rng([seed, 0]).permutation(len(built))]
    chosen = [built[order[i % len(built)]] for i in range(n)]
    return [{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids, "label": r.label}
            for r in chosen], packed
