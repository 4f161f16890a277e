"""Pages: an assessment - both walls, their pillars and components, and the change that helps most."""

from __future__ import annotations

from typing import Any

from shoestring.ui.layout import Raw, esc, fmt_value, link, section, table
from shoestring.ui.pages_plan import gpu_cost_table
from shoestring.ui.store import ArtifactView

__all__ = ["assessment_body", "meter"]


def _colour(score: float) -> str:
    return "#2e9e6a" if score < 0.25 else "#d9a21b" if score < 0.5 else "#d9822b" if score < 0.75 else "#cf3a3a"


def meter(score: float | None, width: int = 180) -> Raw:
    """A 0-1 score as a filled bar with its value."""
    if score is None:
        return Raw('<span class="muted">not measured</span>')
    w = max(2.0, width * min(1.0, max(0.0, score)))
    return Raw(f'<svg class="meter" width="{width + 44}" height="14" viewBox="0 0 {width + 44} 14" role="img" '
               f'aria-label="score {score:.2f}"><rect width="{width}" height="14" rx="3" fill="#e7eaee"/>'
               f'<rect width="{w:.1f}" height="14" rx="3" fill="{_colour(score)}"/>'
               f'<text x="{width + 6}" y="11" class="tick">{score:.2f}</text></svg>')


PILLAR_ORDER = ("acquisition", "processing", "sharing", "hardware", "allocation", "algorithmic")


def _measured(c: dict[str, Any]) -> str:
    """A component's measurement in its unit; fractions as percentages."""
    if c["value"] is None:
        return "-"
    unit = str(c["unit"])
    if unit.startswith("fraction"):
        rest = unit[len("fraction"):].strip()
        return f"{c['value'] * 100:.3g}% {rest}".strip()
    return f"{fmt_value(c['value'])} {unit}"


def _wall(key: str, wall: dict[str, Any]) -> Raw:
    order = sorted(wall["pillars"], key=lambda p: PILLAR_ORDER.index(p) if p in PILLAR_ORDER else 99)
    pillars = "".join(f'<div class="pillar"><span>{esc(p)}</span>{meter(wall["pillars"][p], 120)}</div>' for p in order)
    best = wall.get("best_change")
    if best:
        advice = (f'<div class="advice" id="{esc(key)}-best"><div class="advice-label">the one change that lowers it most'
                  f'</div><div class="advice-action">{esc(best["action"])}</div><div>{esc(best["effect"])}</div>'
                  f'<div class="muted">score {best["before"]:.2f} → {best["after"]:.2f} ({esc(best["basis"])})</div></div>')
    else:
        n = len(wall.get("changes") or [])
        advice = (f'<div class="advice none" id="{esc(key)}-best"><div class="advice-label">no change considered lowers '
                  f'this wall</div><div>{n} change{"s" if n != 1 else ""} priced; none lowers the score by 0.01 or more'
                  "</div></div>")
    measured = [c for c in wall["components"] if c["score"] is not None]
    top = max(measured, key=lambda c: c["score"], default=None)
    worst = (f'<p class="worst">largest obstacle: <b>{esc(top["label"])}</b>, {esc(_measured(top))} '
             f'(score {top["score"]:.2f})</p>') if top and top["score"] > 0 else ""
    score = wall["score"]
    value = "not measured" if score is None else f"{score:.2f}"
    return Raw(f'<div class="wall" id="{esc(key)}"><div class="wall-head"><h3>{esc(wall["name"])}</h3>'
               f'<div class="wall-score" data-score="{esc(value)}">{esc(value)}</div></div>{meter(score, 320)}'
               f'<div class="pillars">{pillars}</div>{worst}{advice}</div>')


def _components(wall: dict[str, Any]) -> Raw:
    rows = []
    for c in wall["components"]:
        rows.append([c["pillar"], c["label"], _measured(c), meter(c["score"], 90), Raw(f"<code>{esc(c['rule'])}</code>"),
                     c["source"], c["detail"] or Raw(f'<span class="muted">{esc(c["missing"])}</span>')])
    return table(["pillar", "component", "measured", "score", "normalisation", "from", "detail"], rows,
                 cls="components", tid=f"components-{wall['name'].replace(' ', '-')}")


def _changes(wall: dict[str, Any]) -> Raw:
    return table(["change", "effect", "score before", "after", "basis"], [
        [c["action"], c["effect"], f"{c['before']:.3f}", f"{c['after']:.3f}", c["basis"]] for c in wall["changes"]
    ], cls="changes", numeric=[2, 3])


def assessment_body(a: ArtifactView) -> Raw:
    doc = a.json_file("assessment.json") or {}
    walls = [(k, doc[k]) for k in ("data_barrier", "compute_bottleneck") if doc.get(k)]
    parts: list[Any] = [Raw('<div class="walls">' + "".join(_wall(k, w) for k, w in walls) + "</div>"),
                        Raw('<p class="muted">0 = no obstacle, 1 = a wall. Each component is a measurement in its own '
                            'unit, normalised as shown; a pillar is the mean of its measured components, a wall the '
                            'mean of its pillars (formulas: docs/ASSESS.md).</p>')]
    for _k, w in walls:
        parts.append(section(f"{w['name']}: components", _components(w)))
        if w["changes"]:
            parts.append(section(f"{w['name']}: every change considered", _changes(w),
                                 note="the largest reduction first; both scores on the same basis"))
    wi = doc.get("what_if")
    if wi:
        parts.append(section("Cost per GPU type", gpu_cost_table([wi["baseline"], *wi["variants"]]),
                             note=f"planner what-if plans ({wi['seconds']:.0f} s to compute)"))
    applied = doc.get("applied_optimisations") or []
    if applied:
        parts.append(section("Optimisations already in use", table(["optimisation", "effect", "basis"], [
            [r["optimisation"], r["effect"], r["basis"]] for r in applied])))
    ins = doc.get("inputs") or {}
    parts.append(section("Assessed artifacts", table(["input", "artifact"], [[k, v] for k, v in ins.items()])))
    parts.append(Raw(f"<p>{link(f'{a.url}/file/assessment.json', 'assessment.json')}</p>"))
    return Raw("".join(esc(p) for p in parts))
