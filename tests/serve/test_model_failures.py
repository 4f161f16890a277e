"""A model call that raises: its requests get one prompt error (500 / error chunk), the server lives on.

The failures are real exceptions around a real engine's step: a token id outside the
vocabulary (refused when the request takes its slot), or a wrapper that raises inside
``step`` when a chosen token is fed or when decoding passes a position.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shoestring.serve import ServeConfig, create_app, load_for_serving
from shoestring.serve.engine import Engine, Sampling, Work
from shoestring.serve.generation import GenerationScheduler, GenRequest


class Faulty:
    """A real engine whose ``step`` raises RuntimeError when ``cond(work)`` holds."""

    def __init__(self, engine: Engine, cond: Callable[[list[Work]], bool]) -> None:
        self.engine, self.cond, self.info = engine, cond, engine.info

    def admit(self, prompt: list[int], sampling: Sampling) -> tuple[int, int]:
        return self.engine.admit(prompt, sampling)

    def step(self, work: list[Work]) -> dict[int, int]:
        if self.cond(work):
            raise RuntimeError("injected model failure")
        return self.engine.step(work)

    def free(self, slot: int) -> None:
        self.engine.free(slot)

    def stats(self) -> dict[str, float]:
        return self.engine.stats()


def _scheduler(engine: Engine, **kw: Any) -> GenerationScheduler:
    return GenerationScheduler(engine, eos_ids=set(), **kw)


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
def engine(tiny_llama: Path) -> Engine:
    from transformers import AutoModelForCausalLM

    from shoestring.serve.torch_engine import NativeEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    return NativeEngine(model, max_seqs=4, context_length=256, dtype="float32", threads=1)


POISON = 777


def test_prefill_failure_fails_only_its_request_and_the_thread_serves_on(engine: Engine) -> None:
    vocab = engine.native.vocab  # type: ignore[attr-defined]
    s = _scheduler(Faulty(engine, lambda work: any(POISON in w.tokens for w in work)), max_batch_size=4,
                   batch_timeout_s=0.05)  # fmt: skip
    s.start()

    async def run() -> list[Any]:
        loop = asyncio.get_running_loop()
        long = GenRequest(prompt_ids=[1, 2, 3, 4], max_new_tokens=40, loop=loop)
        s.submit(long)
        kind, first = await asyncio.wait_for(long.events.get(), 60)  # decoding when the bad ones join
        assert kind == "token"
        poisoned = GenRequest(prompt_ids=[5, POISON, 6], max_new_tokens=8, loop=loop)
        outside = GenRequest(prompt_ids=[5, vocab + 7, 6], max_new_tokens=8, loop=loop)  # refused at admission
        t0 = time.monotonic()
        s.submit(poisoned)
        s.submit(outside)
        outs = [await _drain(poisoned), await _drain(outside)]
        bad_s = time.monotonic() - t0
        long_toks, long_term = await _drain(long)
        after = GenRequest(prompt_ids=[7, 8, 9], max_new_tokens=5, loop=loop)
        s.submit(after)
        return [outs, bad_s, ([first, *long_toks], long_term), await _drain(after)]

    try:
        outs, bad_s, (long_toks, long_term), (after_toks, after_term) = asyncio.run(run())
    finally:
        s.shutdown()
    for (toks, term), needle in zip(outs, ("injected model failure", "outside the model's vocabulary"), strict=True):
        assert toks == [] and len(term) == 1 and term[0][0] == "error"
        assert "prefill" in term[0][1] and needle in term[0][1]
    assert bad_s < 5.0, "a failed request must hear about it at once, not at its timeout"
    assert long_term == [("done", "length")] and len(long_toks) == 40  # the running sequence was untouched
    assert after_term == [("done", "length")] and len(after_toks) == 5
    assert s.fatal_error is None and s.idle()


def test_decode_failure_fails_each_decoding_request_once_then_recovers(engine: Engine) -> None:
    armed = threading.Event()
    armed.set()
    s = _scheduler(Faulty(engine, lambda work: armed.is_set() and any(w.start >= 10 for w in work)),
                   max_batch_size=4, batch_timeout_s=0.05)  # fmt: skip
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
    for toks, term in outs:
        assert len(term) == 1 and term[0][0] == "error" and "decode step" in term[0][1]
        assert 0 < len(toks) < 30
    assert again_term == [("done", "length")] and len(again_toks) == 12
    assert s.fatal_error is None and s.idle()


def test_cancel_during_prefill_gets_one_terminal_event(engine: Engine) -> None:
    in_prefill, release = threading.Event(), threading.Event()

    def hold(work: list[Work]) -> bool:
        if any(w.start == 0 for w in work):  # a prefill: hold it until the test has cancelled
            in_prefill.set()
            release.wait(10)
        return False

    s = _scheduler(Faulty(engine, hold), max_batch_size=2, batch_timeout_s=0)
    s.start()

    async def run() -> tuple[list[int], list[tuple[str, Any]]]:
        req = GenRequest(prompt_ids=[1, 2, 3], max_new_tokens=50, loop=asyncio.get_running_loop())
        s.submit(req)
        await asyncio.to_thread(in_prefill.wait, 10)
        assert s.running == 1 and s.queue_depth == 0  # off the queue, its prefill running
        req.cancel()
        release.set()
        return await _drain(req)

    try:
        toks, term = asyncio.run(run())
    finally:
        release.set()
        s.shutdown()
    assert toks == [] and term == [("done", "cancelled")]
    assert s.idle()


@pytest.fixture
def poisoned(tiny_llama: Path) -> Iterator[tuple[TestClient, Any]]:
    """A served tiny Llama whose engine raises when the word ' avocado' is in a step's tokens."""
    cfg = ServeConfig(model=str(tiny_llama), model_name="tiny", engine="torch")
    loaded = load_for_serving(cfg)
    poison = set(loaded.tokenizer(" avocado", add_special_tokens=False)["input_ids"])
    loaded.engine = Faulty(loaded.engine, lambda work: any(poison & set(w.tokens) for w in work))
    app = create_app(cfg, loaded)
    with TestClient(app) as c:
        yield c, app


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
