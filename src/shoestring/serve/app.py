"""The FastAPI application: state, middleware (body limit, auth, metrics), health and metrics.

``create_app(cfg, loaded)`` builds the app around an already loaded model so tests can
drive it in-process; ``shoestring serve`` loads the model and runs it under uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shoestring.core.auth import api_keys as shared_api_keys
from shoestring.core.auth import bearer_token, token_matches
from shoestring.serve.drift import DriftMonitor, drift_level, load_reference
from shoestring.serve.metrics import ServerMetrics
from shoestring.serve.protocol import error_body

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from shoestring.serve.backends import LoadedModel
    from shoestring.serve.config import ServeConfig

__all__ = ["ServerState", "api_error", "create_app", "api_keys"]

ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/classify",
    "/v1/fill-mask",
    "/v1/recommend",
    "/metrics",
    "/health",
    "/ready",
)
_OPEN_PATHS = ("/health", "/ready")


class ApiError(Exception):
    """An error answered as an OpenAI error envelope with ``status`` (and maybe Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        code: str | None = None,
        retry_after: int | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.retry_after, self.param = retry_after, param


def api_error(
    status: int, message: str, code: str | None = None, retry_after: int | None = None, param: str | None = None
) -> ApiError:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "server_error")
    return ApiError(status, message, kind, code, retry_after, param)


def _error_response(err: ApiError) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return JSONResponse(error_body(err.message, err.kind, err.code, err.param), status_code=err.status, headers=headers)


def api_keys(cfg: ServeConfig) -> list[bytes]:
    """Keys from the config plus ``$SHOESTRING_API_KEYS`` (comma-separated)."""
    return shared_api_keys(cfg.api_key)


class ServerState:
    """Everything the routes share: config, model, schedulers, metrics, drift, drain flag."""

    def __init__(self, cfg: ServeConfig, loaded: LoadedModel) -> None:
        from shoestring.serve import backends
        from shoestring.serve.generation import GenerationScheduler

        self.cfg, self.loaded = cfg, loaded
        self.metrics = ServerMetrics()
        self.keys = api_keys(cfg)
        self.draining = False
        self.drift: DriftMonitor | None = None
        if cfg.reference:
            self.drift = DriftMonitor(load_reference(cfg.reference), cfg.drift_window, cfg.drift_min_samples)
        self.scheduler: Any = None
        common: dict[str, Any] = {
            "max_batch_size": cfg.max_batch_size,
            "max_queue": cfg.max_queue,
            "batch_timeout_s": cfg.batch_timeout_ms / 1000,
            "observer": self.metrics,
        }
        if loaded.task == "causal-lm":
            tok = loaded.tokenizer
            eos = getattr(loaded.model.generation_config, "eos_token_id", None)
            eos_ids = {*(eos if isinstance(eos, list) else [eos]), tok.eos_token_id} - {None}
            self.scheduler = GenerationScheduler(
                loaded.model, eos_ids=eos_ids, pad_id=tok.pad_token_id, context_length=loaded.context_length, **common
            )
        else:
            fns: dict[str, Callable[[list[Any]], list[Any]]] = {
                "embedding": lambda items: backends.embed(loaded, items),
                "classification": lambda items: backends.classify(loaded, items),
                "masked-lm": lambda items: backends.fill_mask(loaded, items),
                "recommendation": lambda items: [loaded.recommender.recommend(h, k) for h, k in items],  # type: ignore[union-attr]
            }
            self.scheduler = backends.TaskBatcher(fns[loaded.task], **common)

    def accepts(self) -> bool:
        return not self.draining and getattr(self.scheduler, "fatal_error", None) is None

    def model_ids(self) -> set[str]:
        return {self.loaded.name, self.cfg.model}

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested not in self.model_ids():
            raise api_error(
                404, f"model '{requested}' is not served here; this server serves '{self.loaded.name}'", "model_not_found"
            )

    def require_task(self, *tasks: str) -> None:
        if self.loaded.task not in tasks:
            raise api_error(
                400,
                f"this endpoint needs a {' or '.join(tasks)} model but this server serves a {self.loaded.task} model "
                f"('{self.loaded.name}'); start `shoestring serve` with a suitable model",
                "wrong_task",
            )

    def observe_drift(self, inputs: dict[str, Any], predictions: dict[str, Any] | None = None) -> None:
        if self.drift is not None:
            self.drift.observe(inputs, predictions)

    def refresh_gauges(self) -> None:
        m = self.metrics
        m.refresh()
        m.queue_depth.set(self.scheduler.queue_depth)
        m.running.set(self.scheduler.running)
        m.ready.set(1 if self.accepts() else 0)
        if self.drift is not None:
            m.drift_samples.set(self.drift.samples())
            for name, value in self.drift.scores().items():
                m.drift_psi.labels(name).set(value)
                m.drift_level.labels(name).set(drift_level(value))


class _GuardMiddleware:
    """Pure ASGI: body-size limit, API-key check, and per-endpoint status/latency metrics.

    Pure ASGI (not BaseHTTPMiddleware) so streaming responses pass through unbuffered and
    the latency is measured to the last byte sent.
    """

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        started = time.monotonic()
        status_box = [500]
        too_big = [False]
        sent_start = [False]

        async def send_wrapper(message: Any) -> None:
            if too_big[0]:
                return  # the app's answer to a truncated body is replaced by our 413
            if message["type"] == "http.response.start":
                status_box[0], sent_start[0] = message["status"], True
            await send(message)

        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        err = self._check(path, headers)
        try:
            if err is not None:
                await _error_response(err)(scope, receive, send_wrapper)
                return
            try:
                await self.app(scope, self._limited(receive, too_big), send_wrapper)
            except Exception:
                if not too_big[0]:
                    raise
            if too_big[0] and not sent_start[0]:
                limit = self.state.cfg.max_body_bytes
                too_big[0] = False
                await _error_response(api_error(413, f"request body exceeds {limit} bytes (--max-body-bytes)"))(
                    scope, receive, send_wrapper
                )
        finally:
            self.state.metrics.requests.labels(endpoint, str(status_box[0])).inc()
            self.state.metrics.latency.labels(endpoint).observe(time.monotonic() - started)

    def _check(self, path: str, headers: dict[str, bytes]) -> ApiError | None:
        limit = self.state.cfg.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return api_error(413, f"request body is {int(length)} bytes; the limit is {limit} bytes (--max-body-bytes)")
        token = bearer_token(headers.get("authorization", b""))
        if self.state.keys and path not in _OPEN_PATHS and not token_matches(token, self.state.keys):
            return api_error(401, "missing or wrong API key; send 'Authorization: Bearer <key>'", "invalid_api_key")
        return None

    def _limited(self, receive: Any, too_big: list[bool]) -> Any:
        """Count body bytes as they arrive (chunked bodies have no Content-Length).

        Past the limit the app is told the client left, so it stops reading; the
        middleware then answers 413 itself.
        """
        limit, seen = self.state.cfg.max_body_bytes, [0]

        async def wrapped() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    too_big[0] = True
                    return {"type": "http.disconnect"}
            return message

        return wrapped


def create_app(cfg: ServeConfig, loaded: LoadedModel) -> FastAPI:
    """The ASGI app serving ``loaded``; the model threads start with the app's lifespan."""
    from shoestring.serve.routes import router

    state = ServerState(cfg, loaded)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.scheduler.start()
        yield
        # uvicorn has already waited for in-flight requests (graceful drain); stop the model thread.
        state.draining = True
        await asyncio.to_thread(state.scheduler.shutdown)

    app = FastAPI(title="shoestring serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.shoestring = state
    app.add_middleware(_GuardMiddleware, state=state)  # type: ignore[arg-type]

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid body"}
        # Drop "body" and the union-member names pydantic adds ("str", "list[str]") from the location.
        parts = [str(p) for p in first.get("loc", ()) if p != "body" and not _is_type_name(str(p))]
        loc = ".".join(parts) or "body"
        if first.get("type") == "json_invalid":
            msg = "request body is not valid JSON"
        elif loc == "body":
            msg = "request body must be a JSON object (send Content-Type: application/json)"
        else:
            msg = f"{loc}: {first.get('msg')}"
        return JSONResponse(error_body(msg, "invalid_request_error", param=loc), status_code=400)

    @app.get("/health")
    async def health() -> JSONResponse:
        fatal = getattr(state.scheduler, "fatal_error", None)
        body = {"status": "error" if fatal else "ok", "model": loaded.name, "task": loaded.task, "error": fatal}
        return JSONResponse(body, status_code=500 if fatal else 200)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        ok = state.accepts()
        body = {"ready": ok, "draining": state.draining, "queue_depth": state.scheduler.queue_depth}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        state.refresh_gauges()
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        card = {"id": loaded.name, "object": "model", "created": 0, "owned_by": "shoestring", "task": loaded.task}
        return JSONResponse({"object": "list", "data": [card]})

    app.include_router(router)
    return app


def _is_type_name(part: str) -> bool:
    return part in {"str", "int", "float", "bool", "dict", "list"} or part.startswith(("list[", "dict[", "function-"))


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event line as the OpenAI streaming API sends it."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def wait_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def race_disconnect(request: Request, work: Awaitable[Any], timeout_s: float) -> Any:
    """Await ``work``; raise CancelledError-like 499 on disconnect and 503 on timeout."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        if watcher in done:
            raise api_error(499, "client closed the request", "client_closed")
        raise api_error(503, f"request took longer than {timeout_s:g} s (--request-timeout-s)", "timeout", retry_after=1)
    finally:
        watcher.cancel()
