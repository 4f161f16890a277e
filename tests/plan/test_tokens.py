"""The planner's view of packed rows: the same rows the trainer packs, and each row's documents."""

from __future__ import annotations

import itertools

import pytest

from shoestring.plan.tokens import attention_grid, packed_segments
from shoestring.train import data as D


def _doc_lengths(row: D.Row) -> list[int]:
    starts = [i for i, p in enumerate(row.position_ids) if p == 0] + [len(row.position_ids)]
    return [b - a for a, b in itertools.pairwise(starts)]


def test_grid_brackets_every_length_up_to_seq_len() -> None:
    assert attention_grid(256) == [16, 24, 32, 48, 64, 96, 128, 192, 256]
    assert attention_grid(100) == [16, 24, 32, 48, 64, 96, 100]


def test_segments_follow_the_trainers_packing_and_keep_every_token() -> None:
    lengths = [200, 120, 100, 60, 40, 30, 300]
    examples = [{"input_ids": list(range(min(n, 256))), "labels": list(range(min(n, 256)))} for n in lengths]
    rows = D.pack_examples(examples, 256)  # what the trainer does (SFT: truncated at seq_len)
    segments, n_rows = packed_segments(lengths, 256, chunk=False)
    assert n_rows == len(rows)
    # Tokens per row on the grid (documents + the padding pseudo-document) = seq_len: each length
    # is split between its two grid neighbours without losing any; only segments shorter than
    # the grid's first length (16) count as 16 (their time is the kernel's fixed cost).
    short = sum(16 - n for r in rows for n in [*_doc_lengths(r), 256 - len(r.input_ids)] if 0 < n < 16)
    assert sum(g * w for g, w in segments) * n_rows == pytest.approx(256 * n_rows + short, abs=0.05)
    # Documents per row: the trainer's rows' documents + one pad segment for each short row.
    docs = sum(sum(1 for p in r.position_ids if p == 0) for r in rows) + sum(1 for r in rows if len(r.input_ids) < 256)
    assert sum(w for _, w in segments) * n_rows == pytest.approx(docs)


def test_causal_lm_text_is_chunked_not_truncated() -> None:
    segments, n_rows = packed_segments([1000], 256, chunk=True)  # 3 full rows + a 232-token piece
    assert n_rows == 4
    by = dict(segments)
    assert by[256] == pytest.approx((3 + 40 / 64) / 4, abs=1e-3)  # 232 = 192 + 40/64 of the way to 256
    trunc, rows = packed_segments([1000], 256, chunk=False)
    assert rows == 1 and trunc == ((256, 1.0),)
