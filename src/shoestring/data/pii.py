"""PII and secret detection with checksum validation, and four ways to remove what is found.

Detectors run in a fixed order (secrets first, phone numbers last) so a value is claimed by
the most specific type: an IBAN is not also a phone number. Candidates that fail their
checksum (Luhn for cards, ISO 13616 mod-97 for IBANs) or parser (``ipaddress``) are kept.

Modes: ``redact`` -> ``[EMAIL]``; ``mask`` -> ``*******0958``; ``hash`` -> ``<EMAIL:1f2e3d4c5b6a>``
(unkeyed SHA-256: same value, same token, but guessable for low-entropy values such as phone
numbers); ``pseudonym`` -> a keyed HMAC-SHA256 token (``user-3f9a1c2b@example.invalid`` for
e-mails, ``<PHONE_3f9a1c2b>`` otherwise): the same value gives the same token across the whole
dataset and the value cannot be recovered without the key. The key comes from ``$pii.key_env``
or ``pii.key_file`` and is required: there is no default, because a token keyed with a public
key can be recomputed by anyone from a guessed value (see ``pseudonym_key``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path

from shoestring.core.errors import ShoestringError
from shoestring.data.config import PIIConfig
from shoestring.data.records import Drop, OpStats, Record

__all__ = ["DEV_KEY", "MIN_KEY_CHARS", "PIIScrubber", "find_pii", "iban_ok", "luhn_ok", "pseudonym_key"]

DEV_KEY = "shoestring-dev-key-not-secret"
"""The public key earlier versions fell back to: anyone can recompute its tokens, so it is refused."""
MIN_KEY_CHARS = 16
"""Shortest key a shareable release accepts (a short key can be guessed, and every token with it)."""
_MAKE_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _key_text(cfg: PIIConfig) -> str | None:
    value = os.environ.get(cfg.key_env, "").strip()
    if value:
        return value
    if cfg.key_file is None:
        return None
    path = Path(cfg.key_file).expanduser()
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as e:
        raise ShoestringError(f"pii: cannot read the key file {path} ({e.__class__.__name__}); "
                              f"fix pii.key_file or set ${cfg.key_env}") from None  # fmt: skip


def pseudonym_key(cfg: PIIConfig, *, shareable: bool) -> bytes:
    """The pseudonymisation key: ``$cfg.key_env``, else the contents of ``cfg.key_file``.

    Always required: no key, or the public ``DEV_KEY``, raise one line saying what to set. A
    release that leaves the machine (``shareable``) also needs ``MIN_KEY_CHARS`` characters."""
    value = _key_text(cfg)
    where = f"set ${cfg.key_env} (or pii.key_file) to a random secret, e.g. from {_MAKE_KEY}"
    what = "share: a shareable release" if shareable else "pii: mode pseudonym"
    if value is None:
        alt = "" if shareable else " (or use pii.mode redact or hash)"
        raise ShoestringError(f"{what} needs a pseudonym key; {where}{alt}")
    if hmac.compare_digest(value.encode(), DEV_KEY.encode()):
        raise ShoestringError(f"{what}: the development pseudonym key is public (anyone could re-identify the tokens); {where}")
    if shareable and len(value) < MIN_KEY_CHARS:
        raise ShoestringError(f"share: the pseudonym key has {len(value)} characters, under {MIN_KEY_CHARS}; {where}")
    return value.encode()

_SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),  # GitHub tokens
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),  # Slack tokens
    re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}\b"),  # OpenAI-style keys
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),  # Google API keys
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b"),  # JWT
]
# `password = hunter2...`: only the value (group 1) is a secret.
_ASSIGNED_SECRET = re.compile(
    r"(?i)\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|password|passwd)\b\s*[:=]\s*[\"']?"
    r"([A-Za-z0-9_\-/+=.]{8,})"
)
_EMAIL = re.compile(r"\b[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
# Patterns start with a character class, not a lookbehind, so the regex engine can skip ahead
# to candidate characters (measured ~2-4x faster); the boundary lookbehind follows the first char.
_CARD = re.compile(r"\d(?<![\d-]\d)(?:[ -]?\d){12,18}(?![\d-])")
_SSN = re.compile(r"\d(?<![\w-]\d)\d{2}-\d{2}-\d{4}(?![\w-])")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:){1,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,7}|[0-9A-Fa-f]{1,4})(?![\w:])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
# International or national numbers: optional +CC, optional (area), groups split by space/dot/dash.
_PHONE = re.compile(
    r"(?=[+(\d])(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,5}){1,5}(?![\w-])"
)


def luhn_ok(digits: str) -> bool:
    """Luhn checksum of a digit string (payment card numbers)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    """ISO 13616 IBAN check: move the first 4 characters to the end, letters to numbers, mod 97 == 1."""
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _ipv6_ok(s: str) -> bool:
    if s.count(":") < 2:
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


def _ipv4_ok(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)
    except ValueError:
        return False
    return True


def _card_ok(s: str) -> bool:
    digits = re.sub(r"\D", "", s)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _ssn_ok(s: str) -> bool:
    """US SSN rules: area not 000, 666 or 9xx; group not 00; serial not 0000."""
    area, group, serial = s.split("-")
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


def _phone_ok(s: str) -> bool:
    digits = sum(ch.isdigit() for ch in s)
    # 9-15 digits (E.164 max is 15); an explicit +CC allows 8. Dates and versions have fewer.
    return (9 <= digits <= 15) or (s.startswith("+") and digits >= 8)


# (type, pattern, validator, group) in claim order.
_DETECTORS: list[tuple[str, re.Pattern[str], Callable[[str], bool] | None, int]] = [
    ("secret", _ASSIGNED_SECRET, None, 1),
    *[("secret", p, None, 0) for p in _SECRET_PATTERNS],
    ("email", _EMAIL, None, 0),
    ("iban", _IBAN, iban_ok, 0),
    ("credit_card", _CARD, _card_ok, 0),
    ("ssn", _SSN, _ssn_ok, 0),
    ("ipv6", _IPV6, _ipv6_ok, 0),
    ("ipv4", _IPV4, _ipv4_ok, 0),
    ("phone", _PHONE, _phone_ok, 0),
]


def find_pii(text: str, types: list[str] | None = None) -> list[tuple[int, int, str]]:
    """Non-overlapping ``(start, end, type)`` spans of validated PII in ``text``, sorted."""
    wanted = set(types) if types is not None else None
    taken: list[tuple[int, int, str]] = []
    for kind, pattern, validate, group in _DETECTORS:
        if wanted is not None and kind not in wanted:
            continue
        for m in pattern.finditer(text):
            start, end = m.span(group)
            value = m.group(group)
            if validate is not None and not validate(value):
                continue
            if any(start < e and s < end for s, e, _ in taken):
                continue
            taken.append((start, end, kind))
    return sorted(taken)


class PIIScrubber:
    """Replace PII in texts according to a mode; counts per type go into the op stats."""

    def __init__(self, cfg: PIIConfig, *, shareable: bool = False) -> None:
        self.cfg = cfg
        # Only the pseudonym mode is keyed; `hash` is a plain SHA-256 by design (documented as guessable).
        self.key = pseudonym_key(cfg, shareable=shareable) if cfg.mode == "pseudonym" else b""

    def token(self, kind: str, value: str) -> str:
        mode, tag = self.cfg.mode, kind.upper()
        if mode == "redact":
            return f"[{tag}]"
        if mode == "mask":
            keep = 4 if len(value) > 6 else 0
            return "*" * (len(value) - keep) + value[len(value) - keep :]
        if mode == "hash":
            return f"<{tag}:{hashlib.sha256(value.encode()).hexdigest()[:12]}>"
        digest = hmac.new(self.key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:8]
        if kind == "email":
            return f"user-{digest}@example.invalid"
        return f"<{tag}_{digest}>"

    def scrub(self, text: str, stats: OpStats | None = None) -> str:
        spans = find_pii(text, list(self.cfg.types))
        if not spans:
            return text
        out, pos = [], 0
        for start, end, kind in spans:
            out.append(text[pos:start])
            out.append(self.token(kind, text[start:end]))
            pos = end
            if stats is not None:
                stats.counters[f"pii:{kind}"] += 1
        out.append(text[pos:])
        return "".join(out)

    def __call__(self, rec: Record, stats: OpStats) -> Record | Drop:
        found = False
        # Every string column, not only the text: logs and tables carry PII in their own columns.
        for f in [k for k, v in rec.items() if isinstance(v, str) and k != "id" and not k.startswith("_")]:
            new = self.scrub(rec[f], stats)
            if new != rec[f]:
                rec[f] = new
                found = True
        if found:
            stats.counters["records_with_pii"] += 1
        return rec
