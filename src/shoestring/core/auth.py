"""API keys shared by the HTTP servers (``shoestring serve`` and ``shoestring ui``).

Keys come from the server's config plus ``$SHOESTRING_API_KEYS`` (comma-separated); no key
at all means no authentication. A presented token is compared with every key in constant
time, without an early exit, so the timing does not reveal which key (if any) matched.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterable

from shoestring.core.errors import ShoestringError

__all__ = ["ENV_KEYS", "api_keys", "bearer_token", "is_loopback", "require_key_off_loopback", "token_matches"]

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


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``, bracketed or not).

    Any other name is not loopback: it may resolve to a public interface, and ``""`` or
    ``0.0.0.0`` bind every interface.
    """
    h = host.strip().lower().removeprefix("[").removesuffix("]")
    if h in ("localhost", "localhost."):
        return True
    try:
        addr = ipaddress.ip_address(h)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def require_key_off_loopback(host: str, keys: list[bytes], what: str) -> None:
    """Refuse to listen beyond loopback without an API key (one line saying what to do)."""
    if keys or is_loopback(host):
        return
    raise ShoestringError(
        f"--host {host or '(all interfaces)'} would let anyone who can reach this port {what}; "
        f"give --api-key KEY or set ${ENV_KEYS}, or bind --host 127.0.0.1"
    )
