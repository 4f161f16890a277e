"""API keys shared by the HTTP servers (``shoestring serve`` and ``shoestring ui``).

Keys come from the server's config plus ``$SHOESTRING_API_KEYS`` (comma-separated); no key
at all means no authentication. A presented token is compared with every key in constant
time, without an early exit, so the timing does not reveal which key (if any) matched.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable

__all__ = ["ENV_KEYS", "api_keys", "bearer_token", "token_matches"]

ENV_KEYS = "SHOESTRING_API_KEYS"


def api_keys(configured: Iterable[str]) -> list[bytes]:
    """The configured keys plus those in ``$SHOESTRING_API_KEYS``."""
    env = [k.strip() for k in os.environ.get(ENV_KEYS, "").split(",") if k.strip()]
    return [k.encode() for k in [*configured, *env]]


def bearer_token(authorization: bytes) -> bytes:
    """The token of an ``Authorization: Bearer <token>`` header value (b'' when absent)."""
    return authorization[7:].strip() if authorization[:7].lower() == b"bearer " else b""


def token_matches(token: bytes, keys: Iterable[bytes]) -> bool:
    """True when ``token`` equals one of ``keys`` (constant time per key, every key compared)."""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token, key)
    return ok
