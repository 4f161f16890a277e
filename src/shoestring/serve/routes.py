"""The /v1 endpoints: OpenAI chat/completions (streaming too), embeddings, and task endpoints."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from shoestring.serve.errors import api_error
from shoestring.serve.generation import SHUTTING_DOWN, GenRequest, NotAccepting, QueueFull
from shoestring.serve.openapi import ENDPOINT_TASK
from shoestring.serve.protocol import (
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    EmbeddingRequest,
    FillMaskRequest,
    RecommendRequest,
    error_body,
)
from shoestring.serve.streaming import race_disconnect, sse

if TYPE_CHECKING:
    from shoestring.serve.state import ServerState

__all__ = ["router"]

router = APIRouter()


def _state(request: Request) -> ServerState:
    return request.app.state.shoestring  # type: ignore[no-any-return]


def _task_state(request: Request, model: str | None) -> ServerState:
    """The server's state for a task route, after checking the request's ``model`` names the
    served one and the served model's task is the route's (:data:`~shoestring.serve.openapi.ENDPOINT_TASK`)."""
    state = _state(request)
    state.check_model(model)
    state.require_task(ENDPOINT_TASK[request.scope["route"].path])
    return state


def _admit(state: ServerState, submit: Any) -> Any:
    """Run a scheduler submit; a full queue is 429 and a draining server 503, both with Retry-After."""
    if not state.accepts():
        state.metrics.rejected.labels("draining").inc()
        raise api_error(503, "server is draining or unhealthy; retry on another replica", "unavailable", retry_after=5)
    try:
        return submit()
    except QueueFull:
        state.metrics.rejected.labels("queue_full").inc()
        raise api_error(
            429,
            f"server queue is full ({state.cfg.max_queue} requests, --max-queue); retry later",
            "queue_full",
            retry_after=state.scheduler.retry_after_s(),
        ) from None
    except NotAccepting as err:
        state.metrics.rejected.labels("draining").inc()
        raise api_error(503, f"not accepting requests: {err}", "unavailable", retry_after=5) from None


class _Detokenizer:
    """Turns a growing token list into text deltas; holds back text a stop string may start."""

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tok, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.sent = 0
        self.text = ""
        self.hit_stop = False

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        self.text = text
        for s in self.stops:
            at = text.find(s)
            if at >= 0:
                self.text, self.hit_stop = text[:at], True
        hold = 0 if self.hit_stop else max((len(s) - 1 for s in self.stops), default=0)
        end = max(self.sent, len(self.text) - hold)
        delta, self.sent = self.text[self.sent : end], end
        return delta

    def rest(self) -> str:
        delta, self.sent = self.text[self.sent :], len(self.text)
        return delta


def _chat_prompt(state: ServerState, body: ChatRequest) -> list[int]:
    tok = state.loaded.tokenizer
    if not getattr(tok, "chat_template", None):
        raise api_error(400, "this model has no chat template; use /v1/completions with a plain prompt", "no_chat_template")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(out["input_ids"])


def _plan(state: ServerState, prompt_ids: list[int], max_tokens: int | None) -> int:
    """The max_tokens to generate, after checking prompt + max_tokens against the context."""
    ctx = state.loaded.context_length
    n = len(prompt_ids)
    if n == 0:
        raise api_error(400, "the prompt is empty", "empty_prompt")
    if max_tokens is None:
        if n >= ctx:
            raise api_error(400, f"the prompt is {n} tokens; the model's context is {ctx} tokens", "context_length_exceeded")
        return min(state.cfg.default_max_tokens, ctx - n)
    if n + max_tokens > ctx:
        raise api_error(
            400,
            f"the prompt is {n} tokens and max_tokens is {max_tokens}; together they exceed the model's context of "
            f"{ctx} tokens: shorten the prompt or lower max_tokens",
            "context_length_exceeded",
        )
    return max_tokens


async def _generate(
    request: Request, state: ServerState, body: Any, prompt_ids: list[int], max_tokens: int | None, chat: bool
) -> Any:
    max_new = _plan(state, prompt_ids, max_tokens)
    req = GenRequest(
        prompt_ids=prompt_ids,
        max_new_tokens=max_new,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        deadline=time.monotonic() + state.cfg.request_timeout_s,
        loop=asyncio.get_running_loop(),
    )
    _admit(state, lambda: state.scheduler.submit(req))
    state.metrics.prompt_tokens.inc(len(prompt_ids))
    detok = _Detokenizer(state.loaded.tokenizer, body.stops())
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    name = state.loaded.name

    async def events() -> AsyncIterator[tuple[str, str]]:
        """(text delta, "") while generating, then ("", finish_reason)."""
        while True:
            kind, value = await req.events.get()
            if kind == "token":
                delta = detok.push(value)
                if detok.hit_stop:
                    req.cancel()
                    yield delta, ""
                    yield "", "stop"
                    return
                if delta:
                    yield delta, ""
            elif kind == "done":
                yield detok.rest(), ""
                yield "", "length" if value == "length" else "stop"
                return
            else:
                if value == "timeout" or value == SHUTTING_DOWN:
                    what = "timed out (--request-timeout-s)" if value == "timeout" else "stopped: the server is shutting down"
                    raise api_error(503, f"generation {what}", "timeout" if value == "timeout" else "unavailable", retry_after=1)
                # The model raised on this request's batch, or the model thread died: a server fault, 500.
                raise api_error(500, f"generation failed: {value}", "server_error")

    def usage() -> dict[str, int]:
        return {"prompt_tokens": len(prompt_ids), "completion_tokens": req.generated,
                "total_tokens": len(prompt_ids) + req.generated}  # fmt: skip

    def observe() -> None:
        state.observe_drift(
            {"input_tokens": len(prompt_ids), "input_chars": len(detok.tok.decode(prompt_ids))},
            {"output_tokens": req.generated},
        )

    def chunk(delta: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        if chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta else {})
            choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name, "choices": [choice]}
        choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        return {"id": rid, "object": "text_completion", "created": created, "model": name, "choices": [choice]}

    if body.stream:

        async def stream() -> AsyncIterator[bytes]:
            try:
                if chat:
                    yield sse(chunk(None, None, role=True))
                async for delta, finish in events():
                    if delta or finish:
                        yield sse(chunk(delta, finish or None))
                if (body.stream_options or {}).get("include_usage"):
                    last = chunk(None, None)
                    last["choices"], last["usage"] = [], usage()
                    yield sse(last)
                yield sse("[DONE]")
                observe()
            except Exception as err:  # headers are sent: report the failure in-band, as OpenAI does
                message = getattr(err, "message", str(err))
                yield sse(error_body(message, "server_error", getattr(err, "code", None)))
            finally:
                req.cancel()  # the client went away or we finished: free the batch slot

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def collect() -> tuple[str, str]:
        parts, finish = [], "stop"
        async for delta, fin in events():
            parts.append(delta)
            finish = fin or finish
        return "".join(parts), finish

    try:
        text, finish = await race_disconnect(request, collect(), state.cfg.request_timeout_s + 1)
    finally:
        req.cancel()
    observe()
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}
        return {"id": rid, "object": "chat.completion", "created": created, "model": name, "choices": [choice],
                "usage": usage()}  # fmt: skip
    choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {"id": rid, "object": "text_completion", "created": created, "model": name, "choices": [choice],
            "usage": usage()}  # fmt: skip


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request) -> Any:
    state = _task_state(request, body.model)
    prompt = _chat_prompt(state, body)
    return await _generate(request, state, body, prompt, body.max_completion_tokens or body.max_tokens, chat=True)


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Any:
    state = _task_state(request, body.model)
    text = body.prompt_text()
    if text is None:
        raise api_error(400, "send one prompt per request (a list of several prompts is not supported)", param="prompt")
    if body.echo:
        raise api_error(400, "echo is not supported", param="echo")
    ids = state.loaded.tokenizer(text, add_special_tokens=True)["input_ids"]
    return await _generate(request, state, body, list(ids), body.max_tokens, chat=False)


async def _run_task(request: Request, state: ServerState, items: list[Any]) -> list[Any]:
    """Submit items to the task batcher (one admission each) and await all results."""
    if not items:
        raise api_error(400, "input is empty", param="input")
    if len(items) > state.cfg.max_batch_size * 8:
        raise api_error(400, f"at most {state.cfg.max_batch_size * 8} inputs per request", param="input")
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[Any]] = []
    try:
        for item in items:
            futures.append(_admit(state, lambda item=item: state.scheduler.submit(item, loop)))
    except Exception:
        for f in futures:
            f.cancel()
        raise
    try:
        return list(await race_disconnect(request, asyncio.gather(*futures), state.cfg.request_timeout_s))
    except (ValueError, TypeError, KeyError, IndexError) as err:
        raise api_error(400, f"the model rejected the input: {err}", param="input") from None
    finally:
        for f in futures:
            f.cancel()


def _check_texts(texts: list[str]) -> None:
    if any(not isinstance(t, str) or not t for t in texts):
        raise api_error(400, "every input must be a non-empty string", param="input")


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
    state = _task_state(request, body.model)
    texts = body.texts()
    _check_texts(texts)
    results = await _run_task(request, state, texts)
    for _, n in results:
        state.observe_drift({"input_tokens": n})
    data = [{"object": "embedding", "index": i, "embedding": vec} for i, (vec, _) in enumerate(results)]
    tokens = sum(n for _, n in results)
    return JSONResponse({"object": "list", "data": data, "model": state.loaded.name,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})  # fmt: skip


@router.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request) -> JSONResponse:
    state = _task_state(request, body.model)
    texts = body.texts()
    _check_texts(texts)
    results = await _run_task(request, state, texts)
    for r in results:
        state.observe_drift({"input_tokens": r["tokens"]}, {"label": r["label"], "confidence": r["score"]})
    data = [{"index": i, "label": r["label"], "score": r["score"], "scores": r["scores"]} for i, r in enumerate(results)]
    return JSONResponse({"object": "list", "data": data, "model": state.loaded.name})


@router.post("/v1/fill-mask")
async def fill_mask(body: FillMaskRequest, request: Request) -> JSONResponse:
    state = _task_state(request, body.model)
    mask = state.loaded.tokenizer.mask_token
    if not mask or mask not in body.input:
        raise api_error(400, f"input has no mask token; put {mask} where a word is missing", param="input")
    (result,) = await _run_task(request, state, [(body.input, body.top_k)])
    return JSONResponse({"object": "list", "data": result, "model": state.loaded.name})


@router.post("/v1/recommend")
async def recommend(body: RecommendRequest, request: Request) -> JSONResponse:
    state = _task_state(request, body.model)
    (items,) = await _run_task(request, state, [(list(body.history), body.k)])
    state.observe_drift({"history_length": len(body.history)})
    data = []
    for i, it in enumerate(items):
        # Trained recommenders return (item_id, score) pairs; a bare item id is accepted too.
        if isinstance(it, (tuple, list)) and len(it) == 2:
            data.append({"rank": i + 1, "item": it[0], "score": float(it[1])})
        else:
            data.append({"rank": i + 1, "item": it})
    return JSONResponse({"object": "list", "data": data, "model": state.loaded.name})
