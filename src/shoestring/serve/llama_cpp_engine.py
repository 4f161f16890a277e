"""The ``llama.cpp`` engine: a GGUF file on llama.cpp's own kernels, many sequences in one batch.

Uses llama-cpp-python's low-level binding, not its ``Llama`` class (which decodes one
sequence): one context with ``n_seq_max`` sequences sharing a unified KV cache, and one
``llama_decode`` per scheduler step over a ``llama_batch`` that mixes every running
sequence's decode token with prompt chunks, each token tagged with its sequence id and
position. A finished sequence's cells are released with ``llama_memory_seq_rm``; a prompt
prefix is shared by ``llama_memory_seq_cp``, which in a unified cache tags the same cells
with a second sequence id (no copy).

Logits come back for the tokens that asked for them and are sampled by the same
:func:`~shoestring.serve.engine.sample_tokens` as the torch engine, so greedy decoding is
llama.cpp's argmax (what its greedy sampler returns).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from shoestring.core.errors import ShoestringError
from shoestring.serve.engine import EngineInfo, Sampling, SlotTable, Work
from shoestring.serve.prefix_cache import PrefixCache
from shoestring.serve.torch_engine import PREFIX_SLOTS

__all__ = ["LlamaCppEngine", "KV_BUDGET_BYTES"]

KV_BUDGET_BYTES = 1 << 30
"""llama.cpp allocates (and zeroes) its whole KV cache up front: at most this much (bytes)."""

_PREFIX_TOKENS = 1024
"""Longest prompt prefix kept per spare sequence (tokens), so cached prefixes use a bounded share of the cells."""


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _quiet_log(level: int, text: bytes, user_data: Any) -> None:
    """llama.cpp logs every tensor it loads to stderr; keep the server's stderr readable."""


class LlamaCppEngine:
    """A GGUF model served by llama.cpp; see the module docstring."""

    def __init__(self, gguf: str | Path, *, max_seqs: int, context_length: int, threads: int,
                 prefill_chunk: int = 256) -> None:  # fmt: skip
        try:
            import llama_cpp as L
        except ImportError:
            raise ShoestringError("--engine llama.cpp needs llama-cpp-python: pip install 'shoestring[llamacpp]'") from None
        self.L = L
        L.llama_log_set(_quiet_log, None)
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(gguf).encode(), mparams)
        if not self.model:
            raise ShoestringError(f"llama.cpp could not load {gguf}; is it a GGUF file of a model llama.cpp supports?")
        self.vocab = int(L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model)))
        layers = int(L.llama_model_n_layer(self.model))
        kv_heads = int(L.llama_model_n_head_kv(self.model))
        head_dim = int(L.llama_model_n_embd(self.model)) // max(1, int(L.llama_model_n_head(self.model)))
        per_token = layers * 2 * kv_heads * head_dim * 2  # K and V in float16 (bytes)
        ctx = min(context_length, int(L.llama_model_n_ctx_train(self.model)) or context_length)
        cells = max(ctx, min(max_seqs * ctx, KV_BUDGET_BYTES // max(1, per_token)))
        cells = -(-cells // 256) * 256
        per_step = prefill_chunk + max_seqs
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = cells, per_step, per_step
        cp.n_seq_max = max_seqs + PREFIX_SLOTS
        cp.n_threads = cp.n_threads_batch = threads
        cp.kv_unified = True  # one pool of cells for all sequences: any sequence may grow into free cells
        cp.no_perf = True
        # llama.cpp's default (auto) turns on its flash-attention kernels on CPU, whose numerics
        # flipped SmolLM2 Q4_1's first greedy token ('"' over 'In', margin 0.16) against
        # llama-cpp-python's Llama, which keeps them off; off, the two agree token for token.
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            L.llama_model_free(self.model)
            raise ShoestringError(f"llama.cpp could not create a context of {cells} cells for {gguf}")
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(per_step, 0, 1)
        self.capacity = per_step
        self.slots = SlotTable(max_seqs, self.vocab)
        prefix_tokens = min(_PREFIX_TOKENS, ctx)
        self.prefix = PrefixCache(list(range(max_seqs, max_seqs + PREFIX_SLOTS)))
        self.prefix_tokens = prefix_tokens
        self.info = EngineInfo(
            "llama.cpp", max_seqs, ctx, prefill_chunk,
            {"kernel": f"llama.cpp {getattr(L, '__version__', '?')} (llama_decode, one batch per step)",
             "gguf": str(gguf), "kv_cells": cells, "kv_cache": "float16, unified across sequences",
             "threads": threads},
        )  # fmt: skip
        self.kv_tokens = cells - PREFIX_SLOTS * prefix_tokens
        """Cells the running sequences may use together; the rest is reserved for cached prefixes."""
        self.steps = 0
        self.tokens_fed = 0

    def admit(self, prompt: list[int], sampling: Sampling) -> tuple[int, int]:
        slot = self.slots.take(prompt, sampling)
        self.L.llama_memory_seq_rm(self.mem, slot, -1, -1)
        hit = self.prefix.lookup(prompt)
        if hit is None:
            return slot, 0
        self.L.llama_memory_seq_cp(self.mem, hit.slot, slot, 0, hit.length)
        return slot, hit.length

    def step(self, work: list[Work]) -> dict[int, int]:
        import numpy as np
        import torch

        n = sum(len(w.tokens) for w in work)
        if n > self.capacity:
            raise ValueError(f"{n} tokens in one step; this engine was sized for {self.capacity}")
        b = self.batch
        i = 0
        wanted: list[int] = []
        for w in work:
            for j, tok in enumerate(w.tokens):
                b.token[i], b.pos[i], b.n_seq_id[i] = tok, w.start + j, 1
                b.seq_id[i][0] = w.slot
                b.logits[i] = 0
                i += 1
            if w.sample:
                b.logits[i - 1] = 1
                wanted.append(w.slot)
        b.n_tokens = n
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            what = {1: "no free KV cells for this batch", 2: "aborted", -1: "invalid batch"}.get(rc, "fatal error")
            raise RuntimeError(f"llama_decode returned {rc} ({what})")
        self.steps += 1
        self.tokens_fed += n
        self._offer_prefixes(work)
        if not wanted:
            return {}
        ptr = self.L.llama_get_logits(self.ctx)
        logits = torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(len(wanted), self.vocab)))
        return self.slots.sample(logits, wanted)

    def _offer_prefixes(self, work: list[Work]) -> None:
        for w in work:
            prompt = self.slots.prompts[w.slot]
            if w.sample and w.start + len(w.tokens) == len(prompt):
                head = prompt[: self.prefix_tokens]
                spare = self.prefix.offer(head)
                if spare is not None:
                    self.L.llama_memory_seq_rm(self.mem, spare, -1, -1)
                    self.L.llama_memory_seq_cp(self.mem, w.slot, spare, 0, len(head))

    def free(self, slot: int) -> None:
        self.L.llama_memory_seq_rm(self.mem, slot, -1, -1)
        self.slots.release(slot)

    def stats(self) -> dict[str, float]:
        p = self.prefix
        return {"steps": self.steps, "tokens_fed": self.tokens_fed, "prefix_lookups": p.lookups,
                "prefix_hits": p.hits, "prefix_reused_tokens": p.reused_tokens}  # fmt: skip

    def close(self) -> None:
        """Free the batch, context and model (in that order); safe to call twice."""
        if getattr(self, "ctx", None):
            self.L.llama_batch_free(self.batch)
            self.L.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.L.llama_model_free(self.model)
            self.model = None
