"""The FastAPI application: state, middleware (body limit, auth, metrics), health and metrics.

``create_app(cfg, loaded)`` builds the app around an already loaded model so tests can
drive it in-process; ``shoestring serve`` loads the model and runs it under uvicorn.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from shoestring.core.auth import bearer_token, token_matches
from shoestring.serve.errors import ApiError, api_error, error_response
from shoestring.serve.openapi import OPEN_PATHS, server_openapi
from shoestring.serve.protocol import error_body
from shoestring.serve.routes import router
from shoestring.serve.state import ServerState

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from shoestring.serve.backends import LoadedModel
    from shoestring.serve.config import ServeConfig

__all__ = ["create_app"]

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
        cut: list[ApiError | None] = [None]  # why the body was cut short: too big (413) or too slow (408)
        sent_start = [False]

        async def send_wrapper(message: Any) -> None:
            if cut[0] is not None:
                return  # the app's answer to a cut body is replaced by ours
            if message["type"] == "http.response.start":
                status_box[0], sent_start[0] = message["status"], True
            await send(message)

        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        err = self._check(path, headers)
        try:
            if err is not None:
                await error_response(err)(scope, receive, send_wrapper)
                return
            try:
                await self.app(scope, self._limited(receive, cut), send_wrapper)
            except Exception:
                if cut[0] is None:
                    raise
            why, cut[0] = cut[0], None
            if why is not None and not sent_start[0]:
                response = error_response(why)
                if why.status == 408:
                    response.headers["Connection"] = "close"
                await response(scope, receive, send_wrapper)
        finally:
            self.state.metrics.requests.labels(endpoint, str(status_box[0])).inc()
            self.state.metrics.latency.labels(endpoint).observe(time.monotonic() - started)

    def _check(self, path: str, headers: dict[str, bytes]) -> ApiError | None:
        limit = self.state.cfg.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return api_error(413, f"request body is {int(length)} bytes; the limit is {limit} bytes (--max-body-bytes)")
        token = bearer_token(headers.get("authorization", b""))
        if self.state.keys and path not in OPEN_PATHS and not token_matches(token, self.state.keys):
            return api_error(401, "missing or wrong API key; send 'Authorization: Bearer <key>'", "invalid_api_key")
        return None

    def _limited(self, receive: Any, cut: list[ApiError | None]) -> Any:
        """Count body bytes as they arrive (chunked bodies have no Content-Length) and bound the
        time the whole body may take (``body_timeout_s`` from the headers).

        Past either limit the app is told the client left, so it stops reading; the middleware
        then answers 413 or 408 itself. Once the body is complete, ``receive`` passes through
        untimed (a streaming response listens on it for the client's disconnect).
        """
        cfg = self.state.cfg
        limit, seen, done = cfg.max_body_bytes, [0], [False]
        deadline = time.monotonic() + cfg.body_timeout_s

        async def wrapped() -> dict[str, Any]:
            if done[0]:
                return await receive()  # type: ignore[no-any-return]
            try:
                message: dict[str, Any] = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                cut[0] = api_error(408, f"the request body did not arrive within {cfg.body_timeout_s:g} s "
                                        "(--body-timeout-s); send it at once")  # fmt: skip
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    cut[0] = api_error(413, f"request body exceeds {limit} bytes (--max-body-bytes)")
                    return {"type": "http.disconnect"}
                done[0] = not message.get("more_body", False)
            return message

        return wrapped


def create_app(cfg: ServeConfig, loaded: LoadedModel) -> FastAPI:
    """The ASGI app serving ``loaded``; the model threads start with the app's lifespan."""
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
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own errors (unknown route, wrong method, an unparseable body) in the OpenAI envelope too.
        message = {404: f"no route {request.url.path}; see GET /v1/models and /openapi.json",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(err.status_code)  # fmt: skip
        if err.status_code == 400 and "parsing the body" in str(err.detail):
            message = "request body is not valid JSON (or not UTF-8)"
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        body = error_body(message or str(err.detail), kind)
        return JSONResponse(body, status_code=err.status_code, headers=getattr(err, "headers", None))

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
        return JSONResponse({"object": "list", "data": [state.model_card()]})

    app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = server_openapi(app, state)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _is_type_name(part: str) -> bool:
    return part in {"str", "int", "float", "bool", "dict", "list"} or part.startswith(("list[", "dict[", "function-"))
