"""Who may use the dashboard: API keys (shared with ``shoestring serve``), a CSRF token, the Host check.

* **Keys.** With keys configured (``--api-key`` or ``$SHOESTRING_API_KEYS``) every request
  but ``/health``, ``/login`` and ``/static`` needs one: ``Authorization: Bearer KEY``, or
  the ``shoestring_ui_key`` cookie that ``/login`` (or opening any page with ``?key=KEY``,
  the link ``shoestring ui`` prints) sets. Keys are compared by
  :func:`shoestring.core.auth.token_matches` (constant time, every key).
* **CSRF.** Launching and cancelling (every POST) also need the per-process token the pages
  carry, so another site open in the same browser cannot start runs through it.
* **Host.** Bound to a loopback address, the dashboard answers only requests whose Host
  header names a loopback address, which defeats DNS-rebinding pages.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from shoestring.core.auth import api_keys, bearer_token, is_loopback, token_matches

__all__ = ["COOKIE", "Guard"]

COOKIE = "shoestring_ui_key"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
OPEN_PREFIXES = ("/health", "/login", "/static/", "/favicon")


def _host_name(host_header: str) -> str:
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[: h.index("]") + 1] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class Guard:
    """Pure ASGI middleware applying the three checks above."""

    def __init__(self, app: Any | None, *, keys: list[str], bind_host: str) -> None:
        self.app = app
        self.keys = api_keys(keys)
        self.csrf = secrets.token_urlsafe(24)
        self.loopback_only = is_loopback(bind_host)

    def key_ok(self, headers: dict[str, str], query: dict[str, list[str]]) -> bool:
        if not self.keys:
            return True
        candidates = [bearer_token(headers.get("authorization", "").encode("latin-1"))]
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                candidates.append(unquote(value).encode())
        candidates += [v.encode() for v in query.get("key", [])]
        return any(token_matches(c, self.keys) for c in candidates if c)

    def csrf_ok(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.csrf.encode())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert self.app is not None, "Guard.app is set when the middleware stack is built"
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope["path"]
        # A loopback IP in Host cannot come from DNS rebinding (that needs a name); other names are refused.
        if self.loopback_only and not is_loopback(_host_name(headers.get("host", ""))):
            await _plain(send, 421, "this dashboard answers only on a loopback address (open http://127.0.0.1:PORT/)")
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if path.startswith(OPEN_PREFIXES) or self.key_ok(headers, query):
            if self.keys and "key" in query and scope["method"] == "GET" and not path.startswith(OPEN_PREFIXES):
                # The printed link carries the key once; keep it in a cookie and drop it from the address bar.
                rest = urlencode({k: v for k, v in query.items() if k != "key"}, doseq=True)
                await _redirect(send, path + (f"?{rest}" if rest else ""), cookie=query["key"][0])
                return
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET" and "text/html" in headers.get("accept", ""):
            await _redirect(send, "/login?next=" + quote(path))
            return
        await _plain(send, 401, "missing or wrong API key; send 'Authorization: Bearer <key>' or log in at /login")


async def _plain(send: Any, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Any, location: str, cookie: str | None = None) -> None:
    headers = [(b"location", location.encode("latin-1")), (b"content-length", b"0")]
    if cookie is not None:
        headers.append((b"set-cookie", f"{COOKIE}={quote(cookie, safe='')}; HttpOnly; SameSite=Strict; Path=/".encode("latin-1")))
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
