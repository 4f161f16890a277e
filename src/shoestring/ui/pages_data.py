"""Pages: the data card of a dataset artifact, and a browser for its JSON-lines files."""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import urlencode

from shoestring.ui import charts
from shoestring.ui.layout import Raw, cards, esc, fmt_pct, link, section, table
from shoestring.ui.store import ArtifactView, read_jsonl

__all__ = ["BROWSABLE", "datacard_body", "rows_body"]

BROWSABLE = ("quarantine.jsonl", "duplicates.jsonl", "train.jsonl", "validation.jsonl", "test.jsonl")
PAGE_ROWS = 50
TEXT_CHARS = 600


def _acct_cell(key: str, value: int) -> Raw:
    return Raw(f'<span id="acct-{key}" data-value="{value}">{value:,}</span>')


def _accounting(a: ArtifactView, card: dict[str, Any]) -> Raw:
    acc = card.get("accounting") or {k: a.stats.get(k, 0) for k in ("read", "kept", "dropped", "quarantined")}
    read, kept, dropped, quar = (int(acc.get(k, 0)) for k in ("read", "kept", "dropped", "quarantined"))
    ok = read == kept + dropped + quar
    check = (f'<p class="identity {"ok" if ok else "bad"}" id="acct-identity">read {read:,} = kept {kept:,} + dropped '
             f'{dropped:,} + quarantined {quar:,} {"✓" if ok else "✗ does not add up"}</p>')
    figs = table(["read", "kept", "dropped", "quarantined", "augmented (extra)"], [[
        _acct_cell("read", read), _acct_cell("kept", kept), _acct_cell("dropped", dropped),
        _acct_cell("quarantined", quar), int(acc.get("augmented", 0))]], tid="accounting", numeric=[0, 1, 2, 3, 4])
    bar = charts.share_bar([("kept", kept, "#2e9e6a"), ("dropped", dropped, "#d9822b"),
                            ("quarantined", quar, "#cf3a3a")], title="where every record read went")
    return Raw(f"{figs}{bar}{check}")


def _drops(card: dict[str, Any], stats: dict[str, Any]) -> Raw:
    drops = card.get("drops") or stats.get("dropped_by") or {}
    rows = [(op, reason, n) for op, reasons in drops.items() for reason, n in reasons.items()]
    rows.sort(key=lambda r: -r[2])
    bars = charts.bar_chart([(f"{op}: {r}", float(n)) for op, r, n in rows], title="records dropped, by op and reason",
                            colour="#d9822b")
    return Raw(table(["op", "reason", "records"], rows, tid="drops", numeric=[2]) + bars)


def _clusters(a: ArtifactView, card: dict[str, Any]) -> Raw:
    out: list[str] = []
    d = card.get("dedup") or {}
    if d:
        out.append(table(["records after dedup", "candidates checked", "rejected by verification",
                          "exact Jaccard checks", "mean Jaccard of removed", "re-centred clusters"], [[
            d.get("groups", "-"), d.get("candidates_checked", "-"), d.get("candidates_rejected_by_verification", "-"),
            d.get("exact_jaccard_checks", "-"), d.get("near_duplicate_mean_jaccard", "-"), d.get("recentred_clusters", "-")]],
            numeric=[0, 1, 2, 3, 4, 5]))
    for cl in card.get("duplicate_clusters") or []:
        items = "".join(
            f'<li class="{"kept" if ex.get("kept") else "dropped"}"><span class="tag">'
            f'{"kept" if ex.get("kept") else "removed"}</span> <code>{esc(ex.get("id"))}</code>'
            f'<pre class="text">{esc(str(ex.get("text", ""))[:TEXT_CHARS])}</pre></li>'
            for ex in cl.get("examples", []))
        out.append(f'<details class="cluster"><summary>cluster <code>{esc(cl.get("cluster_id"))}</code> - '
                   f'{esc(cl.get("size"))} records</summary><ul>{items}</ul></details>')
    if not card.get("duplicate_clusters"):
        out.append('<p class="muted">no duplicate clusters</p>')
    out.append(f'<p>{link(f"{a.url}/rows/duplicates.jsonl", "every removed duplicate and its cluster")}</p>')
    return Raw("".join(out))


def _labels(card: dict[str, Any]) -> Raw:
    lab = card.get("labels") or {}
    if not lab:
        return Raw('<p class="muted">no labels (no labelling functions or zero-shot labels configured)</p>')
    out = []
    if "coverage" in lab:
        out.append(cards([("coverage", fmt_pct(lab["coverage"]), "records some function labels"),
                          ("overlap", fmt_pct(lab.get("overlap")), "records with two or more votes"),
                          ("conflict", fmt_pct(lab.get("conflict")), "records whose votes disagree")]))
    for split, dist in (lab.get("distribution") or {}).items():
        out.append(charts.bar_chart([(str(k), float(v)) for k, v in dist.items()], title=f"labels in {split}",
                                    colour="#7a5cc2"))
    fns = lab.get("functions") or {}
    if fns:
        out.append(table(["function", "label", "coverage", "overlap", "conflict", "est. accuracy", "weight"], [
            [n, v.get("label"), fmt_pct(v.get("coverage")), fmt_pct(v.get("overlap")), fmt_pct(v.get("conflict")),
             v.get("estimated_accuracy"), v.get("weight", "-")] for n, v in fns.items()], tid="label-functions"))
    return Raw("".join(out))


def datacard_body(a: ArtifactView) -> Raw:
    card = a.json_file("datacard.json") or {}
    st = a.stats
    splits = card.get("splits") or st.get("splits") or {}
    leak = card.get("leak_check") or st.get("leak_check") or {}
    quar = card.get("quarantine") or st.get("quarantine_reasons") or {}
    pii = card.get("pii") or st.get("pii") or {}
    lengths = card.get("lengths") or {}
    parts: list[Any] = [
        section("Accounting", _accounting(a, card), sid="accounting-section"),
        section("Sources", table(["source", "read", "quarantined", "kept"], [
            [s, v.get("read"), v.get("quarantined"), v.get("kept")] for s, v in (card.get("sources") or {}).items()],
            tid="sources", numeric=[1, 2, 3])),
        section("Drops by op and reason", _drops(card, st)),
        section("Quarantine", table(["reason", "records"], sorted(quar.items(), key=lambda kv: -kv[1]), tid="quarantine",
                                    numeric=[1]),
                Raw(f'<p>{link(f"{a.url}/rows/quarantine.jsonl", "browse the quarantined records")} '
                    '(raw input as read, with its source and location)</p>')),
        section("Near-duplicate clusters", _clusters(a, card), note="largest clusters; the kept record is the centre"),
        section("PII found", table(["type", "occurrences"], sorted(pii.items(), key=lambda kv: -kv[1]), tid="pii",
                                   numeric=[1]),
                Raw(f'<p class="muted">{esc(card.get("pii_records", 0))} records carried PII; counts only, never values'
                    "</p>")),
        section("Labels", _labels(card)),
        section("Splits", table(["split", "records"], list(splits.items()), tid="splits", numeric=[1]),
                Raw(f'<p>Leak check: {esc(leak.get("cross_split_pairs", "-"))} near-duplicate pairs cross splits; '
                    f'{esc(leak.get("near_pairs_joined_before_split", "-"))} near pairs were grouped before splitting.</p>')),
    ]
    if lengths.get("bins"):
        nz = [(b, float(c)) for b, c in zip(lengths["bins"], lengths["counts"], strict=False)]
        while nz and nz[-1][1] == 0:
            nz.pop()
        while nz and nz[0][1] == 0:
            nz.pop(0)
        parts.append(section("Length (words per kept record)", charts.bar_chart(nz, title="records per length bin"),
                             table(["min", "median", "p95", "max"],
                                   [[lengths.get(k) for k in ("min", "median", "p95", "max")]], numeric=[0, 1, 2, 3])))
    norm = card.get("normalize") or {}
    if norm:
        parts.append(section("Repairs", table(["repair", "records"], list(norm.items()), numeric=[1])))
    k = card.get("k_anonymity") or {}
    if k:
        parts.append(section("k-anonymity", table(
            ["quasi-identifiers", "k", "classes", "smallest class", "records below k", "enforced"],
            [[", ".join(k.get("columns", [])), k.get("k"), k.get("classes"), k.get("min_class_size"),
              k.get("records_below_k"), k.get("enforced")]])))
    rel = a.json_file("share/release_report.json")
    if rel:
        parts.append(section("Shareable release (share/)", _release(rel),
                             note="what a partner receives, and the checks it passed"))
    files = " · ".join(str(link(f"{a.url}/rows/{f}", f)) for f in BROWSABLE if (a.path / f).is_file())
    parts.append(section("Files", Raw(f"<p>{files} · {link(f'{a.url}/file/datacard.html', 'datacard.html')} · "
                                      f"{link(f'{a.url}/file/datacard.json', 'datacard.json')}</p>")))
    return Raw("".join(esc(p) for p in parts))


def _release(rel: dict[str, Any]) -> Raw:
    recs, k = rel.get("records") or {}, rel.get("k_anonymity") or {}
    scan, dp = rel.get("residual_pii_scan") or {}, rel.get("dp_counts") or {}
    rows = [["records", f"{recs.get('released', 0):,} released of {recs.get('curated', 0):,} curated"],
            ["k-anonymity", f"k={k.get('k_required')} on {', '.join(k.get('quasi_identifiers', []))}: smallest class "
                            f"{k.get('k_achieved')}, {k.get('records_suppressed', 0):,} records suppressed" if k else "-"],
            ["residual PII scan", f"{scan.get('hits', '-')} hits in {scan.get('records_scanned', 0):,} records"],
            ["DP counts", f"epsilon {rel.get('epsilon_spent', 0):g} ({dp.get('mechanism', '')})" if dp else "none"],
            ["removed columns", ", ".join(rel.get("removed_columns") or []) or "-"],
            ["pseudonymised columns", ", ".join(rel.get("pseudonymised_columns") or []) or "-"],
            ["PII mode", rel.get("pii_mode", "-")]]
    return table(["", "release"], rows, tid="release")


def _cell(v: Any) -> Raw:
    if isinstance(v, dict | list):
        import json

        v = json.dumps(v, ensure_ascii=False)
    text = str(v)
    short = text[:TEXT_CHARS] + ("…" if len(text) > TEXT_CHARS else "")
    return Raw(f'<pre class="text">{esc(short)}</pre>') if len(text) > 60 or "\n" in text else Raw(esc(text))


def rows_body(a: ArtifactView, name: str, params: dict[str, str]) -> Raw:
    """A page of a JSON-lines payload file, filterable by its low-cardinality columns."""
    rows = read_jsonl(a.path / name)
    filters = {}
    for col in ("source", "reason"):
        values = Counter(str(r.get(col)) for r in rows if col in r)
        if 1 < len(values) <= 50 or (values and col in params):
            filters[col] = values
    for col, want in params.items():
        if col in filters and want:
            rows = [r for r in rows if str(r.get(col)) == want]
    page = max(0, int(params.get("page", "0") or 0)) if str(params.get("page", "0")).isdigit() else 0
    chunk = rows[page * PAGE_ROWS:(page + 1) * PAGE_ROWS]
    cols: list[str] = []
    for r in chunk:
        cols += [c for c in r if c not in cols]
    form = ""
    if filters:
        sel = []
        for col, values in filters.items():
            opts = "".join(f'<option value="{esc(v)}"{" selected" if params.get(col) == v else ""}>{esc(v)} ({n})</option>'
                           for v, n in values.most_common())
            sel.append(f'<label>{esc(col)} <select name="{esc(col)}"><option value="">all</option>{opts}</select></label>')
        form = f'<form method="get" class="filters">{"".join(sel)}<button>filter</button></form>'
    nav = []
    base = {k: v for k, v in params.items() if k != "page" and v}
    if page > 0:
        nav.append(str(link("?" + urlencode({**base, "page": page - 1}), "previous")))
    if (page + 1) * PAGE_ROWS < len(rows):
        nav.append(str(link("?" + urlencode({**base, "page": page + 1}), "next")))
    info = (f'<p class="muted">{len(rows):,} rows; showing {page * PAGE_ROWS + 1 if chunk else 0}-'
            f'{page * PAGE_ROWS + len(chunk)} {" · ".join(nav)}</p>')
    return Raw(form + info + table(cols, [[_cell(r.get(c, "")) for c in cols] for r in chunk], cls="rows", tid="rows"))
