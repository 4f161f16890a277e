"""A self-contained HTML report: tables, matplotlib plots inlined as base64 PNG, and
token attributions as highlighted text. No scripts, no external files: it opens anywhere."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Report", "fmt", "fmt_interval", "highlight_tokens", "png_img", "table"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #333}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:.9em}.tok{padding:1px 2px;border-radius:3px;white-space:pre-wrap}
pre{white-space:pre-wrap;background:#f7f7f7;padding:.5em;border-radius:4px;margin:0}
.good{color:#0a6b2b;font-weight:600}.bad{color:#a31515;font-weight:600}img{max-width:100%}
"""


def fmt(x: Any, digits: int = 4) -> str:
    """A number for display (ints as-is, floats to ``digits`` significant places)."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return str(x)
        return f"{x:.{digits}g}"
    return str(x)


def fmt_interval(ci: dict[str, Any], digits: int = 4) -> str:
    """``value [low, high]`` for a bootstrap interval dict."""
    return f"{fmt(ci['value'], digits)} [{fmt(ci['low'], digits)}, {fmt(ci['high'], digits)}]"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (for cells that are already HTML)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = []
    for r in rows:
        cells = []
        for c in r:
            cls = ' class="num"' if isinstance(c, int | float) and not isinstance(c, bool) else ""
            text = str(c) if raw and isinstance(c, str) else html.escape(fmt(c))
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def png_img(fig: Any, alt: str) -> str:
    """Render a matplotlib figure to an inline base64 PNG ``<img>`` and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def highlight_tokens(tokens: Sequence[str], scores: Sequence[float]) -> str:
    """Tokens with a background colour by attribution: green pushes the output up, red down;
    opacity is |score| relative to the largest |score| in the sequence."""
    top = max((abs(s) for s in scores), default=0.0) or 1.0
    spans = []
    for tok, s in zip(tokens, scores, strict=True):
        a = min(1.0, abs(s) / top)
        rgb = "0,160,60" if s >= 0 else "210,30,30"
        spans.append(
            f'<span class="tok" title="{s:+.4f}" style="background:rgba({rgb},{a * 0.8:.2f})">{html.escape(tok)}</span>'
        )
    return "".join(spans)


@dataclass
class Report:
    """An ordered list of sections rendered to one HTML page."""

    title: str
    subtitle: str = ""
    sections: list[tuple[str, str]] = field(default_factory=list)

    def add(self, heading: str, body_html: str) -> None:
        self.sections.append((heading, body_html))

    def render(self) -> str:
        toc = "".join(f'<li><a href="#s{i}">{html.escape(h)}</a></li>' for i, (h, _) in enumerate(self.sections))
        body = "".join(
            f'<h2 id="s{i}">{html.escape(h)}</h2>\n{b}\n' for i, (h, b) in enumerate(self.sections)
        )
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1><p class=\"note\">{html.escape(self.subtitle)}</p>"
            f"<ul>{toc}</ul>{body}</body></html>\n"
        )
