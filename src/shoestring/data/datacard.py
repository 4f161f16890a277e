"""The data card: what went in, what came out, and why every record went where it went.

``datacard.json`` holds the numbers; ``datacard.html`` is a self-contained page (inline CSS
and SVG, no scripts, nothing fetched) that renders them. PII appears as counts per type
only, never values; cluster examples are taken from the *curated* text (PII already removed).
"""

from __future__ import annotations

import html
import itertools
from typing import Any

import numpy as np

__all__ = ["LENGTH_BINS", "length_histogram", "render_html"]

LENGTH_BINS = [0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]


def length_histogram(lengths: list[int]) -> dict[str, Any]:
    """Words per kept record: histogram over fixed bins plus min/median/p95/max."""
    if not lengths:
        return {"bins": [], "counts": [], "min": None, "median": None, "p95": None, "max": None}
    arr = np.asarray(lengths)
    edges = [*LENGTH_BINS, max(LENGTH_BINS[-1] + 1, int(arr.max()) + 1)]
    counts, _ = np.histogram(arr, bins=edges)
    labels = [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)]
    return {
        "bins": labels,
        "counts": [int(c) for c in counts],
        "min": int(arr.min()),
        "median": round(float(np.median(arr)), 1),
        "p95": round(float(np.percentile(arr, 95)), 1),
        "max": int(arr.max()),
    }


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bars(labels: list[str], counts: list[int], title: str) -> str:
    if not counts:
        return "<p>(no records)</p>"
    width, bar_h, gap, label_w = 520, 16, 4, 90
    peak = max(counts) or 1
    rows = []
    for i, (lab, c) in enumerate(zip(labels, counts, strict=True)):
        y = i * (bar_h + gap)
        w = int((width - label_w - 60) * c / peak)
        rows.append(
            f'<text x="0" y="{y + 12}" font-size="11">{html.escape(lab)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" fill="#4a7fb5"/>'
            f'<text x="{label_w + w + 4}" y="{y + 12}" font-size="11">{c}</text>'
        )
    h = len(counts) * (bar_h + gap)
    return f'<svg role="img" aria-label="{html.escape(title)}" width="{width}" height="{h}">{"".join(rows)}</svg>'


def render_html(card: dict[str, Any]) -> str:
    """A self-contained HTML page for a data card dict."""
    acc = card["accounting"]
    parts = [
        f"<h1>Data card: {html.escape(str(card.get('name', 'dataset')))}</h1>",
        "<h2>Accounting</h2>",
        _table(
            [(acc["read"], acc["kept"], acc["dropped"], acc["quarantined"], acc.get("augmented", 0))],
            ("read", "kept", "dropped", "quarantined", "augmented (extra)"),
        ),
        "<p>read = kept + dropped + quarantined</p>",
        "<h2>Sources</h2>",
        _table(
            [(s, v["read"], v["quarantined"], v["kept"]) for s, v in card["sources"].items()],
            ("source", "read", "quarantined", "kept"),
        ),
        "<h2>Drops by op and reason</h2>",
        _table(
            [(op, r, n) for op, reasons in card["drops"].items() for r, n in reasons.items()],
            ("op", "reason", "records"),
        ),
        "<h2>Quarantine</h2>",
        _table(list(card["quarantine"].items()), ("reason", "records")),
        "<h2>Splits</h2>",
        _table(list(card["splits"].items()), ("split", "records")),
        f"<p>Leak check: {card['leak_check']['cross_split_pairs']} near-duplicate pairs cross splits; "
        f"{card['leak_check']['near_pairs_joined_before_split']} near pairs were grouped before splitting.</p>",
        "<h2>Length (words per record)</h2>",
        _bars(card["lengths"]["bins"], card["lengths"]["counts"], "length histogram"),
        _table(
            [tuple(card["lengths"][k] for k in ("min", "median", "p95", "max"))],
            ("min", "median", "p95", "max"),
        ),
        "<h2>PII found (counts only)</h2>",
        _table(list(card["pii"].items()), ("type", "occurrences")) if card["pii"] else "<p>none found</p>",
        "<h2>Largest duplicate clusters</h2>",
    ]
    for cl in card["duplicate_clusters"]:
        parts.append(f"<h3>cluster {html.escape(cl['cluster_id'])} ({cl['size']} records)</h3><ul>")
        for ex in cl["examples"]:
            tag = "kept" if ex["kept"] else "dropped"
            parts.append(f"<li><b>{tag}</b> {html.escape(ex['id'])}: <code>{html.escape(ex['text'])}</code></li>")
        parts.append("</ul>")
    if not card["duplicate_clusters"]:
        parts.append("<p>no duplicates</p>")
    if card.get("labels"):
        parts.append("<h2>Labels</h2>")
        for split, dist in card["labels"].get("distribution", {}).items():
            parts.append(f"<h3>{html.escape(split)}</h3>")
            parts.append(_bars(list(dist), list(dist.values()), f"labels in {split}"))
        lf = card["labels"].get("functions")
        if lf:
            parts.append(
                _table(
                    [
                        (n, v["label"], v["coverage"], v["overlap"], v["conflict"], v["estimated_accuracy"])
                        for n, v in lf.items()
                    ],
                    ("function", "label", "coverage", "overlap", "conflict", "est. accuracy"),
                )
            )
    if card.get("k_anonymity"):
        k = card["k_anonymity"]
        parts.append("<h2>k-anonymity</h2>")
        parts.append(
            _table(
                [(", ".join(k["columns"]), k["k"], k["classes"], k["min_class_size"], k["records_below_k"])],
                ("quasi-identifiers", "k", "classes", "smallest class", "records below k"),
            )
        )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}"
        "th{background:#f3f3f3}code{white-space:pre-wrap;font-size:.85em}"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Data card</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )
