"""SVG charts drawn on the server: line charts, bars, a stacked share bar and the lineage graph.

Plain SVG strings (no library, nothing fetched), so pages render offline, print, and show
the same thing in every browser; live pages re-fetch the fragment as rows arrive.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from shoestring.ui.layout import Raw

__all__ = ["Series", "bar_chart", "dag", "line_chart", "nice_ticks", "share_bar"]

PALETTE = ("#2f6db5", "#d9822b", "#2e9e6a", "#b5475f", "#7a5cc2", "#6b7480")
KIND_COLOURS = {
    "dataset": "#2f6db5", "plan": "#7a5cc2", "model": "#2e9e6a", "compressed-model": "#14877f",
    "evaluation": "#d9822b", "export": "#0f7494", "report": "#6b7480", "assessment": "#b5475f",
}
STATUS_COLOURS = {"done": "#2e9e6a", "cached": "#5b8fd6", "running": "#d9a21b", "failed": "#cf3a3a",
                  "cancelled": "#8a8f98", "interrupted": "#cf7a1a", "pending": "#c3c8cf", "skipped": "#c3c8cf"}


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def fmt_num(v: float) -> str:
    """Compact tick label: 1.2k, 3.4M, 0.05, 12."""
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.3g}G"
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a >= 100 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.3g}"


def nice_ticks(lo: float, hi: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]; ``integer``: steps of at least 1."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, math.ceil(step))
    start = math.floor(lo / step) * step
    ticks = [round(start, 12)]
    while ticks[-1] < hi - 1e-12 * max(1.0, abs(hi)):
        ticks.append(round(ticks[-1] + step, 12))
    if len(ticks) == 1:
        ticks.append(round(start + step, 12))
    return ticks


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Labels with as many decimals as the tick step needs (so 10.80, 10.82 ... not 10.8, 10.8)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    if max(abs(t) for t in ticks) >= 1e4 or step >= 1:
        return [fmt_num(t) for t in ticks]
    decimals = max(0, math.ceil(-math.log10(step) - 1e-9)) + (1 if round(step / 10 ** math.floor(math.log10(step)), 6) == 2.5 else 0)
    return [f"{t:.{decimals}f}" for t in ticks]


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    colour: str = ""
    dashed: bool = False
    markers: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 620,
    height: int = 250,
    hlines: Sequence[tuple[float, str, str]] = (),
    chart_id: str = "",
    integer_x: bool = True,
) -> Raw:
    """A line chart with axes, round ticks, a legend and optional horizontal reference lines."""
    pts = [p for s in series for p in s.points if all(math.isfinite(v) for v in p)]
    if not pts:
        return Raw(f'<div class="chart-empty" id="{_e(chart_id)}">{_e(title)}: no points yet</div>')
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts] + [h[0] for h in hlines if math.isfinite(h[0])]
    xt = nice_ticks(min(xs), max(xs), 6, integer=integer_x)
    yt = nice_ticks(min(ys), max(ys), 4)
    ylabels = tick_labels(yt)
    left, right, top, bottom = 34 + 7 * max(len(t) for t in ylabels), 16, 30, 40  # room for the widest tick label
    pw, ph = width - left - right, height - top - bottom
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def sx(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / ((y1 - y0) or 1) * ph

    parts = [f'<svg class="chart" id="{_e(chart_id)}" role="img" aria-label="{_e(title)}" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{left}" y="18" class="chart-title">{_e(title)}</text>']
    for t, lab in zip(yt, ylabels, strict=True):
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" class="tick" text-anchor="end">{lab}</text>')
    for t, lab in zip(xt, tick_labels(xt), strict=True):
        parts.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top + ph}" y2="{top + ph + 4}" class="axis"/>'
                     f'<text x="{sx(t):.1f}" y="{top + ph + 16}" class="tick" text-anchor="middle">{lab}</text>')
    parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>'
                 f'<text x="{left + pw / 2:.0f}" y="{height - 6}" class="axis-label" text-anchor="middle">{_e(x_label)}</text>'
                 f'<text x="14" y="{top + ph / 2:.0f}" class="axis-label" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + ph / 2:.0f})">{_e(y_label)}</text>')
    for y, label, colour in hlines:
        if math.isfinite(y):
            parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="{colour}" '
                         f'stroke-dasharray="6 4" class="ref"/><text x="{left + 6}" y="{sy(y) - 5:.1f}" '
                         f'class="ref-label" fill="{colour}">{_e(label)} {fmt_num(y)}</text>')
    legend_x = float(left + pw)
    legend: list[tuple[str, str]] = []
    for i, s in enumerate(series):
        colour = s.colour or PALETTE[i % len(PALETTE)]
        good = [p for p in s.points if all(math.isfinite(v) for v in p)]
        if not good:
            continue
        path = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y) in enumerate(good))
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash} class="line" '
                     f'data-series="{_e(s.name)}" data-points="{len(good)}"/>')
        if s.markers or len(good) == 1:
            parts.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in good)
        legend.append((s.name, colour))
    for name, colour in reversed(legend):  # placed right to left, so the first series reads first
        legend_x -= 22 + 6.5 * len(name)
        parts.append(f'<rect x="{legend_x:.0f}" y="9" width="12" height="3" fill="{colour}"/>'
                     f'<text x="{legend_x + 16:.0f}" y="14" class="legend">{_e(name)}</text>')
    parts.append("</svg>")
    return Raw("".join(parts))


def bar_chart(rows: Sequence[tuple[str, float]], *, title: str, width: int = 520, unit: str = "",
              colour: str = PALETTE[0]) -> Raw:
    """Horizontal bars with their values; labels on the left."""
    if not rows:
        return Raw(f'<p class="muted">{_e(title)}: none</p>')
    label_w = min(220, 12 + 7 * max(len(str(r[0])) for r in rows))
    bar_h, gap = 18, 6
    peak = max(v for _, v in rows) or 1
    avail = width - label_w - 70
    h = len(rows) * (bar_h + gap) + 24
    parts = [f'<svg class="bars" role="img" aria-label="{_e(title)}" viewBox="0 0 {width} {h}" width="{width}" '
             f'height="{h}" xmlns="http://www.w3.org/2000/svg"><text x="0" y="13" class="chart-title">{_e(title)}</text>']
    for i, (label, v) in enumerate(rows):
        y = 22 + i * (bar_h + gap)
        w = max(1.0, avail * v / peak)
        parts.append(f'<text x="{label_w - 8}" y="{y + 13}" class="tick" text-anchor="end">{_e(label)}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="3" fill="{colour}"/>'
                     f'<text x="{label_w + w + 6:.1f}" y="{y + 13}" class="tick">{fmt_num(v)}{_e(unit)}</text>')
    parts.append("</svg>")
    return Raw("".join(parts))


def share_bar(parts_in: Sequence[tuple[str, float, str]], *, width: int = 620, title: str = "") -> Raw:
    """One stacked bar of shares (label, value, colour) with a legend of counts."""
    total = sum(v for _, v, _ in parts_in) or 1
    x = 0.0
    out = [f'<svg class="share" role="img" aria-label="{_e(title)}" viewBox="0 0 {width} 46" width="{width}" '
           f'height="46" xmlns="http://www.w3.org/2000/svg">']
    for label, v, colour in parts_in:
        w = width * v / total
        if w > 0:
            out.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="20" fill="{colour}"><title>{_e(label)}: '
                       f'{v:,.0f}</title></rect>')
        x += w
    lx = 0.0
    for label, v, colour in parts_in:
        text = f"{label} {v:,.0f} ({v / total:.1%})"
        out.append(f'<rect x="{lx:.0f}" y="30" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{lx + 14:.0f}" y="39" class="legend">{_e(text)}</text>')
        lx += 24 + 6.3 * len(text)
    out.append("</svg>")
    return Raw("".join(out))


@dataclass
class Node:
    id: str
    title: str
    subtitle: str
    href: str
    colour: str
    status: str = ""


def dag(nodes: Sequence[Node], edges: Sequence[tuple[str, str, str]], *, title: str = "lineage") -> Raw:
    """Left-to-right layered graph: a node's column is its longest path from a source."""
    if not nodes:
        return Raw('<p class="muted">no artifacts yet</p>')
    ids = {n.id for n in nodes}
    inbound: dict[str, list[str]] = {n.id: [] for n in nodes}
    for a, b, _ in edges:
        if a in ids and b in ids:
            inbound[b].append(a)
    layer: dict[str, int] = {}

    def depth(n: str, seen: frozenset[str] = frozenset()) -> int:
        if n not in layer:
            layer[n] = 0 if not inbound[n] or n in seen else 1 + max(depth(p, seen | {n}) for p in inbound[n])
        return layer[n]

    for n in nodes:
        depth(n.id)
    cols: dict[int, list[Node]] = {}
    for n in nodes:
        cols.setdefault(layer[n.id], []).append(n)
    nw, nh, cw, rh = 168, 46, 214, 76
    row: dict[str, float] = {}
    for c in sorted(cols):  # order each column by its parents' mean row (fewer crossings)
        cols[c].sort(key=lambda n: sum(row.get(p, 0) for p in inbound[n.id]) / max(1, len(inbound[n.id])))
        for r, n in enumerate(cols[c]):
            row[n.id] = r
    pos = {n.id: (12 + c * cw, 12 + r * rh) for c, col in cols.items() for r, n in enumerate(col)}
    width = 12 + (max(cols) + 1) * cw
    height = 24 + max(len(c) for c in cols.values()) * rh
    out = [f'<svg class="dag" role="img" aria-label="{_e(title)}" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" xmlns="http://www.w3.org/2000/svg">']
    lane = 0
    for a, b, label in edges:
        if a not in pos or b not in pos:
            continue
        (ax, ay), (bx, by) = pos[a], pos[b]
        x1, y1, x2, y2 = ax + nw, ay + nh / 2, bx, by + nh / 2
        if layer[b] - layer[a] > 1:  # skips a column: run below the boxes in between, each edge in its own lane
            low = max(ay, by) + nh + 8 + 5 * (lane % 4)
            lane += 1
            path = f"M{ax + nw / 2},{ay + nh} C{ax + nw / 2},{low} {ax + nw / 2 + 30},{low} {ax + nw},{low} " \
                   f"L{bx - 30},{low} C{bx - 10},{low} {bx - 10},{y2} {x2},{y2}"
        else:
            mx = (x1 + x2) / 2
            path = f"M{x1},{y1} C{mx},{y1} {mx},{y2} {x2},{y2}"
        out.append(f'<path d="{path}" class="edge"><title>{_e(label)}</title></path>')
    for n in nodes:
        x, y = pos[n.id]
        ring = STATUS_COLOURS.get(n.status, "")
        stroke = f' stroke="{ring}" stroke-width="3"' if ring else ' stroke="#c9ced5" stroke-width="1"'
        out.append(f'<a href="{_e(n.href)}"><g class="node" data-node="{_e(n.id)}" data-x="{x}" data-status="{_e(n.status)}">'
                   f'<rect x="{x}" y="{y}" width="{nw}" height="{nh}" rx="7" fill="#fff"{stroke}/>'
                   f'<rect x="{x}" y="{y}" width="7" height="{nh}" rx="3" fill="{n.colour}"/>'
                   f'<text x="{x + 16}" y="{y + 19}" class="node-title">{_e(n.title[:22])}</text>'
                   f'<text x="{x + 16}" y="{y + 36}" class="node-sub">{_e(n.subtitle[:26])}</text></g></a>')
    out.append("</svg>")
    return Raw("".join(out))
