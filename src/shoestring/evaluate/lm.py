"""Language-model evaluation: held-out loss per record, perplexity, and generations.

Loss definition (the same as training, whose tokenisation we call): a record with
``messages`` is rendered with the tokenizer's chat template and only the tokens of
assistant turns (the reply text and its end-of-turn marker) are scored; a plain ``text``
record (BOS + text + EOS) is scored on every token after the first. Per record we keep the summed negative log-likelihood
(nats) and the number of scored tokens, so corpus loss is token-weighted
(sum NLL / sum tokens), exactly what a training loop averages.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "IGNORE_INDEX",
    "LossResult",
    "TokenizedRecord",
    "generate",
    "read_records",
    "record_losses",
    "tokenize_for_loss",
]

IGNORE_INDEX = -100


@dataclass
class TokenizedRecord:
    """Token ids of one record and its labels (``IGNORE_INDEX`` where not scored)."""

    id: str
    input_ids: list[int]
    labels: list[int]
    n_chars: int
    prompt_tokens: int
    """Tokens before the last reply (chat) or all tokens (plain text): what a server sees as input."""
    prompt_chars: int
    """Characters of that prompt."""
    reply_tokens: int | None
    """Tokens of the last assistant reply (chat records); None for plain text."""


@dataclass
class LossResult:
    """Per-record losses of one model on the evaluation records (aligned by position)."""

    ids: list[str]
    nll_sum: np.ndarray
    """Summed NLL per record, nats."""
    tokens: np.ndarray
    """Scored tokens per record."""
    input_tokens: np.ndarray
    """Tokens fed to the model per record (after truncation)."""
    prompt_tokens: np.ndarray
    """Prompt tokens per record (see :class:`TokenizedRecord`)."""
    prompt_chars: np.ndarray
    """Prompt characters per record."""
    reply_tokens: list[int | None]
    """Last-reply tokens per record (None for plain text)."""

    @property
    def per_record_loss(self) -> np.ndarray:
        """Mean NLL per scored token of each record, nats/token."""
        return self.nll_sum / np.maximum(self.tokens, 1)


def read_records(path: Path, limit: int) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Read up to ``limit`` JSON records; malformed lines are counted, not silently dropped."""
    if not path.is_file():
        raise ShoestringError(f"dataset split not found: {path}; pass --split with a split the dataset has")
    out: list[dict[str, Any]] = []
    bad: Counter[str] = Counter()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if len(out) >= limit:
                break
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad["malformed_json"] += 1
                continue
            if not isinstance(rec, dict):
                bad["not_an_object"] += 1
                continue
            rec.setdefault("id", f"{path.stem}-{lineno}")
            out.append(rec)
    return out, bad


def tokenize_for_loss(
    tokenizer: PreTrainedTokenizerBase,
    record: dict[str, Any],
    max_len: int,
    text_field: str = "text",
    messages_field: str = "messages",
) -> TokenizedRecord | None:
    """Token ids and labels of one record exactly as training builds them, or None when
    nothing in it can be scored.

    Chat records (``messages``, or ``prompt`` + ``response``) go through the training
    package's SFT tokenisation (chat template, assistant tokens only); other records through
    its causal-LM tokenisation (BOS + text + EOS), truncated to ``max_len`` tokens.
    """
    from shoestring.train.data import build_examples

    msgs = record.get(messages_field)
    chat = (isinstance(msgs, list) and bool(msgs)) or ("prompt" in record and ("response" in record or "completion" in record))
    task = "sft" if chat and getattr(tokenizer, "chat_template", None) else "causal-lm"
    rec = record
    if task == "causal-lm" and not isinstance(record.get(text_field), str) and isinstance(msgs, list):
        rec = {text_field: "\n".join(str(m.get("content", "")) for m in msgs)}
    examples, _ = build_examples(
        [rec], tokenizer, task=task, seq_len=max_len, text_field=text_field, messages_field=messages_field,
        label_field="label",
    )
    if not examples:
        return None
    ids = list(examples[0]["input_ids"])
    labels = list(examples[0]["labels"])
    if len(ids) < 2 or all(lab == IGNORE_INDEX for lab in labels[1:]):
        return None
    reply: int | None = None
    prompt_tokens = len(ids)
    if task == "sft":
        # The last reply is the last run of scored tokens; what precedes it is the prompt.
        end = max(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX) + 1
        start = end
        while start > 0 and labels[start - 1] != IGNORE_INDEX:
            start -= 1
        prompt_tokens, reply = start, end - start
    prompt_chars = len(str(tokenizer.decode(ids[:prompt_tokens])))
    n_chars = len(str(tokenizer.decode(ids)))
    return TokenizedRecord(str(record.get("id")), ids, labels, n_chars, prompt_tokens, prompt_chars, reply)


def _batches(items: list[TokenizedRecord], token_budget: int) -> list[list[int]]:
    """Indices grouped so that (batch size x longest sequence) stays under ``token_budget``;
    sorted by length first, so padding is small."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = max([len(items[j].input_ids) for j in cur] + [len(items[i].input_ids)])
        if cur and longest * (len(cur) + 1) > token_budget:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def record_losses(
    model: PreTrainedModel, items: list[TokenizedRecord], pad_id: int, token_budget: int = 2048
) -> LossResult:
    """Summed NLL and scored-token count per record; batched, no-grad, float32 log-softmax."""
    import torch
    import torch.nn.functional as F

    nll = np.zeros(len(items), dtype=np.float64)
    count = np.zeros(len(items), dtype=np.int64)
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        for batch in _batches(items, token_budget):
            width = max(len(items[i].input_ids) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                n = len(items[i].input_ids)
                ids[row, :n] = torch.tensor(items[i].input_ids)
                labels[row, :n] = torch.tensor(items[i].labels)
                mask[row, :n] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
            target = labels[:, 1:].to(device)  # (B, T-1): token t is predicted from tokens < t
            per_tok = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                target.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).view(len(batch), -1)  # (B, T-1)
            scored = (target != IGNORE_INDEX).sum(dim=1)
            for row, i in enumerate(batch):
                nll[i] = float(per_tok[row].sum())
                count[i] = int(scored[row])
    return LossResult(
        ids=[it.id for it in items],
        nll_sum=nll,
        tokens=count,
        input_tokens=np.array([len(it.input_ids) for it in items], dtype=np.int64),
        prompt_tokens=np.array([it.prompt_tokens for it in items], dtype=np.int64),
        prompt_chars=np.array([it.prompt_chars for it in items], dtype=np.int64),
        reply_tokens=[it.reply_tokens for it in items],
    )


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """A user prompt as the model expects it: chat-templated when the tokenizer has a template."""
    if getattr(tokenizer, "chat_template", None):
        return str(
            tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        )
    return prompt


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Generate one continuation per prompt (greedy, or sampled with a fixed seed)."""
    import torch

    if not prompts:
        return []
    texts = [format_prompt(tokenizer, p) for p in prompts]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = old_side
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_id}
    if sample:
        torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    model.eval()
    with torch.inference_mode():
        inputs = {k: v.to(device) for k, v in enc.items()}
        out = model.generate(**inputs, **kwargs)  # type: ignore[operator]
    width = enc["input_ids"].shape[1]
    results = []
    for p, row in zip(prompts, out, strict=True):
        new = row[width:]
        eos = tokenizer.eos_token_id
        n_new = int((new != pad_id).sum()) if pad_id != eos else _len_to_eos(new, eos)
        results.append(
            {
                "prompt": p,
                "completion": str(tokenizer.decode(new, skip_special_tokens=True)).strip(),
                "new_tokens": n_new,
                "mode": "sampled" if sample else "greedy",
            }
        )
    return results


def _len_to_eos(tokens: torch.Tensor, eos: int | None) -> int:
    if eos is None:
        return len(tokens)
    hits = (tokens == eos).nonzero()
    return int(hits[0][0]) + 1 if len(hits) else len(tokens)


def perplexity(loss_nats: float) -> float:
    """exp(loss) with overflow guarded (a diverged model reports inf, not an error)."""
    return math.exp(loss_nats) if loss_nats < 700 else float("inf")
