"""A model call that raises: its requests get one prompt error (500 / error chunk), the server lives on.

The failures are real exceptions inside the model's forward: a token id outside the
vocabulary (the embedding lookup raises IndexError), or a forward pre-hook on a real tiny
Llama that raises when a chosen token is in the prompt or when the cache reaches a length.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shoestring.serve import ServeConfig, create_app, load_for_serving
from shoestring.serve.generation import GenerationScheduler, GenRequest


def _scheduler(model: Any, **kw: Any) -> GenerationScheduler:
    return GenerationScheduler(model, eos_ids=set(), pad_id=0, context_length=256, **kw)


async def _drain(req: GenRequest, settle_s: float = 0.2) -> tuple[list[int], list[tuple[str, Any]]]:
    """Tokens and terminal events of ``req``; waits ``settle_s`` after the first terminal event."""
    toks: list[int] = []
    terminal: list[tuple[str, Any]] = []
    while True:
        try:
            kind, value = await asyncio.wait_for(req.events.get(), 30 if not terminal else settle_s)
        except TimeoutError:
            return toks, terminal
        if kind == "token":
            assert not terminal, "a token after the terminal event"
            toks.append(value)
        else:
            terminal.append((kind, value))


@pytest.fixture
def model(tiny_llama: Path) -> Iterator[Any]:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    yield m


def _raise_when(model: Any, cond: Any) -> Any:
    """A forward pre-hook that raises RuntimeError when ``cond(kwargs)`` holds."""

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if cond(kwargs):
            raise RuntimeError("injected model failure")

    return model.register_forward_pre_hook(hook, with_kwargs=True)


def test_prefill_failure_fails_only_its_group_and_the_thread_serves_on(model: Any) -> None:
    vocab = model.config.vocab_size
    s = _scheduler(model, max_batch_size=4, batch_timeout_s=0.05)
    s.start()

    async def run() -> list[Any]:
        loop = asyncio.get_running_loop()
        long = GenRequest(prompt_ids=[1, 2, 3, 4], max_new_tokens=40, loop=loop)
        s.submit(long)
        kind, first = await asyncio.wait_for(long.events.get(), 60)  # decoding when the bad one joins
        assert kind == "token"
        bad = GenRequest(prompt_ids=[5, vocab + 7, 6], max_new_tokens=8, loop=loop)  # IndexError in the embedding
        t0 = time.monotonic()
        s.submit(bad)
        bad_out = await _drain(bad)
        bad_s = time.monotonic() - t0
        long_toks, long_term = await _drain(long)
        long_out = ([first, *long_toks], long_term)
        after = GenRequest(prompt_ids=[7, 8, 9], max_new_tokens=5, loop=loop)
        s.submit(after)
        return [bad_out, bad_s, long_out, await _drain(after)]

    try:
        (bad_toks, bad_term), bad_s, (long_toks, long_term), (after_toks, after_term) = asyncio.run(run())
    finally:
        s.shutdown()
    assert bad_toks == [] and len(bad_term) == 1 and bad_term[0][0] == "error"
    assert "prefill" in bad_term[0][1] and "IndexError" in bad_term[0][1]
    assert bad_s < 5.0, "the failed request must hear about it at once, not at its timeout"
    assert long_term == [("done", "length")] and len(long_toks) == 40  # the running batch was untouched
    assert after_term == [("done", "length")] and len(after_toks) == 5
    assert s.fatal_error is None and s.idle()


def test_decode_failure_fails_the_running_batch_once_then_recovers(model: Any) -> None:
    armed = threading.Event()
    armed.set()

    def cond(kw: dict[str, Any]) -> bool:
        cache = kw.get("past_key_values")
        return armed.is_set() and kw["input_ids"].shape[1] == 1 and cache is not None and cache.get_seq_length() >= 10

    handle = _raise_when(model, cond)
    s = _scheduler(model, max_batch_size=4, batch_timeout_s=0.05)
    s.start()

    async def run() -> list[Any]:
        loop = asyncio.get_running_loop()
        reqs = [GenRequest(prompt_ids=[1, 2, 3 + i], max_new_tokens=30, loop=loop) for i in range(3)]
        for r in reqs:
            s.submit(r)
        outs = await asyncio.gather(*[_drain(r) for r in reqs])
        armed.clear()
        again = GenRequest(prompt_ids=[1, 2, 3], max_new_tokens=12, loop=loop)
        s.submit(again)
        return [outs, await _drain(again)]

    try:
        outs, (again_toks, again_term) = asyncio.run(run())
    finally:
        s.shutdown()
        handle.remove()
    for toks, term in outs:
        assert len(term) == 1 and term[0][0] == "error" and "decode step" in term[0][1]
        assert 0 < len(toks) < 30
    assert again_term == [("done", "length")] and len(again_toks) == 12
    assert s.fatal_error is None and s.idle()


def test_cancel_during_prefill_gets_one_terminal_event(model: Any) -> None:
    in_prefill, release = threading.Event(), threading.Event()

    def cond(kw: dict[str, Any]) -> bool:
        if kw["input_ids"].shape[1] > 1:  # a prefill: hold it until the test has cancelled
            in_prefill.set()
            release.wait(10)
        return False

    handle = _raise_when(model, cond)
    s = _scheduler(model, max_batch_size=2, batch_timeout_s=0)
    s.start()

    async def run() -> tuple[list[int], list[tuple[str, Any]]]:
        req = GenRequest(prompt_ids=[1, 2, 3], max_new_tokens=50, loop=asyncio.get_running_loop())
        s.submit(req)
        await asyncio.to_thread(in_prefill.wait, 10)
        assert s.running == 1 and s.queue_depth == 0  # off the queue, not yet in the batch
        req.cancel()
        release.set()
        return await _drain(req)

    try:
        toks, term = asyncio.run(run())
    finally:
        release.set()
        s.shutdown()
        handle.remove()
    assert toks == [] and term == [("done", "cancelled")]
    assert s.idle()


@pytest.fixture
def poisoned(tiny_llama: Path) -> Iterator[tuple[TestClient, Any]]:
    """A served tiny Llama whose forward raises when the word ' avocado' is in the prompt."""
    loaded = load_for_serving(ServeConfig(model=str(tiny_llama), model_name="tiny"))
    poison = set(loaded.tokenizer(" avocado", add_special_tokens=False)["input_ids"])
    handle = _raise_when(loaded.model, lambda kw: bool(poison & set(kw["input_ids"].flatten().tolist())))
    app = create_app(ServeConfig(model=loaded.name, model_name="tiny"), loaded)
    with TestClient(app) as c:
        yield c, app
    handle.remove()


def test_http_failure_is_a_prompt_500_or_error_chunk_and_others_still_served(poisoned: tuple[TestClient, Any]) -> None:
    c, app = poisoned
    bad = {"model": "tiny", "prompt": "I like avocado on toast", "max_tokens": 8, "temperature": 0}
    t0 = time.monotonic()
    r = c.post("/v1/completions", json=bad)
    assert r.status_code == 500, r.text
    assert time.monotonic() - t0 < 10
    err = r.json()["error"]
    assert err["type"] == "server_error" and "injected model failure" in err["message"]

    with c.stream("POST", "/v1/completions", json={**bad, "stream": True}) as s:
        assert s.status_code == 200  # headers go out before the model runs: the error comes in-band
        lines = [ln for ln in s.iter_lines() if ln]
    last = json.loads(lines[-1].removeprefix("data: "))
    assert "injected model failure" in last["error"]["message"]

    good = c.post("/v1/completions", json={**bad, "prompt": "I like bread"})
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 8
    assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200
    metrics = c.get("/metrics").text
    assert 'shoestring_model_errors_total{call="prefill"} 2.0' in metrics
    assert app.state.shoestring.scheduler.idle()
