"""The scheduler on every CPU engine: same tokens as the reference, joins, chunked prefill, bounds, sampling."""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import pytest

from shoestring.serve.engine import Engine, Sampling, sample_tokens
from shoestring.serve.generation import GenerationScheduler, GenRequest, QueueFull

PROMPTS = ["The cat sat on", "Hello", "A much longer prompt about the weather in the mountains today", "1 2 3"]
LENGTHS = [12, 20, 7, 16]  # rows finish at different steps, so the batch shrinks mid-flight


def _hf(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _native(model: Any, dtype: str = "float32", **kw: Any) -> Engine:
    from shoestring.serve.torch_engine import NativeEngine

    return NativeEngine(model, max_seqs=kw.pop("max_seqs", 4), context_length=256, dtype=dtype, threads=2, **kw)


async def _collect(s: GenerationScheduler, ids: list[int], n: int, delay: float = 0.0) -> tuple[list[int], str]:
    await asyncio.sleep(delay)
    req = GenRequest(prompt_ids=ids, max_new_tokens=n, loop=asyncio.get_running_loop())
    s.submit(req)
    toks: list[int] = []
    while True:
        kind, value = await asyncio.wait_for(req.events.get(), 60)
        if kind == "token":
            toks.append(value)
        else:
            return toks, value


def _staggered(engine: Engine, prompts: list[list[int]], lengths: list[int]) -> tuple[list[list[int]], list[int]]:
    """Greedy tokens of each prompt, submitted 20 ms apart (the later ones join a running batch)."""
    # No EOS here: a random tiny model may emit it anywhere, and we want every row to run its length.
    s = GenerationScheduler(engine, eos_ids=set(), max_batch_size=4)
    joined: list[int] = []

    class Obs:
        def on_batch(self, size: int) -> None:
            joined.append(size)

        def on_step(self, tokens: int, seconds: float) -> None: ...

        def on_first_token(self, seconds: float) -> None: ...

    s.observer = Obs()
    s.start()

    async def run() -> list[tuple[list[int], str]]:
        return await asyncio.gather(*[_collect(s, x, n, 0.02 * i) for i, (x, n) in enumerate(zip(prompts, lengths, strict=True))])

    try:
        results = asyncio.run(run())
    finally:
        s.shutdown()
    assert all(finish == "length" for _, finish in results)
    assert s.idle()
    return [toks for toks, _ in results], joined


def _generate(model: Any, prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
    import torch

    out = []
    with torch.no_grad():
        for x, n in zip(prompts, lengths, strict=True):
            y = model.generate(torch.tensor([x]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
            out.append(y[0, len(x) :].tolist())
    return out


def _rounded(model: Any, dtype: str) -> Any:
    """A float32 copy of ``model`` whose weights are rounded to ``dtype`` (what the engine stores)."""
    import torch

    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(getattr(torch, dtype)).float())
    return m


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_native_engine_matches_generate_token_for_token(tiny_llama: Path, dtype: str) -> None:
    """Float32 weights: transformers' own generate. Half-precision weights: generate on the
    float32 model with the same rounded weights (the engine computes in float32)."""
    model, tok = _hf(tiny_llama)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    expected = _generate(_rounded(model, dtype), ids, LENGTHS)
    # A 5-token prefill budget splits the long prompts over steps that also decode the others.
    got, joined = _staggered(_native(model, dtype, prefill_chunk=5), ids, LENGTHS)
    assert got == expected
    assert len(joined) >= 2  # more than one prefill step: requests joined a running batch


def test_transformers_fallback_engine_matches_generate(tiny_llama: Path) -> None:
    from shoestring.serve.torch_engine import HFEngine

    model, tok = _hf(tiny_llama)
    ids = [tok(p)["input_ids"] for p in PROMPTS[:3]]
    engine = HFEngine(model, max_seqs=4, context_length=256, why="test")
    got, _ = _staggered(engine, ids, LENGTHS[:3])
    assert got == _generate(model, ids, LENGTHS[:3])


def test_llama_cpp_engine_matches_llama_cpp_own_greedy(tiny_llama: Path, tiny_gguf: Path) -> None:
    from llama_cpp import Llama

    from shoestring.serve.llama_cpp_engine import LlamaCppEngine

    _, tok = _hf(tiny_llama)
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    ref = Llama(model_path=str(tiny_gguf), n_ctx=256, n_threads=2, verbose=False)
    expected = []
    for x, n in zip(ids, LENGTHS, strict=True):
        out: list[int] = []
        for t in ref.generate(x, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(t))
            if len(out) == n:
                break
        expected.append(out)
    ref.close()
    engine = LlamaCppEngine(tiny_gguf, max_seqs=4, context_length=256, threads=2, prefill_chunk=5)
    try:
        got, joined = _staggered(engine, ids, LENGTHS)
    finally:
        engine.close()
    assert got == expected
    assert len(joined) >= 2


def test_prefix_cache_reuses_a_shared_prompt_start_with_the_same_tokens(tiny_llama: Path) -> None:
    model, tok = _hf(tiny_llama)
    system = tok("You are a careful assistant who answers questions about the weather in the mountains, briefly and politely.")["input_ids"]
    a, b = system + tok(" Is it cold?")["input_ids"], system + tok(" Will it snow tomorrow?")["input_ids"]
    engine = _native(model)
    s = GenerationScheduler(engine, eos_ids=set(), max_batch_size=4)
    s.start()

    async def one(ids: list[int]) -> tuple[list[int], int]:
        req = GenRequest(prompt_ids=ids, max_new_tokens=8, loop=asyncio.get_running_loop())
        s.submit(req)
        toks = []
        while (ev := await asyncio.wait_for(req.events.get(), 60))[0] == "token":
            toks.append(ev[1])
        return toks, req.cached_prompt_tokens

    async def run() -> list[tuple[list[int], int]]:
        return [await one(a), await one(b)]

    try:
        (toks_a, cached_a), (toks_b, cached_b) = asyncio.run(run())
    finally:
        s.shutdown()
    assert cached_a == 0 and cached_b >= len(system) - 1  # b's shared start came from a's KV
    assert engine.stats()["prefix_hits"] == 1
    assert [toks_a, toks_b] == _generate(model, [a, b], [8, 8])


def test_cancel_and_queue_bound(tiny_llama: Path) -> None:
    model, tok = _hf(tiny_llama)
    s = GenerationScheduler(_native(model, max_seqs=2), eos_ids=set(), max_batch_size=2, max_queue=3)
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
        assert sorted(s.engine.slots.free_slots) == [0, 1]  # type: ignore[attr-defined]  # both slots freed
    finally:
        s.shutdown()


def test_timeout_and_sampling_with_seed(tiny_llama: Path) -> None:
    model, tok = _hf(tiny_llama)
    s = GenerationScheduler(_native(model), eos_ids=set(), max_batch_size=4)
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


def test_fused_sampler_draws_from_the_distribution_and_respects_top_p() -> None:
    import torch

    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1, 1e-9]] * 3))
    g = torch.Generator().manual_seed(0)
    plans = [Sampling(1.0, 1.0, 0), Sampling(1.0, 0.5, 1), Sampling(0.0)]
    counts = torch.zeros(3, 4)
    for _ in range(3000):
        toks = sample_tokens(logits, plans, [g, torch.Generator().manual_seed(_), None])
        for row, t in enumerate(toks):
            counts[row, t] += 1
    freq = counts / 3000
    assert torch.allclose(freq[0, :3], torch.tensor([0.6, 0.3, 0.1]), atol=0.03)  # exact categorical draws
    assert freq[1, 0] == 1.0  # top_p 0.5 keeps only the most likely token
    assert freq[2, 0] == 1.0  # temperature 0 is greedy
    again = [sample_tokens(logits[:1], plans[:1], [torch.Generator().manual_seed(5)]) for _ in range(2)]
    assert again[0] == again[1]  # a seeded row is reproducible
