"""Tokenisation, chat-template label masks and packing without cross-document attention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shoestring.train import data as D


def test_chat_labels_cover_exactly_the_assistant_replies(tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    msgs = [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven is prime."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Eleven."},
    ]
    ex = D.chat_example(tok, msgs, seq_len=512)
    assert ex is not None
    learned = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != D.IGNORE])
    # Both replies and their end-of-turn markers, nothing from the system or user turns.
    assert learned.replace("\n", "") == "Seven is prime.<|im_end|>Eleven.<|im_end|>"
    assert "Name a prime" not in learned


def test_chat_without_assistant_turn_is_skipped(tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    recs = [{"messages": [{"role": "user", "content": "hi"}]}, {"text": "no chat"}]
    examples, skipped = D.build_examples(
        recs, tok, task="sft", seq_len=64, text_field="text", messages_field="messages", label_field="label"
    )
    assert examples == [] and skipped == 2


def test_packing_fills_rows_and_masks_document_starts() -> None:
    exs = [{"input_ids": list(range(10 * k, 10 * k + n)), "labels": list(range(n))} for k, n in enumerate([5, 3, 7, 2])]
    rows = D.pack_examples(exs, seq_len=8)
    assert sorted(len(r.input_ids) for r in rows) == [7, 8, 2] or sum(len(r.input_ids) for r in rows) == 17
    assert all(len(r.input_ids) <= 8 for r in rows)
    for r in rows:
        starts = [i for i, p in enumerate(r.position_ids) if p == 0]
        assert all(r.labels[i] == D.IGNORE for i in starts)  # never predict across documents


def test_packed_logits_equal_each_document_alone(tiny_llama: Path) -> None:
    """Attention must not cross packed-document boundaries (position-id resets)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    docs = [[5, 17, 923, 44, 8], [301, 7, 7, 12], [99, 1000, 4]]
    exs = [{"input_ids": d, "labels": d} for d in docs]
    rows = D.pack_examples(exs, seq_len=16)
    assert len(rows) == 1
    batch = D.collate(rows, pad_id=0, packed=True)
    with torch.no_grad():
        # use_cache=False as in training: with a KV cache transformers skips packed-sequence detection.
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        offset = 0
        for pos in [i for i, p in enumerate(rows[0].position_ids) if p == 0] + [len(rows[0].input_ids)]:
            if pos == 0:
                continue
            doc = rows[0].input_ids[offset:pos]
            alone = model(input_ids=torch.tensor([doc]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[offset:pos], alone, atol=1e-5, rtol=1e-4)
            offset = pos


def test_malformed_jsonl_is_a_one_line_error(tmp_path: Path) -> None:
    from shoestring.core.errors import ShoestringError

    f = tmp_path / "train.jsonl"
    f.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(ShoestringError, match=r"train.jsonl:2"):
        D.read_records(f)


def test_masked_lm_rows_join_consecutive_paragraphs() -> None:
    from shoestring.train.data import concat_segments

    ex = [{"input_ids": [101, *range(1, n + 1), 102]} for n in (3, 4, 10, 2)]
    rows = concat_segments(ex, 12, 101)
    # [CLS] a [SEP] b [SEP] fits 11 <= 12; the 12-token third example starts a new row.
    assert [r.input_ids for r in rows] == [
        [101, 1, 2, 3, 102, 1, 2, 3, 4, 102],
        [101, *range(1, 11), 102],
        [101, 1, 2, 102],
    ]
    assert all(r.position_ids == list(range(len(r.input_ids))) for r in rows)
