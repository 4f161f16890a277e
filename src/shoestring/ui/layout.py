"""HTML building blocks: the page shell, tables, badges and number formats.

Everything a page shows goes through :func:`esc` unless it is a :class:`Raw` fragment built
here; pages carry no inline script (the Content-Security-Policy forbids it), the little
JavaScript there is lives in ``static/app.js``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

__all__ = ["NAV", "Raw", "badge", "esc", "fmt_bytes", "fmt_pct", "fmt_seconds", "fmt_value", "page", "table"]

NAV = (("runs", "/", "Runs"), ("data", "/data", "Data"), ("plans", "/plans", "Plans"),
       ("models", "/models", "Models"), ("assess", "/assess", "Assess"), ("compare", "/compare", "Compare"),
       ("launch", "/launch", "Launch"))


class Raw(str):
    """Trusted HTML built by this package (never user or artifact text)."""


def esc(value: Any) -> str:
    if isinstance(value, Raw):
        return value
    return html.escape("" if value is None else str(value), quote=True)


def fmt_bytes(n: Any) -> str:
    if not isinstance(n, int | float) or isinstance(n, bool):
        return "-"
    for unit, div in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_seconds(s: Any) -> str:
    if not isinstance(s, int | float) or isinstance(s, bool) or not math.isfinite(s):
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def fmt_pct(x: Any, digits: int = 1) -> str:
    if not isinstance(x, int | float) or isinstance(x, bool):
        return "-"
    return f"{x * 100:.{digits}f}%"


def fmt_value(v: Any) -> str:
    """A config or metric value for a table cell."""
    if isinstance(v, bool) or v is None:
        return str(v).lower() if isinstance(v, bool) else "-"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:.4g}"
    if isinstance(v, list | tuple):
        return ", ".join(fmt_value(x) for x in v) if all(not isinstance(x, dict | list) for x in v) else f"[{len(v)} items]"
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt_value(x)}" for k, x in v.items()) if len(v) <= 6 else f"{{{len(v)} keys}}"
    return str(v)


def fmt_time(iso: Any) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM:SS UTC'."""
    try:
        t = datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso or "-")
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def badge(status: str) -> Raw:
    return Raw(f'<span class="badge st-{esc(status)}" data-status="{esc(status)}">{esc(status)}</span>')


def link(href: str, text: Any) -> Raw:
    return Raw(f'<a href="{esc(href)}">{esc(text)}</a>')


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "", tid: str = "",
          numeric: Sequence[int] = ()) -> Raw:
    """A table; cells are escaped unless :class:`Raw`; ``numeric`` column indexes align right."""
    num = set(numeric)

    def cell(c: Any) -> str:
        return esc(fmt_value(c) if isinstance(c, int | float) else c)

    head = "".join(f'<th{" class=num" if i in num else ""}>{esc(h)}</th>' for i, h in enumerate(header))
    body = []
    for r in rows:
        cells = "".join(f'<td{" class=num" if i in num else ""}>{cell(c)}</td>' for i, c in enumerate(r))
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(header)}" class="muted">none</td></tr>')
    ident = f' id="{esc(tid)}"' if tid else ""
    return Raw(f'<table class="{esc(cls)}"{ident}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def section(title: str, *parts: Any, sid: str = "", note: str = "") -> Raw:
    ident = f' id="{esc(sid)}"' if sid else ""
    sub = f'<p class="muted">{esc(note)}</p>' if note else ""
    return Raw(f'<section{ident}><h2>{esc(title)}</h2>{sub}{"".join(esc(p) for p in parts)}</section>')


def cards(items: Sequence[tuple[str, Any, str]]) -> Raw:
    """A row of headline figures: (label, value, note)."""
    out = "".join(
        f'<div class="card"><div class="card-label">{esc(lab)}</div><div class="card-value">{esc(val)}</div>'
        f'<div class="card-note">{esc(note)}</div></div>'
        for lab, val, note in items
    )
    return Raw(f'<div class="cards">{out}</div>')


def page(title: str, body: Any, *, active: str = "", csrf: str = "", crumbs: Sequence[tuple[str, str]] = (),
         data: dict[str, str] | None = None) -> str:
    """The page shell: header with navigation, breadcrumbs, the body; app.js and style.css from /static."""
    nav = "".join(f'<a href="{href}" class="{"active" if key == active else ""}">{label}</a>' for key, href, label in NAV)
    trail = ""
    if crumbs:
        trail = '<nav class="crumbs">' + " / ".join(
            f'<a href="{esc(h)}">{esc(t)}</a>' if h else esc(t) for t, h in crumbs) + "</nav>"
    attrs = "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in (data or {}).items())
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<meta name='csrf-token' content='{esc(csrf)}'><title>{esc(title)} · shoestring</title>"
        "<link rel='stylesheet' href='/static/style.css'><link rel='icon' href='/static/favicon.svg'>"
        "<script src='/static/app.js' defer></script></head>"
        f"<body{attrs}><header><a class='brand' href='/'>shoestring</a><nav class='main'>{nav}</nav></header>"
        f"<main>{trail}<h1>{esc(title)}</h1>{esc(body)}</main></body></html>"
    )
