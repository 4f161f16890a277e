"""The ``torch`` engine: a Hugging Face model's weights behind the engine protocol.

Llama-family models (Llama, Mistral without sliding windows, SmolLM2, TinyLlama, ...) run on
the native kernel (``native.py``): weights packed once as float16/bfloat16/float32, a slot
KV cache preallocated per sequence (no concatenation, no mask), and one C call per step
for every running sequence's decode token and any prompt chunks. Other architectures run
the model's own transformers modules with one ``DynamicCache`` per sequence and one
forward per sequence in a step (correct for any causal LM, not batched).

Both sample with :func:`shoestring.serve.engine.sample_tokens`, and both keep a prefix
cache of recent prompts when the model runs natively.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shoestring.serve.engine import EngineInfo, Sampling, SlotTable, Work
from shoestring.serve.prefix_cache import PrefixCache

__all__ = ["HFEngine", "NativeEngine", "PREFIX_SLOTS"]

PREFIX_SLOTS = 4
"""Spare slots that hold cached prompt prefixes (each costs one slot of KV memory when used)."""


class NativeEngine:
    """Llama-family models on the native kernel; see the module docstring."""

    def __init__(
        self, model: Any, *, max_seqs: int, context_length: int, dtype: str, threads: int, prefill_chunk: int = 256
    ) -> None:
        from shoestring.serve.native import NativeLlama

        self.native = NativeLlama(model, dtype=dtype, slots=max_seqs + PREFIX_SLOTS, max_len=context_length,
                                  max_tokens=prefill_chunk + max_seqs, threads=threads)  # fmt: skip
        self.slots = SlotTable(max_seqs, self.native.vocab)
        self.prefix = PrefixCache(list(range(max_seqs, max_seqs + PREFIX_SLOTS)))
        self.info = EngineInfo(
            "torch", max_seqs, context_length, prefill_chunk,
            {"kernel": "native (C, one call per step)", "weights": dtype, "activations": "float32",
             "kv_cache": "float32 slots", "threads": threads, "weight_bytes": self.native.weight_bytes},
        )  # fmt: skip
        self.steps = 0
        self.tokens_fed = 0

    def admit(self, prompt: list[int], sampling: Sampling) -> tuple[int, int]:
        slot = self.slots.take(prompt, sampling)
        hit = self.prefix.lookup(prompt)
        if hit is None:
            return slot, 0
        self.native.copy_slot(hit.slot, slot, hit.length)
        return slot, hit.length

    def step(self, work: list[Work]) -> dict[int, int]:
        sizes = [len(w.tokens) for w in work]
        tokens = np.fromiter((t for w in work for t in w.tokens), np.int32, sum(sizes))
        slots = np.repeat(np.array([w.slot for w in work], np.int32), sizes)
        pos = np.concatenate([np.arange(w.start, w.start + n, dtype=np.int32) for w, n in zip(work, sizes, strict=True)])
        ends = np.cumsum(sizes, dtype=np.int32) - 1
        wanted = [i for i, w in enumerate(work) if w.sample]
        logits = self.native.step(tokens, slots, pos, ends[wanted])
        self.steps += 1
        self.tokens_fed += len(tokens)
        for w in work:  # a prompt just completed: keep its KV for later prompts that share its start
            if w.sample and w.start + len(w.tokens) == len(self.slots.prompts[w.slot]):
                spare = self.prefix.offer(self.slots.prompts[w.slot])
                if spare is not None:
                    self.native.copy_slot(w.slot, spare, len(self.slots.prompts[w.slot]))
        return self.slots.sample(logits, [work[i].slot for i in wanted])

    def free(self, slot: int) -> None:
        self.slots.release(slot)

    def stats(self) -> dict[str, float]:
        p = self.prefix
        return {"steps": self.steps, "tokens_fed": self.tokens_fed, "prefix_lookups": p.lookups,
                "prefix_hits": p.hits, "prefix_reused_tokens": p.reused_tokens}  # fmt: skip


class HFEngine:
    """Any transformers causal LM: one ``DynamicCache`` and one forward per sequence per step."""

    def __init__(self, model: Any, *, max_seqs: int, context_length: int, why: str) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.slots = SlotTable(max_seqs, int(model.config.vocab_size))
        self.caches: dict[int, Any] = {}
        self.info = EngineInfo(
            "torch", max_seqs, context_length, 512,
            {"kernel": "transformers modules, one forward per sequence", "weights": str(model.dtype).removeprefix("torch."),
             "native_unavailable": why},
        )  # fmt: skip
        self.steps = 0

    def admit(self, prompt: list[int], sampling: Sampling) -> tuple[int, int]:
        from transformers import DynamicCache

        slot = self.slots.take(prompt, sampling)
        self.caches[slot] = DynamicCache()
        return slot, 0

    def step(self, work: list[Work]) -> dict[int, int]:
        import torch

        rows, slots = [], []
        for w in work:
            ids = torch.tensor([w.tokens], device=self.device)
            positions = torch.arange(w.start, w.start + len(w.tokens), device=self.device)[None]
            cache = self.caches[w.slot]
            try:
                out = self.model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True)
            except Exception:
                cache.crop(w.start)  # layers that ran appended this step's keys: undo, so a retry is clean
                raise
            self.caches[w.slot] = out.past_key_values
            if w.sample:
                rows.append(out.logits[0, -1].float())
                slots.append(w.slot)
        self.steps += 1
        if not rows:
            return {}
        return self.slots.sample(torch.stack(rows), slots)

    def free(self, slot: int) -> None:
        self.caches.pop(slot, None)
        self.slots.release(slot)

    def stats(self) -> dict[str, float]:
        return {"steps": self.steps}
