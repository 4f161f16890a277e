"""A shareable release of a curated dataset: what a partner may receive, and proof of what left.

``curate`` with ``share: {enabled: true, ...}`` writes ``share/`` inside the dataset artifact -
itself a dataset artifact (its own ``manifest.json``), so `train` / `federate` take its path:

1. **direct identifiers** - ``drop_columns`` are removed; ``pseudonymise_columns`` (and the
   record ``id`` / ``cluster_id``, which embed source ids) become keyed HMAC-SHA256 tokens
   (key from ``$pii.key_env`` or ``pii.key_file``, required: without one, or with the public
   development key or a short one, curate stops before reading any data, since anyone could
   re-identify by hashing candidate values);
2. **quasi-identifiers** - ``generalise`` coarsens them (numbers to bins of a width, text to a
   prefix), then k-anonymity is *enforced*: records whose combination of ``quasi_identifiers``
   occurs fewer than ``k`` times in the release are suppressed (counted);
3. **residual PII scan** - every string value of every released record goes through the PII
   detectors (all types); one hit and the curate stage fails with one line, so no artifact
   with a hit is ever committed;
4. **DP counts** - ``count_columns`` are released as histograms with Laplace noise
   (sensitivity 1: one record changes one count by one; ``epsilon`` split equally over the
   columns, sequential composition; rounded and clipped at 0, which is post-processing);
5. ``release_report.json`` - the machine-readable account of all of the above.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from shoestring.core.artifact import atomic_write_json, atomic_write_text
from shoestring.core.errors import ShoestringError
from shoestring.data.config import CurateConfig, Generalise, ShareConfig
from shoestring.data.pii import find_pii, pseudonym_key

__all__ = ["write_release"]

SPLITS = ("train", "validation", "test")
ID_COLUMNS = ("id", "cluster_id")
PSEUDONYM_EMAIL = re.compile(r"user-[0-9a-f]{8}@example\.invalid")
"""What curate's ``pii: {mode: pseudonym}`` leaves for an e-mail: a token, not an address of anyone."""


_LETTERS = str.maketrans("0123456789abcdef", "abcdefghijklmnop")


def _token(key: bytes, column: str, value: Any) -> str:
    """Keyed pseudonym in letters only (64 bits): runs of hex digits could pass for card or phone numbers."""
    return "p_" + hmac.new(key, f"{column}\0{value}".encode(), hashlib.sha256).hexdigest()[:16].translate(_LETTERS)


def _generalised(value: Any, rule: Generalise) -> Any:
    if value is None:
        return None
    if rule.bin is not None:
        try:
            x = float(value)
        except (TypeError, ValueError):
            return "*"  # not a number: nothing of it can be released under a numeric rule
        lo = np.floor(x / rule.bin) * rule.bin
        if float(rule.bin).is_integer():
            return f"{int(lo)}-{int(lo + rule.bin - 1)}"
        return f"{lo:g}-{lo + rule.bin:g}"
    if rule.prefix is not None:
        text = str(value)
        return text[: rule.prefix] + "*" * max(0, len(text) - rule.prefix)
    return value


def _read(src: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        path = src / f"{split}.jsonl"
        out[split] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
            if path.is_file() else []  # fmt: skip
    return out


def _identifiers(records: dict[str, list[dict[str, Any]]], share: ShareConfig, key: bytes) -> None:
    """Drop direct identifiers and pseudonymise the identifying columns, in place."""
    columns = [*ID_COLUMNS, *share.pseudonymise_columns]
    for recs in records.values():
        for rec in recs:
            for col in share.drop_columns:
                rec.pop(col, None)
            for col in columns:
                if rec.get(col) is not None:
                    rec[col] = _token(key, col, rec[col])


def _k_anonymity(records: dict[str, list[dict[str, Any]]], share: ShareConfig) -> dict[str, Any]:
    """Generalise the quasi-identifiers and suppress records in classes smaller than k."""
    qi = share.quasi_identifiers
    if not qi:
        return {"quasi_identifiers": [], "k_required": share.k, "k_achieved": None, "records_suppressed": 0}
    for recs in records.values():
        for rec in recs:
            for col, rule in share.generalise.items():
                if col in rec:
                    rec[col] = _generalised(rec[col], rule)
    combo = lambda r: tuple(str(r.get(c)) for c in qi)  # noqa: E731
    counts = Counter(combo(r) for recs in records.values() for r in recs)
    suppressed = 0
    for split, recs in records.items():
        kept = [r for r in recs if counts[combo(r)] >= share.k]
        suppressed += len(recs) - len(kept)
        records[split] = kept
    final = Counter(combo(r) for recs in records.values() for r in recs)
    return {"quasi_identifiers": qi, "generalised": share.generalise, "k_required": share.k,
            "k_achieved": min(final.values()) if final else None, "classes": len(final),
            "records_suppressed": suppressed}  # fmt: skip


def _residual_pii(records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Scan every released string for PII of every type; raise one line on the first hit."""
    scanned = 0
    for split, recs in records.items():
        for i, rec in enumerate(recs):
            scanned += 1
            for col, value in rec.items():
                texts = [value] if isinstance(value, str) else [json.dumps(value)] if isinstance(value, list | dict) else []
                for text in texts:
                    hits = [h for h in find_pii(text) if not PSEUDONYM_EMAIL.fullmatch(text[h[0] : h[1]])]
                    if hits:
                        kinds = ", ".join(sorted({k for _, _, k in hits}))
                        raise ShoestringError(
                            f"share: residual PII ({kinds}) in {split}.jsonl record {i + 1}, field '{col}'; nothing "
                            "was released - enable pii (or add its type), or list the column in share.drop_columns"
                        )
    return {"types": "all detectors (email, phone, ipv4, ipv6, credit_card, iban, ssn, secret)",
            "records_scanned": scanned, "hits": 0}  # fmt: skip


def _dp_counts(records: dict[str, list[dict[str, Any]]], share: ShareConfig) -> dict[str, Any]:
    """Laplace-noised value counts of the count columns (and the record total)."""
    cols = share.count_columns
    rng = np.random.default_rng(share.seed)
    per = share.epsilon / (len(cols) + 1)  # the total count is released too
    rows = [r for recs in records.values() for r in recs]
    noisy_total = max(0, round(len(rows) + float(rng.laplace(0.0, 1.0 / per))))
    out: dict[str, Any] = {"mechanism": "Laplace, sensitivity 1 (add/remove one record), delta 0",
                           "epsilon_total": share.epsilon, "epsilon_per_release": per, "records": noisy_total,
                           "columns": {}}  # fmt: skip
    for col in cols:
        counts = Counter(str(r.get(col)) for r in rows)
        out["columns"][col] = {v: max(0, round(n + float(rng.laplace(0.0, 1.0 / per)))) for v, n in sorted(counts.items())}
    return out


def write_release(cfg: CurateConfig, dataset_dir: Path, source_pii: dict[str, int]) -> dict[str, Any]:
    """Write ``dataset_dir/share/`` from the curated splits; return the release report."""
    share: ShareConfig = cfg.share
    records = _read(dataset_dir)
    read = sum(len(v) for v in records.values())
    key = pseudonym_key(cfg.pii, shareable=True)
    _identifiers(records, share, key)
    kanon = _k_anonymity(records, share)
    residual = _residual_pii(records)
    counts = _dp_counts(records, share) if share.count_columns else None
    out = dataset_dir / "share"
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, recs in records.items():
        atomic_write_text(out / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
        sizes[split] = len(recs)
    report = {
        "records": {"curated": read, "released": sum(sizes.values()), "splits": sizes},
        "removed_columns": share.drop_columns,
        "pseudonymised_columns": [*ID_COLUMNS, *share.pseudonymise_columns],
        "pseudonym": "HMAC-SHA256 with the key in $" + cfg.pii.key_env + ", first 64 bits written as letters a-p",
        "pii_removed_by_curate": source_pii, "pii_mode": cfg.pii.mode if cfg.pii.enabled else "off",
        "residual_pii_scan": residual, "k_anonymity": kanon,
        "dp_counts": None if counts is None else {k: v for k, v in counts.items() if k != "columns"},
        "epsilon_spent": share.epsilon if counts is not None else 0.0,
    }  # fmt: skip
    if counts is not None:
        atomic_write_json(out / "counts.json", counts)
    atomic_write_json(out / "release_report.json", report)
    digest = hashlib.sha256(b"".join((out / f"{s}.jsonl").read_bytes() for s in SPLITS)).hexdigest()
    atomic_write_json(out / "manifest.json", {"kind": "dataset", "stage": "curate-share", "hash": digest,
                                              "stats": {"kept": sum(sizes.values()), "splits": sizes},
                                              "release_report": report})  # fmt: skip
    return report
