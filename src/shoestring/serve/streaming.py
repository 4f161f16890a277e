"""Streaming helpers for the routes: server-sent events and racing work against a disconnect."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

from fastapi import Request

from shoestring.serve.errors import api_error

__all__ = ["race_disconnect", "sse", "wait_disconnect"]


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
