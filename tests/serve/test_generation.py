"""The continuous-batching scheduler: same tokens as Hugging Face generate, joins, drops, bounds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from shoestring.serve.generation import GenerationScheduler, GenRequest, QueueFull

PROMPTS = ["The cat sat on", "Hello", "A much longer prompt about the weather in the mountains today", "1 2 3"]


def _load(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _scheduler(model: Any, tok: Any, **kw: Any) -> GenerationScheduler:
    return GenerationScheduler(model, eos_ids={tok.eos_token_id}, pad_id=tok.pad_token_id, context_length=256, **kw)


async def _collect(s: GenerationScheduler, ids: list[int], n: int, delay: float = 0.0) -> tuple[list[int], str]:
    await asyncio.sleep(delay)
    req = GenRequest(prompt_ids=ids, max_new_tokens=n, loop=asyncio.get_running_loop())
    s.submit(req)
    toks: list[int] = []
    while True:
        kind, value = await req.events.get()
        if kind == "token":
            toks.append(value)
        else:
            return toks, value


def test_batched_staggered_requests_match_generate_token_for_token(tiny_llama: Path) -> None:
    import torch

    model, tok = _load(tiny_llama)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    lengths = [12, 20, 7, 16]  # rows finish at different steps, so the batch shrinks mid-flight
    expected = []
    with torch.no_grad():
        for x, n in zip(ids, lengths, strict=True):
            out = model.generate(torch.tensor([x]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
            expected.append(out[0, len(x) :].tolist())
    # No EOS here: a random tiny model may emit it anywhere, and we want every row to run its length.
    s = GenerationScheduler(model, eos_ids=set(), pad_id=tok.pad_token_id, context_length=256, max_batch_size=4)
    s.start()
    joined: list[int] = []

    class Obs:
        def on_batch(self, size: int) -> None:
            joined.append(size)

        def on_step(self, tokens: int, seconds: float) -> None: ...

        def on_first_token(self, seconds: float) -> None: ...

    s.observer = Obs()

    async def run() -> list[tuple[list[int], str]]:
        # The 2nd-4th requests arrive while the first is decoding: they join the running batch.
        return await asyncio.gather(*[_collect(s, x, n, 0.02 * i) for i, (x, n) in enumerate(zip(ids, lengths, strict=True))])

    try:
        results = asyncio.run(run())
    finally:
        s.shutdown()
    for (toks, finish), exp in zip(results, expected, strict=True):
        assert finish == "length"
        assert toks == exp
    assert len(joined) >= 2  # more than one prefill: requests joined a running batch


def test_cancel_and_queue_bound(tiny_llama: Path) -> None:
    model, tok = _load(tiny_llama)
    s = _scheduler(model, tok, max_batch_size=2, max_queue=3)
    ids = tok("hello there")["input_ids"]
    reqs = [GenRequest(prompt_ids=ids, max_new_tokens=200) for _ in range(3)]
    for r in reqs:
        s.submit(r)
    with pytest.raises(QueueFull):
        s.submit(GenRequest(prompt_ids=ids, max_new_tokens=5))
    assert s.retry_after_s() >= 1
    s.start()
    try:
        deadline = time.monotonic() + 10
        while s.running < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert s.running == 2 and s.queue_depth == 1
        for r in reqs:
            r.cancel()
        while not s.idle() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert s.idle(), "cancelled requests must leave the batch and the queue"
        assert all(r.generated < 200 for r in reqs)
    finally:
        s.shutdown()


def test_timeout_and_sampling_with_seed(tiny_llama: Path) -> None:
    model, tok = _load(tiny_llama)
    s = _scheduler(model, tok, max_batch_size=4)
    s.start()
    ids = tok("once upon a time")["input_ids"]

    async def one(**kw: Any) -> tuple[list[int], tuple[str, Any]]:
        req = GenRequest(prompt_ids=ids, max_new_tokens=8, loop=asyncio.get_running_loop(), **kw)
        s.submit(req)
        toks = []
        while True:
            kind, value = await req.events.get()
            if kind == "token":
                toks.append(value)
            else:
                return toks, (kind, value)

    async def run() -> list[Any]:
        return await asyncio.gather(
            one(temperature=1.0, seed=7), one(temperature=1.0, seed=7), one(deadline=time.monotonic() - 1)
        )

    try:
        a, b, late = asyncio.run(run())
    finally:
        s.shutdown()
    assert a == b and len(a[0]) == 8  # same seed, same sample, even inside one batch
    assert late == ([], ("error", "timeout"))
