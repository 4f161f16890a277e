"""Turn dataset records into token examples and batches: chat SFT, causal/masked LM, classification.

An *example* is a dict of plain Python lists (``input_ids``, ``labels`` and for classification
``label``). A *row* is what one batch line holds: one padded example, or several examples
packed end to end with ``position_ids`` restarting at 0 for each document so attention never
crosses a document boundary (transformers builds a block-diagonal causal mask from the
position resets when no 2-D attention mask is passed).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.core.errors import ShoestringError
from shoestring.core.jsonl import read_jsonl

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IGNORE",
    "Row",
    "build_examples",
    "chat_example",
    "collate",
    "concat_segments",
    "pack_examples",
    "pack_lengths",
    "iter_microbatches",
    "mask_tokens",
    "pad_rows",
    "python_docs_records",
    "read_records",
]

IGNORE = -100
"""Label value excluded from the loss (PyTorch cross-entropy's ignore_index)."""


@dataclass
class Row:
    """One line of a batch: token ids, per-token labels and per-document positions."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    label: int | None = None
    """Sequence class (classification rows only)."""


def read_records(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Read a JSONL file; malformed lines are a one-line error naming the line."""
    if not path.is_file():
        return []
    return read_jsonl(path, limit=limit, strict=True, fix="re-run the curate stage")


def python_docs_records() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Python's reference documentation (``pydoc_data.topics``) as text records, split by paragraph.

    Returns (train, validation); every 20th paragraph is held out, so both sides cover
    all topics. A real English+code corpus that ships with CPython (no download).
    """
    from pydoc_data.topics import topics

    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    n = 0
    for key in sorted(topics):
        for para in str(topics[key]).split("\n\n"):
            text = " ".join(para.split())
            if len(text) < 40:
                continue
            (val if n % 20 == 19 else train).append({"id": f"{key}-{n}", "text": text})
            n += 1
    return train, val


def chat_example(
    tok: PreTrainedTokenizerBase, messages: Sequence[dict[str, Any]], seq_len: int
) -> dict[str, list[int]] | None:
    """Tokenise a chat with the model's template; labels only on assistant turns.

    Assistant spans are found by rendering the conversation up to each assistant turn (with
    the generation prompt) and up to its end: the characters in between are the reply plus
    its end-of-turn marker, which is what the model must learn to produce. Character spans
    are mapped to tokens through the fast tokenizer's offsets, so this works for any
    template whose renders of a prefix are prefixes of the full render.
    """
    msgs = [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in messages]
    if not any(m["role"] == "assistant" for m in msgs):
        return None
    full = _render(tok, msgs, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        start = len(_render(tok, msgs[:i], generation_prompt=True)) if i else 0
        end = len(_render(tok, msgs[: i + 1], generation_prompt=False))
        if full[:end] != _render(tok, msgs[: i + 1], generation_prompt=False):
            raise ShoestringError(
                "the model's chat template does not render prefixes consistently; use task: causal-lm"
            )
        spans.append((start, end))
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and any(s <= a and b <= e for s, e in spans):
            labels[t] = ids[t]
    ids, labels = ids[:seq_len], labels[:seq_len]
    if all(v == IGNORE for v in labels[1:]):
        return None  # the reply was truncated away: nothing to learn from this record
    return {"input_ids": ids, "labels": labels}


def _render(tok: PreTrainedTokenizerBase, msgs: list[dict[str, str]], *, generation_prompt: bool) -> str:
    if not msgs and not generation_prompt:
        return ""
    out = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)
    return str(out)


def _text_examples(
    tok: PreTrainedTokenizerBase, text: str, seq_len: int, *, chunk: bool, special: bool
) -> list[dict[str, list[int]]]:
    """Plain text → one example (truncated) or several ``seq_len`` chunks (pretraining)."""
    ids: list[int] = list(tok(text, add_special_tokens=False)["input_ids"])
    if special:
        # Encoder models want [CLS] ... [SEP]; leave room for both in every chunk.
        body = seq_len - 2
        pieces = [ids[i : i + body] for i in range(0, len(ids), body)] if chunk else [ids[:body]]
        first = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        last = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        pieces = [[t for t in (first, *p, last) if t is not None] for p in pieces if p]
    else:
        bos = [tok.bos_token_id] if tok.bos_token_id is not None and not chunk else []
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        ids = bos + ids + eos
        pieces = [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)] if chunk else [ids[:seq_len]]
    return [{"input_ids": p, "labels": list(p)} for p in pieces if len(p) >= 2]


def build_examples(
    records: Sequence[dict[str, Any]],
    tok: PreTrainedTokenizerBase,
    *,
    task: str,
    seq_len: int,
    text_field: str,
    messages_field: str,
    label_field: str,
    label_to_id: dict[str, int] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Tokenise records for ``task``; returns (examples, records skipped as unusable)."""
    out: list[dict[str, Any]] = []
    skipped = 0
    for rec in records:
        if task == "sft":
            msgs = rec.get(messages_field)
            if not msgs and "prompt" in rec and ("response" in rec or "completion" in rec):
                reply = rec.get("response", rec.get("completion"))
                msgs = [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": reply}]
            ex = chat_example(tok, msgs, seq_len) if isinstance(msgs, list) else None
            if ex is None:
                skipped += 1
                continue
            out.append(ex)
        elif task in ("causal-lm", "masked-lm"):
            text = rec.get(text_field)
            if not isinstance(text, str) or not text.strip():
                skipped += 1
                continue
            out.extend(_text_examples(tok, text, seq_len, chunk=True, special=task == "masked-lm"))
        elif task == "classification":
            text, label = rec.get(text_field), rec.get(label_field)
            if not isinstance(text, str) or label is None or label_to_id is None or str(label) not in label_to_id:
                skipped += 1
                continue
            enc = tok(text, truncation=True, max_length=seq_len)
            out.append({"input_ids": list(enc["input_ids"]), "labels": [], "label": label_to_id[str(label)]})
        else:
            raise ShoestringError(f"task '{task}' is not a language-model task")
    return out, skipped


def pad_rows(examples: Sequence[dict[str, Any]]) -> list[Row]:
    """One example per row (padding happens in :func:`collate`)."""
    return [
        Row(list(e["input_ids"]), list(e["labels"]), list(range(len(e["input_ids"]))), e.get("label")) for e in examples
    ]


def concat_segments(examples: Sequence[dict[str, Any]], seq_len: int, cls_id: int | None) -> list[Row]:
    """Masked-LM rows: consecutive ``[CLS] a [SEP]`` examples joined as ``[CLS] a [SEP] b [SEP] ...``.

    BERT-style pretraining input (RoBERTa's "full sentences"): neighbouring paragraphs share
    a row and attend to each other, so short paragraphs do not leave most of a row padding.
    Corpus order is kept (neighbours are from the same topic). Positions run 0..T-1.
    """
    rows: list[Row] = []
    cur: list[int] = []
    for e in examples:
        ids = list(e["input_ids"])
        tail = ids[1:] if cls_id is not None and ids and ids[0] == cls_id else ids
        if cur and len(cur) + len(tail) <= seq_len:
            cur.extend(tail)
            continue
        if cur:
            rows.append(Row(cur, list(cur), list(range(len(cur)))))
        cur = ids[:seq_len]
    if cur:
        rows.append(Row(cur, list(cur), list(range(len(cur)))))
    return rows


def pack_lengths(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
    """Best-fit-decreasing packing of documents of these lengths into rows of at most ``seq_len``
    tokens; returns each row's document indices in placement order.

    The trainer packs with it (:func:`pack_examples`), and the planner uses it to know each
    row's documents (per-document attention cost) without tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, r = free.pop(k)
        else:
            rows.append([])
            space, r = seq_len, len(rows) - 1
        rows[r].append(i)
        if space - n > 0:
            bisect.insort(free, (space - n, r))
    return rows


def pack_examples(examples: Sequence[dict[str, Any]], seq_len: int) -> list[Row]:
    """Best-fit-decreasing packing of examples into rows of at most ``seq_len`` tokens.

    Positions restart at 0 for each document, and the first label of each document is
    ignored so no token is ever predicted from another document's last token.
    """
    rows: list[Row] = []
    for members in pack_lengths([len(e["input_ids"]) for e in examples], seq_len):
        row = Row([], [], [])
        for i in members:
            ids, labels = examples[i]["input_ids"], examples[i]["labels"]
            row.input_ids.extend(ids)
            row.labels.extend([IGNORE, *labels[1:]])
            row.position_ids.extend(range(len(ids)))
        rows.append(row)
    return rows


def collate(rows: Sequence[Row], pad_id: int, *, packed: bool) -> dict[str, torch.Tensor]:
    """Stack rows into tensors padded to the longest row.

    Padded batches carry a 2-D ``attention_mask``; packed batches carry none (the
    ``position_ids`` resets define the documents) and their padding is a separate
    pseudo-document whose labels are ignored.
    """
    import torch

    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r.input_ids)
        ids[b, :n] = torch.tensor(r.input_ids)
        if r.labels:
            labels[b, :n] = torch.tensor(r.labels)
        pos[b, :n] = torch.tensor(r.position_ids)
        pos[b, n:] = torch.arange(width - n)
        mask[b, :n] = 1
    batch = {"input_ids": ids, "labels": labels, "real_tokens": mask.sum()}
    if packed:
        batch["position_ids"] = pos
    else:
        batch["attention_mask"] = mask
    if rows[0].label is not None:
        batch["class_labels"] = torch.tensor([int(r.label or 0) for r in rows], dtype=torch.long)
    return batch


def mask_tokens(
    batch: dict[str, torch.Tensor], tok: PreTrainedTokenizerBase, probability: float, generator: torch.Generator
) -> None:
    """BERT-style masking in place: pick ``probability`` of real tokens, 80/10/10 mask/random/keep."""
    import torch

    ids = batch["input_ids"]
    special = torch.zeros_like(ids, dtype=torch.bool)
    for sid in tok.all_special_ids:
        special |= ids == sid
    pick = (torch.rand(ids.shape, generator=generator) < probability) & ~special
    labels = torch.where(pick, ids, torch.full_like(ids, IGNORE))
    roll = torch.rand(ids.shape, generator=generator)
    to_mask = pick & (roll < 0.8)
    to_random = pick & (roll >= 0.8) & (roll < 0.9)
    random_ids = torch.randint(len(tok), ids.shape, generator=generator)
    out = ids.clone()
    out[to_mask] = int(tok.mask_token_id)
    out[to_random] = random_ids[to_random]
    batch["input_ids"], batch["labels"] = out, labels


def iter_microbatches(rows: Sequence[Row], size: int) -> Iterator[list[Row]]:
    for i in range(0, len(rows), size):
        yield list(rows[i : i + size])
