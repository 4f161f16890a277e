"""Collect figures from artifacts and render them as one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shoestring.core.artifact import Artifact
from shoestring.core.jsonl import read_jsonl

__all__ = ["collect_summary", "flatten", "plan_vs_measured", "render_html"]


def flatten(obj: Any, prefix: str = "", max_items: int = 200) -> dict[str, Any]:
    """Nested dicts -> ``{"a.b": value}`` (lists of scalars kept as short strings)."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}.", max_items))
    elif isinstance(obj, list) and obj and all(isinstance(x, Mapping) for x in obj):
        for i, v in enumerate(obj[:20]):
            out.update(flatten(v, f"{prefix}{i}.", max_items))
    else:
        out[prefix.rstrip(".")] = obj
    return dict(list(out.items())[:max_items])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _first(d: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        cur: Any = d
        for part in k.split("."):
            if not isinstance(cur, Mapping) or part not in cur:
                cur = None
                break
            cur = cur[part]
        if cur is not None:
            return cur
    return None


def collect_summary(title: str, inputs: Mapping[str, Artifact]) -> dict[str, Any]:
    """Everything the page shows, as JSON (``summary.json``)."""
    sections: dict[str, Any] = {}
    headline: dict[str, Any] = {}
    for name, art in inputs.items():
        sections[name] = {
            "kind": art.kind,
            "path": str(art.path),
            "hash": art.hash,
            "seconds": art.manifest.get("timings", {}).get("seconds"),
            "stats": art.stats,
        }
    if "dataset" in inputs:
        s = inputs["dataset"].stats
        for key in ("read", "kept", "dropped", "quarantined"):
            value = _first(s, key, f"accounting.{key}")
            if isinstance(value, Mapping):
                value = sum(v for v in value.values() if isinstance(v, int | float))
            if value is not None:
                headline[f"records {key}"] = value
    if "plan" in inputs:
        plan = _read_json(inputs["plan"].path / "plan.json") or {}
        sections["plan"]["plan"] = plan
        pred = plan.get("predicted", {})
        peak = pred.get("resident_peak_bytes", pred.get("peak_memory_bytes"))
        if peak is not None:
            headline["planned peak memory (MiB)"] = round(peak / 2**20, 1)
        if pred.get("total_seconds") is not None:
            headline["planned training time (s)"] = round(pred["total_seconds"], 1)
    if "model" in inputs:
        s = inputs["model"].stats
        sections["model"]["metrics"] = read_jsonl(inputs["model"].path / "metrics.jsonl", missing_ok=True)[-2000:]
        for label, key in (
            ("train loss first", "train_loss_first"),
            ("train loss last", "train_loss_last"),
            ("training tokens/s", "tokens_per_second"),
        ):
            if s.get(key) is not None:
                headline[label] = round(float(s[key]), 3)
        peak = s.get("resident_peak_bytes", s.get("peak_memory_bytes"))
        if peak is not None:
            headline["measured peak memory (MiB)"] = round(peak / 2**20, 1)
        comparison = plan_vs_measured(inputs["model"].manifest.get("plan_comparison") or {})
        if comparison:
            sections["model"]["plan_vs_measured"] = comparison
            for label, row in comparison.items():
                if row.get("error %") is not None:
                    headline[f"{label}: error vs plan (%)"] = row["error %"]
        seconds = inputs["model"].manifest.get("timings", {}).get("seconds")
        if seconds is not None:
            headline["training stage time (s)"] = round(seconds, 1)
    if "evaluation" in inputs:
        metrics = _read_json(inputs["evaluation"].path / "metrics.json") or {}
        sections["evaluation"]["metrics"] = metrics
        sections["evaluation"]["before_after"] = before_after(inputs["evaluation"].stats)
        headline.update(_evaluation_headline(inputs["evaluation"].stats))
    return {"title": title, "headline": headline, "sections": sections}


def plan_vs_measured(comparison: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Rows of the planned-vs-measured table: resident peak (what ``top`` shows), step and run
    wall time, and the live-tensor peak as a detail, each with the plan's error."""
    pred, meas = comparison.get("predicted") or {}, comparison.get("measured") or {}
    rows: dict[str, dict[str, Any]] = {}
    for label, p_key, m_key, scale, unit in (
        ("resident peak (RSS)", "resident_peak_bytes", "resident_peak_bytes", 2**20, "MiB"),
        ("step time (wall)", "step_seconds", "step_seconds", 1.0, "s"),
        ("training run (wall)", "run_seconds", "run_seconds", 1.0, "s"),
        ("live tensors above start", "live_peak_bytes", "peak_memory_bytes", 2**20, "MiB"),
    ):
        p, m = pred.get(p_key), meas.get(m_key)
        if p_key == "live_peak_bytes" and p is None:
            p = pred.get("peak_memory_bytes")
        if not isinstance(p, int | float) or not isinstance(m, int | float) or m <= 0:
            continue
        rows[label] = {f"planned ({unit})": round(p / scale, 2), f"measured ({unit})": round(m / scale, 2),
                       "error %": round(100.0 * (p / m - 1.0), 1)}
    return rows


def before_after(stats: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Rows of the before (compared base model) / after (evaluated model) table."""
    rows: dict[str, dict[str, Any]] = {}
    for metric in ("loss", "perplexity"):
        after, before = stats.get(metric), stats.get(f"compare_{metric}")
        if after is None:
            continue
        row: dict[str, Any] = {"before": before, "after": after}
        if isinstance(before, int | float) and before:
            row["change %"] = round(100.0 * (after - before) / before, 2)
        rows[f"held-out {metric}"] = row
    return rows


def _evaluation_headline(stats: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, row in before_after(stats).items():
        for when in ("before", "after"):
            if isinstance(row.get(when), int | float):
                out[f"{label} {when}"] = round(float(row[when]), 4)
    if stats.get("p_value") is not None:
        out["paired test p-value"] = stats["p_value"]
    if stats.get("verdict"):
        out["verdict"] = stats["verdict"]
    return out


def _png_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _table(rows: Mapping[str, Any]) -> str:
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows.items())
    return f"<table><tbody>{body}</tbody></table>"


def _grid(rows: Mapping[str, Mapping[str, Any]]) -> str:
    cols = list(dict.fromkeys(c for r in rows.values() for c in r))
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(k)}</td>"
        + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols)
        + "</tr>"
        for k, r in rows.items()
    )
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | dict):
        s = json.dumps(v, default=str)
        return s if len(s) < 200 else s[:197] + "..."
    return str(v)


def _generations(metrics: Mapping[str, Any]) -> str:
    """Render any list of {prompt, ...generation...} records found in the metrics."""
    found: list[Mapping[str, Any]] = []

    def walk(o: Any) -> None:
        if isinstance(o, list) and o and all(isinstance(x, Mapping) and "prompt" in x for x in o):
            found.extend(o)
        elif isinstance(o, Mapping):
            for v in o.values():
                walk(v)

    walk(metrics)
    if not found:
        return ""
    cols = sorted({k for r in found for k in r if k != "prompt"})
    head = "<tr><th>prompt</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
    rows = "".join(
        "<tr><td>"
        + html.escape(str(r["prompt"]))
        + "</td>"
        + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols)
        + "</tr>"
        for r in found[:20]
    )
    return f"<h3>Generations on fixed prompts</h3><table><thead>{head}</thead><tbody>{rows}</tbody></table>"


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3} h1{margin-bottom:.2em} .muted{color:#777;font-size:.85em}
details{margin:.5em 0 1em}
"""


def render_html(title: str, summary: Mapping[str, Any], inputs: Mapping[str, Artifact]) -> str:
    """One page, no external files: images are inlined as base64 PNG."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        "<p class='muted'>Every figure below was measured by a stage and read from its artifact manifest.</p>",
        "<h2>Headline</h2>",
        _table(summary["headline"]),
    ]
    for name, section in summary["sections"].items():
        art = inputs[name]
        parts.append(
            f"<h2>{html.escape(name.capitalize())} <span class='muted'>({html.escape(section['kind'])})</span></h2>"
        )
        parts.append(
            f"<p class='muted'>{html.escape(section['path'])} · hash {section['hash'][:16]}"
            f" · {section['seconds']} s</p>"
        )
        for img in ("loss.png", "datacard_lengths.png"):
            if (art.path / img).is_file():
                parts.append(_png_tag(art.path / img, img))
        if name == "plan" and section.get("plan"):
            parts.append(_table(flatten(section["plan"].get("predicted", {}))))
        if name == "model" and section.get("plan_vs_measured"):
            parts.append("<h3>Planned vs measured</h3>" + _grid(section["plan_vs_measured"]))
        if name == "evaluation" and section.get("before_after"):
            parts.append("<h3>Before (base model) vs after (fine-tuned)</h3>" + _grid(section["before_after"]))
        if name == "evaluation" and section.get("metrics"):
            parts.append(_generations(section["metrics"]))
        for link in ("datacard.html", "report.html"):
            if (art.path / link).is_file():
                parts.append(f"<p>Full page: <a href='file://{html.escape(str(art.path / link))}'>{link}</a></p>")
        parts.append(
            f"<details><summary>All recorded statistics</summary>{_table(flatten(section['stats']))}</details>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
