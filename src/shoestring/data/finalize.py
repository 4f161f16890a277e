"""The global phase: dedup decisions, k-anonymity, labels, leak-free splits, and the write-out.

Runs in one process over the finished shards, twice, streaming:

* pass 1 decides per record (kept / exact dup / near dup / k-anonymity / unlabelled) and
  builds the groups; only compact per-record arrays and the LSH index stay in memory;
* pass 2 writes ``train/validation/test.jsonl``, ``quarantine.jsonl`` and ``duplicates.jsonl``
  (each removed duplicate's id and cluster id) and gathers the data card's examples.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from shoestring.data.augment import augment_record
from shoestring.data.cluster import NearDupClusterer, Recentre, ShingleStore
from shoestring.data.config import CurateConfig
from shoestring.data.label import combine_votes, label_weights
from shoestring.data.pipeline import read_shard, shingle_offsets
from shoestring.data.records import Quarantined, Record, full_text
from shoestring.data.semantic import SemanticIndex
from shoestring.data.split import SPLITS, UnionFind, assign_splits, leak_pairs

__all__ = ["KEPT", "Decisions", "decide", "write_dataset"]

KEPT, EXACT, NEAR, SEMANTIC, KANON, UNLABELLED = 0, 1, 2, 3, 4, 5
STATUS_REASON = {
    EXACT: ("dedup", "exact_duplicate"),
    NEAR: ("dedup", "near_duplicate"),
    SEMANTIC: ("dedup", "semantic_duplicate"),
    KANON: ("pii", "k_anonymity"),
    UNLABELLED: ("label", "unlabelled"),
}
EXAMPLE_CHARS = 240


@dataclass
class Decisions:
    """Pass-1 results: per-record status and group, per-group facts, and summary counters."""

    status: list[np.ndarray] = field(default_factory=list)  # per chunk: uint8 per record
    group: list[np.ndarray] = field(default_factory=list)  # per chunk: int32 group per record
    group_key: list[str] = field(default_factory=list)  # representative record id per group
    group_size: list[int] = field(default_factory=list)
    group_split: list[int] = field(default_factory=list)
    labels: Counter[str] = field(default_factory=Counter)
    weights: dict[str, float] = field(default_factory=dict)
    dedup: dict[str, Any] = field(default_factory=dict)
    k_anonymity: dict[str, Any] = field(default_factory=dict)
    leak: dict[str, Any] = field(default_factory=dict)


def _label_of(rec: Record, cfg: CurateConfig, weights: dict[str, float]) -> str | None:
    if not cfg.labels.functions and not cfg.labels.zero_shot:
        value = rec.get(cfg.labels.field)
        return None if value is None else str(value)
    label = combine_votes(rec.get("_votes") or {}, cfg.labels, weights)
    return label if label is not None else rec.get("_zero_shot")


def decide(cfg: CurateConfig, work_dir: Path, n_chunks: int, label_counters: Counter[str]) -> Decisions:
    """Pass 1: dedup clustering (1a), then labels, k-anonymity and strata of the kept records (1b), then splits."""
    d = Decisions(weights=label_weights(cfg.labels, label_counters))
    store = ShingleStore(work_dir)
    try:
        clus, near_js = _cluster(cfg, work_dir, n_chunks, d, store)
    finally:
        store.close()
    centre_at: dict[tuple[int, int], int] = {clus.at[i]: g for g, i in clus.centre.items()}
    strata = [""] * len(d.group_key)
    qi_of_kept: list[tuple[int, int, tuple[str, ...]]] = []  # (chunk, position, quasi-identifier combo)
    unlabelled = (cfg.labels.functions or cfg.labels.zero_shot) and not cfg.labels.keep_unlabelled
    for c in range(n_chunks):
        for pos, (item, _, _) in enumerate(_records(work_dir, c)):
            g = centre_at.get((c, pos))
            if g is not None:
                strata[g] = _stratum(item, cfg, d.weights)
            if d.status[c][pos] != KEPT:
                continue
            if unlabelled and _label_of(item, cfg, d.weights) is None:
                d.status[c][pos] = UNLABELLED
            elif cfg.pii.k_anonymity:
                qi_of_kept.append((c, pos, tuple(str(item.get(col)) for col in cfg.pii.k_anonymity)))
    d.dedup = {
        "groups": len(d.group_key),
        **clus.stats(),
        "near_duplicate_mean_jaccard": round(float(np.mean(near_js)), 4) if near_js else None,
    }
    _k_anonymity(cfg, d, qi_of_kept)
    pairs = leak_pairs(clus.lsh.signatures, cfg.dedup.threshold)
    uf = UnionFind(len(d.group_key))
    joined = 0
    for a, b in pairs:
        ga, gb = clus.group[a], clus.group[b]
        if uf.find(ga) != uf.find(gb):
            uf.union(ga, gb)
            joined += 1
    roots = [uf.find(g) for g in range(len(d.group_key))]
    # A unit is a leak component (its root is its earliest group); units, not groups, are split.
    units = sorted(set(roots))
    unit_split = assign_splits(
        [d.group_key[r] for r in units],
        [strata[r] for r in units],
        cfg.split.validation,
        cfg.split.test,
        cfg.split.seed,
    )
    split_of_root = dict(zip(units, unit_split, strict=True))
    d.group_split = [split_of_root[r] for r in roots]
    cross = sum(d.group_split[clus.group[a]] != d.group_split[clus.group[b]] for a, b in pairs)
    d.leak = {"near_pairs_joined_before_split": joined, "cross_split_pairs": int(cross)}
    return d


def _cluster(
    cfg: CurateConfig, work_dir: Path, n_chunks: int, d: Decisions, store: ShingleStore
) -> tuple[NearDupClusterer, list[float]]:
    """Pass 1a: exact, near and semantic dedup; fills ``d.status``, ``d.group``, ``d.group_key``, ``d.group_size``."""
    exact_group: dict[int, int] = {}  # first 64 bits of the exact key -> group (ints are compact)
    clus = NearDupClusterer(cfg.dedup.num_perm, cfg.dedup.threshold, store)
    ids: dict[int, str] = {}  # indexed near-duplicate member -> record id (for a re-centred cluster's key)
    near_js: list[float] = []
    sem = SemanticIndex(384, cfg.dedup.semantic_threshold) if cfg.dedup.semantic else None
    near_status = NEAR if cfg.dedup.near else KEPT
    for c in range(n_chunks):
        offsets = shingle_offsets(work_dir, c)
        status: list[int] = []
        group: list[int] = []
        d.status.append(np.zeros(0, dtype=np.uint8))  # placeholder: re-centring may touch this chunk
        for pos, (item, sig, emb) in enumerate(_records(work_dir, c)):
            assert sig is not None
            st, g = KEPT, -1
            key = int(item["_exact"][:16], 16)
            if key in exact_group:
                g = exact_group[key]
                # Exact copies are near-duplicates too (Jaccard 1) when only near dedup is on.
                st = EXACT if cfg.dedup.exact else near_status
            else:
                loc = (c, int(offsets[pos]), int(offsets[pos + 1] - offsets[pos]))
                g, j, q = clus.match(sig, loc)
                for rc in clus.recentred:
                    _swap_centre(d, clus, ids, rc, c, status, near_status)
                clus.recentred.clear()
                if g >= 0:
                    st = near_status
                    near_js.append(j)
                    ids[clus.add(q, g, "member", (c, pos))] = str(item["id"])
                else:
                    owner = -1
                    if sem is not None and emb is not None:
                        owner, _ = sem.query(emb)
                    if owner >= 0:
                        g, st = owner, SEMANTIC
                        clus.add(q, g, "other", (c, pos))
                    else:
                        g = len(d.group_key)
                        d.group_key.append(str(item["id"]))
                        d.group_size.append(0)
                        clus.add(q, g, "centre", (c, pos))
                        if sem is not None and emb is not None:
                            sem.add(emb, g)
                exact_group[key] = g
            d.group_size[g] += 1
            status.append(st)
            group.append(g)
        d.status[c] = np.asarray(status, dtype=np.uint8)
        d.group.append(np.asarray(group, dtype=np.int32))
    return clus, near_js


def _swap_centre(
    d: Decisions,
    clus: NearDupClusterer,
    ids: dict[int, str],
    rc: Recentre,
    chunk: int,
    current: list[int],
    near_status: int,
) -> None:
    """Apply a re-centring: the new centre is kept and names the cluster, the old one is removed."""
    ids[rc.old] = d.group_key[rc.group]
    d.group_key[rc.group] = ids.pop(rc.new)
    for idx, st in ((rc.old, near_status), (rc.new, KEPT)):
        c, pos = clus.at[idx]
        if c == chunk:
            current[pos] = st
        else:
            d.status[c][pos] = st


def _stratum(rec: Record, cfg: CurateConfig, weights: dict[str, float]) -> str:
    by = cfg.split.stratify_by
    if not by:
        return ""
    if by == cfg.labels.field:
        lab = _label_of(rec, cfg, weights)
        return "" if lab is None else lab
    value = rec.get(by)
    return "" if value is None else str(value)


def _k_anonymity(cfg: CurateConfig, d: Decisions, qi: list[tuple[int, int, tuple[str, ...]]]) -> None:
    if not cfg.pii.k_anonymity:
        return
    counts = Counter(combo for _, _, combo in qi)
    small = [(c, p) for c, p, combo in qi if counts[combo] < cfg.pii.k]
    if cfg.pii.enforce_k:
        for c, p in small:
            d.status[c][p] = KANON
    d.k_anonymity = {
        "columns": list(cfg.pii.k_anonymity),
        "k": cfg.pii.k,
        "classes": len(counts),
        "min_class_size": min(counts.values()) if counts else None,
        "min_class_size_kept": min(
            (v for v in counts.values() if v >= cfg.pii.k or not cfg.pii.enforce_k), default=None
        ),
        "records_below_k": len(small),
        "satisfied": not small or cfg.pii.enforce_k,
        "enforced": cfg.pii.enforce_k,
    }


def _records(work_dir: Path, chunk: int) -> Any:
    for item, sig, emb in read_shard(work_dir, chunk):
        if not isinstance(item, Quarantined):
            yield item, sig, emb


def _public(rec: Record) -> Record:
    return {k: v for k, v in rec.items() if not k.startswith("_")}


def finish_record(rec: Record, cfg: CurateConfig, d: Decisions, g: int) -> Record:
    """The record as written: contract fields (id, text, messages, label), cluster id, no bookkeeping."""
    out = _public(rec)
    if isinstance(rec.get("instruction"), str) and isinstance(rec.get("response"), str):
        user = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": rec["response"]}]
        if isinstance(rec.get("system"), str) and rec["system"]:
            messages.insert(0, {"role": "system", "content": rec["system"]})
        out["messages"] = messages
    out["text"] = full_text(rec)
    if cfg.labels.functions or cfg.labels.zero_shot:
        out[cfg.labels.field] = _label_of(rec, cfg, d.weights)
    out["cluster_id"] = d.group_key[g]
    out["cluster_size"] = d.group_size[g]
    return out


def write_dataset(cfg: CurateConfig, work_dir: Path, out_dir: Path, n_chunks: int, d: Decisions) -> dict[str, Any]:
    """Pass 2: write splits and quarantine; return counts and examples for the data card."""
    files: dict[str, IO[str]] = {s: open(out_dir / f"{s}.jsonl", "w", encoding="utf-8") for s in SPLITS}  # noqa: SIM115
    quarantine = open(out_dir / "quarantine.jsonl", "w", encoding="utf-8")  # noqa: SIM115
    # Every removed duplicate with the cluster (= kept representative's id) it belongs to.
    duplicates = open(out_dir / "duplicates.jsonl", "w", encoding="utf-8")  # noqa: SIM115
    top = sorted(range(len(d.group_size)), key=lambda g: (-d.group_size[g], g))[:10]
    top_groups = {g: [] for g in top if d.group_size[g] > 1}  # type: dict[int, list[dict[str, Any]]]
    split_sizes: Counter[str] = Counter()
    kept_by_source: Counter[str] = Counter()
    quarantine_reasons: Counter[str] = Counter()
    label_by_split: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    lengths: list[int] = []
    global_drops: Counter[tuple[str, str]] = Counter()
    augmented = 0
    rng = random.Random(cfg.augment.seed)
    try:
        for c in range(n_chunks):
            pos = 0
            for item, _, _ in read_shard(work_dir, c):
                if isinstance(item, Quarantined):
                    quarantine_reasons[item.reason] += 1
                    quarantine.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
                    continue
                st, g = int(d.status[c][pos]), int(d.group[c][pos])
                pos += 1
                if g in top_groups and len(top_groups[g]) < 3:
                    top_groups[g].append(
                        {"id": item["id"], "kept": st == KEPT, "text": full_text(item)[:EXAMPLE_CHARS]}
                    )
                if st != KEPT:
                    op, reason = STATUS_REASON[st]
                    global_drops[(op, reason)] += 1
                    if op == "dedup":
                        dup = {"id": item["id"], "cluster_id": d.group_key[g], "reason": reason}
                        duplicates.write(json.dumps(dup, ensure_ascii=False) + "\n")
                    continue
                split = SPLITS[d.group_split[g]]
                rec = finish_record(item, cfg, d, g)
                files[split].write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
                split_sizes[split] += 1
                kept_by_source[str(item["_source"])] += 1
                lengths.append(len(rec["text"].split()))
                if cfg.labels.functions or cfg.labels.zero_shot or cfg.labels.field in rec:
                    label_by_split[split][str(rec.get(cfg.labels.field))] += 1
                if split == "train" and cfg.augment.enabled:
                    for k in range(cfg.augment.copies):
                        aug = augment_record(rec, cfg.augment, rng, k + 1)
                        files[split].write(json.dumps(aug, ensure_ascii=False, default=str) + "\n")
                        augmented += 1
    finally:
        for fh in (*files.values(), quarantine, duplicates):
            fh.close()
    return {
        "split_sizes": {s: split_sizes.get(s, 0) for s in SPLITS},
        "kept_by_source": dict(kept_by_source),
        "quarantine_reasons": dict(sorted(quarantine_reasons.items())),
        "label_by_split": {s: dict(sorted(v.items())) for s, v in label_by_split.items() if v},
        "lengths": lengths,
        "global_drops": global_drops,
        "augmented": augmented,
        "top_clusters": [
            {"cluster_id": d.group_key[g], "size": d.group_size[g], "examples": ex} for g, ex in top_groups.items()
        ],
    }
