"""The data barrier = f(acquisition, processing, sharing), from a curated dataset artifact.

Inputs are plain dicts read from artifacts (the dataset's manifest stats and
``datacard.json``, the plan's ``plan.json``, the trained model's stats and privacy record),
so the formulas can be tested on figures chosen by hand. docs/ASSESS.md states each one.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoestring.assess.scoring import Change, Component, Wall, clip01, wall_from, wall_score

__all__ = ["DATA_PILLARS", "DataFacts", "assess_data", "residual_pii"]

DATA_PILLARS = ("acquisition", "processing", "sharing")
DEDUP_OP = "dedup"
BEFORE_PII_OPS = ("normalize", "quality")
"""Ops that run before PII scrubbing (the curator's op order), so their drops never reach it."""

# Replacement tokens the curator writes (pii.py: redact, hash, pseudonym, e-mail pseudonym):
# a re-scan must not count them as residual PII.
_OWN_TOKENS = re.compile(r"\[[A-Z0-9_]+\]|<[A-Z0-9_]+[:_][0-9a-f]{8,12}>|user-[0-9a-f]{8}@example\.invalid")


@dataclass
class DataFacts:
    """What the data barrier is computed from (all optional except the dataset's stats)."""

    stats: dict[str, Any]
    """Dataset manifest ``stats``: read, kept, dropped, quarantined, dropped_by{op: {reason: n}}."""
    card: dict[str, Any]
    """``datacard.json``: sources, normalize, pii_records, labels, k_anonymity."""
    quarantine_by_source: dict[str, Counter[str]] = field(default_factory=dict)
    """Source -> reason -> count, from ``quarantine.jsonl``."""
    residual: dict[str, Any] | None = None
    """:func:`residual_pii` of the released files (None = not scanned)."""
    plan: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    """Trained model stats: steps, micro_batch_size, grad_accum, world_size, rows."""
    privacy: dict[str, Any] | None = None
    """Trained model manifest ``privacy`` (DP-SGD): epsilon, delta."""
    model_given: bool = False
    epsilon_max: float = 10.0
    release: dict[str, Any] | None = None
    """``share/release_report.json`` of a curated dataset made with ``share: {enabled: true}`` (None = no release)."""


def residual_pii(files: list[Path], max_records: int) -> dict[str, Any]:
    """Re-scan released records with the curator's own detectors; the curator's replacement tokens are not counted.

    Returns ``{"records", "records_with_pii", "by_type"}`` over at most ``max_records`` records.
    """
    from shoestring.data.pii import find_pii

    seen = hits = 0
    by_type: Counter[str] = Counter()
    for f in files:
        if not f.is_file():
            continue
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                if seen >= max_records:
                    break
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                seen += 1
                found = [kind for text in _strings(rec) for kind in _residual_kinds(text, find_pii)]
                if found:
                    hits += 1
                    by_type.update(found)
    return {"records": seen, "records_with_pii": hits, "by_type": dict(sorted(by_type.items()))}


def _strings(rec: Any, key: str = "") -> list[str]:
    """Every string value of a record (nested messages included), except ids."""
    if isinstance(rec, str):
        return [] if key in ("id", "cluster_id") else [rec]
    if isinstance(rec, dict):
        return [s for k, v in rec.items() for s in _strings(v, str(k))]
    if isinstance(rec, list):
        return [s for v in rec for s in _strings(v, key)]
    return []


def _residual_kinds(text: str, find_pii: Any) -> list[str]:
    own = [m.span() for m in _OWN_TOKENS.finditer(text)]
    return [k for s, e, k in find_pii(text) if not any(s < oe and os_ < e for os_, oe in own)]


def _frac(n: float, d: float) -> float:
    return n / d if d > 0 else 0.0


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _acquisition(f: DataFacts) -> list[Component]:
    st = f.stats
    read, quar = int(st["read"]), int(st["quarantined"])
    q = _frac(quar, read)
    out = [
        Component(
            "malformed_share", "acquisition", "malformed records", q, "fraction of records read", clip01(q),
            "s = quarantined / read", "dataset: stats.quarantined, stats.read",
            f"{quar:,} of {read:,} records read were malformed ({_reasons(st.get('quarantine_reasons', {})) or 'none'})",
        )
    ]
    out.append(_repetition(f))
    return out


def _consumed(f: DataFacts) -> tuple[float, float, str] | None:
    """(unique training sequences U, sequences training consumes C, where from)."""
    if f.train and f.train.get("steps") and f.train.get("rows"):
        t = f.train
        batch = int(t.get("micro_batch_size") or 1) * int(t.get("grad_accum") or 1) * int(t.get("world_size") or 1)
        return float(t["rows"]), float(t["steps"]) * batch, "model: stats.rows, steps x micro_batch_size x grad_accum"
    if f.plan:
        u = float(f.plan.get("data", {}).get("sequences_per_epoch") or 0)
        steps = float(f.plan.get("predicted", {}).get("steps") or 0)
        if u > 0 and steps > 0:
            return u, steps * float(f.plan.get("batch_size") or 1), "plan: data.sequences_per_epoch, predicted.steps x batch_size"
    return None


def _repetition(f: DataFacts) -> Component:
    got = _consumed(f)
    if got is None:
        return Component("data_repetition", "acquisition", "training data repeated", None, "fraction of sequences trained on",
                         None, "s = max(0, 1 - U / C)", "plan or model", missing="add a plan or train stage")
    u, c, src = got
    r = max(0.0, 1.0 - _frac(u, c))
    return Component(
        "data_repetition", "acquisition", "training data repeated", r, "fraction of sequences trained on", clip01(r),
        "s = max(0, 1 - U / C), U = unique training sequences, C = sequences the run consumes", src,
        f"the run consumes {c:,.0f} sequences; the data holds {u:,.0f} unique ones",
    )


def _processing(f: DataFacts) -> list[Component]:
    st, card = f.stats, f.card
    parsed = int(st["read"]) - int(st["quarantined"])
    drops: dict[str, dict[str, int]] = st.get("dropped_by", {})
    dup = sum(drops.get(DEDUP_OP, {}).values())
    filt = {op: r for op, r in drops.items() if op != DEDUP_OP}
    n_filt = sum(sum(r.values()) for r in filt.values())
    out = [
        Component(
            "filter_loss", "processing", "records removed by filters", _frac(n_filt, parsed), "fraction of parsed records",
            clip01(_frac(n_filt, parsed)), "s = dropped by ops other than dedup / (read - quarantined)",
            "dataset: stats.dropped_by",
            "; ".join(f"{op}: {_reasons(r)}" for op, r in filt.items()) or "no record removed by a filter",
        ),
        Component(
            "duplicate_rate", "processing", "duplicates", _frac(dup, parsed), "fraction of parsed records",
            clip01(_frac(dup, parsed)), "s = (exact + near duplicates) / (read - quarantined)",
            "dataset: stats.dropped_by.dedup", _reasons(drops.get(DEDUP_OP, {})) or "no duplicates",
        ),
    ]
    repairs = sum(int(v) for v in card.get("normalize", {}).values() if isinstance(v, int | float))
    out.append(Component(
        "repair_share", "processing", "records repaired", _frac(repairs, parsed), "fraction of parsed records (upper bound)",
        clip01(_frac(repairs, parsed)), "s = min(1, repairs counted by normalize / (read - quarantined))",
        "datacard: normalize", ", ".join(f"{k} {v}" for k, v in card.get("normalize", {}).items()) or "no repairs",
    ))
    reached = parsed - sum(sum(drops.get(op, {}).values()) for op in BEFORE_PII_OPS)
    pii_rec = int(card.get("pii_records", 0) or 0)
    occ = sum(int(v) for v in card.get("pii", {}).values())
    out.append(Component(
        "pii_density", "processing", "records carrying PII", _frac(pii_rec, reached), "fraction of records scrubbed",
        clip01(_frac(pii_rec, reached)), "s = records with PII / records reaching the PII op",
        "datacard: pii_records, pii",
        f"{pii_rec:,} of {reached:,} records carried PII ({occ:,} occurrences: "
        f"{', '.join(f'{k} {v}' for k, v in card.get('pii', {}).items()) or 'none'})",
    ))
    out.extend(_label_components(card.get("labels") or {}))
    return out


def _label_components(labels: dict[str, Any]) -> list[Component]:
    if "coverage" not in labels:
        miss = "no labelling functions configured (labels.functions)"
        return [Component("label_coverage_gap", "processing", "records no label function covers", None, "fraction",
                          None, "s = 1 - coverage", "datacard: labels.coverage", missing=miss),
                Component("label_disagreement", "processing", "labelling functions disagreeing", None, "fraction",
                          None, "s = conflict / overlap", "datacard: labels.conflict, labels.overlap", missing=miss)]
    cov, ovl, con = float(labels["coverage"]), float(labels.get("overlap", 0)), float(labels.get("conflict", 0))
    dis = _frac(con, ovl)
    return [
        Component("label_coverage_gap", "processing", "records no label function covers", 1 - cov,
                  "fraction of records labelled", clip01(1 - cov), "s = 1 - coverage", "datacard: labels.coverage",
                  f"labelling functions cover {cov:.1%} of records"),
        Component("label_disagreement", "processing", "labelling functions disagreeing", dis if ovl else None,
                  "fraction of records with two or more votes", clip01(dis) if ovl else None, "s = conflict / overlap",
                  "datacard: labels.conflict, labels.overlap",
                  f"{con:.1%} of records have conflicting votes, {ovl:.1%} have two or more",
                  missing="" if ovl else "no record has two votes"),
    ]


def _sharing(f: DataFacts) -> list[Component]:
    out = []
    res = f.residual
    if res is not None and res["records"]:
        share = _frac(res["records_with_pii"], res["records"])
        out.append(Component(
            "residual_pii", "sharing", "released records still carrying PII", share, "fraction of released records",
            clip01(share), "s = records with a detection after curation / records scanned",
            "dataset: " + ("share/" if f.release is not None else "") + "train/validation/test.jsonl re-scanned with the "
            "curator's detectors",
            f"{res['records_with_pii']:,} of {res['records']:,} scanned records "
            f"({', '.join(f'{k} {v}' for k, v in res['by_type'].items()) or 'no detections'})",
        ))
    else:
        out.append(Component("residual_pii", "sharing", "released records still carrying PII", None, "fraction", None,
                             "s = records with a detection / records scanned", "dataset files",
                             missing="no released records to scan"))
    out += _release_components(f)
    out.append(_privacy(f))
    return out


def _release_components(f: DataFacts) -> list[Component]:
    """k-anonymity and what the release keeps: from the shareable release when there is one, else the data card."""
    rel = f.release
    if rel is not None:
        k = rel.get("k_anonymity") or {}
        curated = int((rel.get("records") or {}).get("curated", 0))
        released = int((rel.get("records") or {}).get("released", 0))
        gone = curated - released
        out = [Component(
            "release_suppression", "sharing", "curated records the release withholds", _frac(gone, curated),
            "fraction of curated records", clip01(_frac(gone, curated)), "s = (curated - released) / curated",
            "dataset: share/release_report.json records",
            f"{released:,} of {curated:,} curated records released"
            + (f"; {int(k.get('records_suppressed', 0)):,} suppressed for k={k.get('k_required')}" if k else ""),
        )]
        if k:
            ok = k.get("k_achieved") is None or int(k["k_achieved"]) >= int(k.get("k_required") or 0)
            out.append(Component(
                "k_anonymity_gap", "sharing", f"records below k={k.get('k_required')}", 0.0 if ok else 1.0,
                "fraction of released records", 0.0 if ok else 1.0,
                "s = 0 when the release achieves k (it is enforced by suppression), else 1",
                "dataset: share/release_report.json k_anonymity",
                f"quasi-identifiers {', '.join(k.get('quasi_identifiers', []))}: smallest class "
                f"{k.get('k_achieved')} in {k.get('classes')} classes",
            ))
        eps = float(rel.get("epsilon_spent") or 0.0)
        if rel.get("dp_counts"):
            out.append(Component(
                "counts_privacy", "sharing", "privacy loss of the released counts", eps, "epsilon (Laplace counts)",
                clip01(eps / f.epsilon_max), f"s = min(1, epsilon / {f.epsilon_max:g})",
                "dataset: share/release_report.json epsilon_spent", f"epsilon {eps:g} over the DP count histograms",
            ))
        return out
    k = f.card.get("k_anonymity") or {}
    if k:
        kept = int(f.stats["kept"])
        below = 0 if k.get("enforced") else int(k.get("records_below_k", 0))
        return [Component(
            "k_anonymity_gap", "sharing", f"records below k={k.get('k')}", _frac(below, kept),
            "fraction of released records", clip01(_frac(below, kept)),
            "s = records in a quasi-identifier class smaller than k / kept (0 when enforced)",
            "datacard: k_anonymity", f"quasi-identifiers {', '.join(k.get('columns', []))}: "
            f"{int(k.get('records_below_k', 0)):,} records below k ({'suppressed' if k.get('enforced') else 'released'})",
        )]
    return [Component("k_anonymity_gap", "sharing", "records below k", None, "fraction", None,
                      "s = records below k / kept", "datacard: k_anonymity",
                      missing="no quasi-identifiers set (pii.k_anonymity, or a share: release with k)")]


def _privacy(f: DataFacts) -> Component:
    p = f.privacy or {}
    eps = p.get("epsilon")
    if eps is None:
        miss = "the model was trained without DP-SGD (train privacy:)" if f.model_given else "no model artifact given"
        return Component("privacy_budget", "sharing", "privacy loss of the shared model", None, "epsilon", None,
                         f"s = min(1, epsilon / {f.epsilon_max:g})", "model: manifest.privacy", missing=miss)
    eps = float(eps)
    return Component(
        "privacy_budget", "sharing", "privacy loss of the shared model", eps, "epsilon (DP-SGD)",
        clip01(eps / f.epsilon_max), f"s = min(1, epsilon / {f.epsilon_max:g})", "model: manifest.privacy",
        f"epsilon {eps:.3g} at delta {p.get('delta', 0):.2g}",
    )


def components(f: DataFacts) -> list[Component]:
    return [*_acquisition(f), *_processing(f), *_sharing(f)]


def _with(comps: list[Component], key: str, value: float, score: float) -> list[Component]:
    return [c.rescored(value, score) if c.key == key else c for c in comps]


def _changes(f: DataFacts, comps: list[Component]) -> list[Change]:
    now = wall_score(comps, DATA_PILLARS) or 0.0
    by = {c.key: c for c in comps}
    st = f.stats
    read, parsed = int(st["read"]), int(st["read"]) - int(st["quarantined"])
    out: list[Change] = []

    def add(action: str, new: list[Component], effect: str, **detail: Any) -> None:
        after = wall_score(new, DATA_PILLARS) or 0.0
        out.append(Change(action, "measured counts", now, after, effect, detail))

    if f.quarantine_by_source:
        src, reasons = max(f.quarantine_by_source.items(), key=lambda kv: sum(kv[1].values()))
        n = sum(reasons.values())
        q = _frac(int(st["quarantined"]) - n, read)
        add(f"repair the {n} malformed records of source '{src}' ({_reasons(dict(reasons))}; see quarantine.jsonl)",
            _with(comps, "malformed_share", q, q), f"malformed share {by['malformed_share'].value:.1%} -> {q:.1%}",
            source=src, records=n)
    rep = by["data_repetition"]
    got = _consumed(f)
    if rep.value and got:
        u, c, _ = got
        per_seq = _frac(float((f.plan or {}).get("data", {}).get("records") or 0), float(
            (f.plan or {}).get("data", {}).get("sequences_per_epoch") or 0)) or 1.0
        more = math.ceil((c - u) * per_seq)
        add(f"collect about {more:,} more unique training records, so the run stops repeating data",
            _with(comps, "data_repetition", 0.0, 0.0), f"repeated share {rep.value:.1%} -> 0%", records=more)
    filt = {(op, r): n for op, rs in st.get("dropped_by", {}).items() if op != DEDUP_OP for r, n in rs.items()}
    if filt:
        (op, reason), n = max(filt.items(), key=lambda kv: kv[1])
        loss = _frac(sum(filt.values()) - n, parsed)
        add(f"recover the {n} records the {op} op drops as '{reason}' (fix them at the source or relax that rule)",
            _with(comps, "filter_loss", loss, loss), f"filter loss {by['filter_loss'].value:.1%} -> {loss:.1%}",
            op=op, reason=reason, records=n)
    dup = by["duplicate_rate"]
    if dup.value:
        add("ingest each document once (the sources overlap): duplicates cost reading and dedup but add nothing",
            _with(comps, "duplicate_rate", 0.0, 0.0), f"duplicate rate {dup.value:.1%} -> 0%")
    res = by["residual_pii"]
    if res.value and f.residual:
        kinds = ", ".join(f.residual["by_type"])
        add(f"scrub the residual PII types ({kinds}): add them to pii.types, or pii.mode: redact",
            _with(comps, "residual_pii", 0.0, 0.0), f"released records with PII {res.value:.1%} -> 0%", types=kinds)
    kgap = by["k_anonymity_gap"]
    if kgap.value and f.release is None:
        k = f.card["k_anonymity"]
        n = int(k.get("records_below_k", 0))
        loss = _frac(sum(filt.values()) + n, parsed)
        new = _with(_with(comps, "k_anonymity_gap", 0.0, 0.0), "filter_loss", loss, loss)
        add(f"enforce k={k.get('k')} (pii.enforce_k: true): suppresses the {n} records below k",
            new, f"records below k {kgap.value:.1%} -> 0%; filter loss -> {loss:.1%}", records=n)
    sup = by.get("release_suppression")
    if sup is not None and sup.value:
        add("generalise the quasi-identifiers further (share.generalise) so k holds without suppressing records",
            _with(comps, "release_suppression", 0.0, 0.0), f"records withheld {sup.value:.1%} -> 0% (upper bound)")
    gap = by["label_coverage_gap"]
    if gap.value:
        add("label the uncovered records (another labelling function, or labels.zero_shot)",
            _with(comps, "label_coverage_gap", 0.0, 0.0), f"uncovered {gap.value:.1%} -> 0% (upper bound)")
    return out


def assess_data(f: DataFacts) -> Wall:
    """The data barrier wall: components, pillar scores, score and ranked changes."""
    comps = components(f)
    return wall_from("data barrier", comps, DATA_PILLARS, _changes(f, comps))
