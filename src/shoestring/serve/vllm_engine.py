"""The ``vllm`` engine: vLLM's own scheduler and paged KV cache on a CUDA GPU, behind our routes.

vLLM batches and prefills by itself, so this adapter maps the protocol onto its offline
``LLMEngine``: ``admit`` adds a request with the prompt's token ids (vLLM ignores EOS and
the length limit, the scheduler enforces both), ``step`` runs one ``LLMEngine.step()`` and
hands back each request's newest token (tokens vLLM produced ahead are kept for the next
steps), and ``free`` aborts the request. The server's queue bound, back-pressure, metrics,
streaming and cancellation stay in front of it.

vLLM's PyPI wheels are CUDA builds that pin their own torch; this project pins a CPU
torch, so vLLM is an optional install on GPU machines only. Its absence, or the absence of
a CUDA GPU, is one line at start-up (:func:`vllm_unavailable`).
"""

from __future__ import annotations

import collections
import importlib.util
from typing import Any

from shoestring.core.errors import ShoestringError
from shoestring.serve.engine import EngineFull, EngineInfo, Sampling, Work

__all__ = ["VllmEngine", "vllm_unavailable"]


def vllm_unavailable() -> str | None:
    """Why vLLM cannot serve here, or None when it can."""
    import torch

    if not torch.cuda.is_available():
        return "--engine vllm needs a CUDA GPU and this machine has none (torch sees no CUDA device); use --engine auto, torch or llama.cpp"
    if importlib.util.find_spec("vllm") is None:
        return "--engine vllm needs the vllm package (pip install vllm on the GPU machine); use --engine auto, torch or llama.cpp"
    return None


class VllmEngine:
    """A Hugging Face model folder served by vLLM on the GPU; see the module docstring."""

    def __init__(self, folder: str, *, max_seqs: int, context_length: int, dtype: str) -> None:
        why = vllm_unavailable()
        if why is not None:
            raise ShoestringError(why)
        from vllm import EngineArgs, LLMEngine

        args = EngineArgs(model=folder, max_num_seqs=max_seqs, max_model_len=context_length,
                          dtype="auto" if dtype == "auto" else dtype, enable_prefix_caching=True)  # fmt: skip
        self.engine = LLMEngine.from_engine_args(args)
        self.info = EngineInfo(
            "vllm", max_seqs, context_length, context_length,
            {"kernel": "vLLM (paged attention, its own continuous batching and prefix cache)", "dtype": dtype},
        )  # fmt: skip
        self.free_slots = list(range(max_seqs - 1, -1, -1))
        self.request_of: dict[int, str] = {}
        self.delivered: dict[int, int] = {}
        self.pending: dict[int, collections.deque[int]] = {}
        self._serial = 0

    def admit(self, prompt: list[int], sampling: Sampling) -> tuple[int, int]:
        from vllm import SamplingParams

        if not self.free_slots:
            raise EngineFull()
        slot = self.free_slots.pop()
        self._serial += 1
        rid = f"{slot}-{self._serial}"
        params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
                                max_tokens=self.info.context_length - len(prompt), ignore_eos=True, detokenize=False)  # fmt: skip
        self.engine.add_request(rid, {"prompt_token_ids": prompt}, params)
        self.request_of[slot], self.delivered[slot], self.pending[slot] = rid, 0, collections.deque()
        return slot, 0

    def step(self, work: list[Work]) -> dict[int, int]:
        if not any(self.pending[w.slot] for w in work if w.slot in self.pending):
            slot_of = {rid: slot for slot, rid in self.request_of.items()}
            for out in self.engine.step():
                slot = slot_of.get(out.request_id)
                if slot is None:
                    continue
                ids: Any = out.outputs[0].token_ids  # cumulative: every token generated so far
                self.pending[slot].extend(int(t) for t in ids[self.delivered[slot] :])
                self.delivered[slot] = len(ids)
        return {w.slot: self.pending[w.slot].popleft() for w in work if self.pending.get(w.slot)}

    def free(self, slot: int) -> None:
        rid = self.request_of.pop(slot, None)
        if rid is not None:
            self.engine.abort_request([rid])
            del self.delivered[slot], self.pending[slot]
            self.free_slots.append(slot)

    def stats(self) -> dict[str, float]:
        return {"unfinished": float(self.engine.get_num_unfinished_requests())}
