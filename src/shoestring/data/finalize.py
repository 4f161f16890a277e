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
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from shoestring.data.augment import augment_record
from shoestring.data.candidates import (
    CENTRE,
    MEMBER,
    Index,
    build_index,
    cluster_batch,
    load_result,
    read_ids,
    save_chunk_start,
)
from shoestring.data.config import CurateConfig
from shoestring.data.dedup import lsh_params, verification_band
from shoestring.data.executors import Executor
from shoestring.data.label import combine_votes, label_weights
from shoestring.data.pipeline import read_shard
from shoestring.data.records import Quarantined, Record, full_text
from shoestring.data.split import SPLITS, assign_splits_ordered, leak_units, split_order

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


class GroupNames:
    """Group number -> its kept record's id, for groups of 2+ records, in three flat arrays.

    A dict of Python strings costs ~150 bytes an entry (1M documents: ~150k groups, ~20 MiB);
    here an entry is its group number, its place and its offset (24 bytes) plus its characters.
    """

    def __init__(self, groups: np.ndarray, blob: str, offsets: np.ndarray) -> None:
        order = np.argsort(groups, kind="stable")
        self._groups = groups[order]  # sorted
        self._place = order  # where each sorted group's name sits in the blob
        self._blob = blob
        self._offsets = offsets  # (len + 1,) character offsets into the blob

    @classmethod
    def empty(cls) -> GroupNames:
        return cls(np.zeros(0, dtype=np.int64), "", np.zeros(1, dtype=np.int64))

    def __len__(self) -> int:
        return int(self._groups.size)

    def _find(self, g: int) -> str | None:
        i = int(np.searchsorted(self._groups, g))
        if i == self._groups.size or self._groups[i] != g:
            return None
        j = int(self._place[i])
        return self._blob[self._offsets[j] : self._offsets[j + 1]]

    def get(self, g: int, default: str) -> str:
        name = self._find(g)
        return default if name is None else name

    def __getitem__(self, g: int) -> str:
        name = self._find(g)
        if name is None:
            raise KeyError(g)
        return name


@dataclass
class Decisions:
    """Pass-1 results: per-record status and group, per-group facts, and summary counters.

    Everything per record or per group is a numpy array (1-8 bytes each); only the names of
    groups that hold more than one record are kept as strings.
    """

    status: list[np.ndarray] = field(default_factory=list)  # per chunk: uint8 per record
    group: list[np.ndarray] = field(default_factory=list)  # per chunk: int32 group per record
    group_size: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    group_split: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    names: GroupNames = field(default_factory=lambda: GroupNames.empty())  # groups of 2+: the kept record's id
    labels: Counter[str] = field(default_factory=Counter)
    weights: dict[str, float] = field(default_factory=dict)
    dedup: dict[str, Any] = field(default_factory=dict)
    k_anonymity: dict[str, Any] = field(default_factory=dict)
    leak: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, float] = field(default_factory=dict)  # CPU seconds per global phase (not in the card)
    index_run: dict[str, Any] = field(default_factory=dict)  # batches and memory budget (not in the card)

    def cluster_id(self, g: int, own_id: str) -> str:
        """The id of group ``g``'s kept record (``own_id`` for a record that is alone in its group)."""
        return self.names.get(g, own_id)


def _label_of(rec: Record, cfg: CurateConfig, weights: dict[str, float]) -> str | None:
    if not cfg.labels.functions and not cfg.labels.zero_shot:
        value = rec.get(cfg.labels.field)
        return None if value is None else str(value)
    label = combine_votes(rec.get("_votes") or {}, cfg.labels, weights)
    return label if label is not None else rec.get("_zero_shot")


@dataclass
class _Clusters:
    """Dedup result over all N records (global numbers) before splits."""

    status: np.ndarray  # (N,) uint8
    group: np.ndarray  # (N,) int32
    centre: np.ndarray  # (G,) int64: global number of each group's kept record
    cross: np.ndarray  # (P, 2) int64: verified near-duplicate record pairs in different groups


def decide(
    cfg: CurateConfig, work_dir: Path, n_chunks: int, label_counters: Counter[str], executor: Executor | None = None
) -> Decisions:
    """Pass 1: dedup clustering (1a), then labels, k-anonymity and strata of the kept records (1b), then splits."""
    d = Decisions(weights=label_weights(cfg.labels, label_counters))
    clock = time.process_time()
    index = build_index(cfg, work_dir, n_chunks, cfg.workers)
    save_chunk_start(work_dir, index.chunk_start)
    tasks = [(cfg.model_dump(mode="json"), str(work_dir), b) for b in range(index.batches)]
    batch_stats = (
        list(executor.map(cluster_batch, tasks)) if executor is not None else [cluster_batch(*t) for t in tasks]
    )
    d.profile["index"] = time.process_time() - clock
    for b in batch_stats:
        for k, v in b["cpu_seconds"].items():
            d.profile[f"batches_{k}"] = d.profile.get(f"batches_{k}", 0.0) + v
    for k, v in index.run.pop("cpu_seconds").items():
        d.profile[f"index_{k}"] = v
    d.index_run = index.run
    clock = time.process_time()
    cl, near_sum, near_n = _merge(cfg, work_dir, index)
    start = index.chunk_start
    d.status = [cl.status[start[c] : start[c + 1]] for c in range(n_chunks)]
    d.group = [cl.group[start[c] : start[c + 1]] for c in range(n_chunks)]
    n_groups = cl.centre.size
    d.group_size = np.bincount(cl.group, minlength=n_groups).astype(np.int64)
    counters: Counter[str] = Counter()
    for b in batch_stats:
        counters.update(b["counters"])
    bands, rows = lsh_params(verification_band(cfg.dedup.threshold, cfg.dedup.num_perm)[0], cfg.dedup.num_perm)
    low, high = verification_band(cfg.dedup.threshold, cfg.dedup.num_perm)
    d.dedup = {
        "groups": int(n_groups),
        "lsh_bands": bands,
        "lsh_rows": rows,
        "verification_band": [round(low, 4), round(high, 4)],
        **{k: int(counters.get(k, 0)) for k in _COUNTERS},
        "near_duplicate_mean_jaccard": round(near_sum / near_n, 4) if near_n else None,
        "index": index.stats,
    }
    strata = _pass_1b(cfg, work_dir, d, cl, n_chunks)
    pair_groups = cl.group[cl.cross] if len(cl.cross) else np.zeros((0, 2), dtype=np.int64)
    roots, joined = leak_units(n_groups, pair_groups)
    units = np.unique(roots)
    order, d.names = _unit_order_and_names(cfg, work_dir, n_chunks, cl, d.group_size, roots)
    unit_split = assign_splits_ordered(
        order[units], None if strata is None else [strata[int(u)] for u in units], cfg.split.validation, cfg.split.test
    )
    split_of = np.zeros(n_groups, dtype=np.uint8)
    split_of[units] = unit_split
    d.group_split = split_of[roots]
    cross = int(np.count_nonzero(d.group_split[pair_groups[:, 0]] != d.group_split[pair_groups[:, 1]]))
    d.leak = {"near_pairs_joined_before_split": int(joined), "cross_split_pairs": cross}
    d.profile["decide"] = time.process_time() - clock
    return d


_COUNTERS = (
    "candidates_checked",
    "candidates_rejected_by_verification",
    "exact_jaccard_checks",
    "exact_checks_that_flipped_the_estimate",
    "recentred_clusters",
)


def _merge(cfg: CurateConfig, work_dir: Path, index: Index) -> tuple[_Clusters, float, int]:
    """Pass 1a: combine exact groups, singleton documents and the batches' clusters."""
    n = index.n_docs
    founder = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)  # no candidates: founds its own group
    role = np.zeros(n, dtype=np.uint8)
    cross: list[np.ndarray] = []
    near_sum, near_n = 0.0, 0
    for b in range(index.batches):
        r = load_result(work_dir, b)
        founder[r["docs"]] = r["founder"]
        role[r["docs"]] = r["role"]
        assigned = r["sim"] > 0  # joined a centre when it was matched (a re-centred old centre did not)
        near_sum += float(r["sim"][assigned].sum())
        near_n += int(np.count_nonzero(assigned))
        cross.append(r["cross"])
    is_copy = index.first != np.arange(n, dtype=index.first.dtype)
    founder[is_copy] = founder[index.first[is_copy]]  # an exact copy joins its first occurrence's group
    founders = np.unique(founder)
    group = np.searchsorted(founders, founder).astype(np.int32)
    near_status = NEAR if cfg.dedup.near else KEPT
    status = np.where(role == CENTRE, KEPT, np.where(role == MEMBER, near_status, SEMANTIC)).astype(np.uint8)
    status[is_copy] = EXACT if cfg.dedup.exact else near_status
    centre = np.zeros(founders.size, dtype=founder.dtype)
    kept = np.flatnonzero((role == CENTRE) & ~is_copy)
    centre[group[kept]] = kept
    pairs = np.concatenate(cross) if cross else np.zeros((0, 2), dtype=np.int64)
    return _Clusters(status, group, centre, pairs), near_sum, near_n


def _pass_1b(cfg: CurateConfig, work_dir: Path, d: Decisions, cl: _Clusters, n_chunks: int) -> list[str] | None:
    """Labels, k-anonymity and strata need the records' content; skipped when none is asked for."""
    unlabelled = bool((cfg.labels.functions or cfg.labels.zero_shot) and not cfg.labels.keep_unlabelled)
    if not (cfg.split.stratify_by or unlabelled or cfg.pii.k_anonymity):
        return None
    strata = [""] * cl.centre.size
    is_centre = np.zeros(cl.status.size, dtype=bool)
    is_centre[cl.centre] = True
    qi_of_kept: list[tuple[int, int, tuple[str, ...]]] = []  # (chunk, position, quasi-identifier combo)
    base = 0
    for c in range(n_chunks):
        for pos, (item, _, _) in enumerate(_records(work_dir, c)):
            if is_centre[base + pos]:
                strata[int(d.group[c][pos])] = _stratum(item, cfg, d.weights)
            if d.status[c][pos] != KEPT:
                continue
            if unlabelled and _label_of(item, cfg, d.weights) is None:
                d.status[c][pos] = UNLABELLED
            elif cfg.pii.k_anonymity:
                qi_of_kept.append((c, pos, tuple(str(item.get(col)) for col in cfg.pii.k_anonymity)))
        base += d.status[c].size
    _k_anonymity(cfg, d, qi_of_kept)
    return strata if cfg.split.stratify_by else None


def _unit_order_and_names(
    cfg: CurateConfig, work_dir: Path, n_chunks: int, cl: _Clusters, sizes: np.ndarray, roots: np.ndarray
) -> tuple[np.ndarray, GroupNames]:
    """Split order of every unit root (from its kept record's id) and the names of groups of 2+ records.

    Streams the chunks' id lists; only the groups that need a name keep their id, in one string.
    """
    order = np.zeros(cl.centre.size, dtype=np.uint64)
    is_root = np.zeros(cl.centre.size, dtype=bool)
    is_root[roots] = True
    groups: list[np.ndarray] = []
    pieces: list[str] = []
    lengths: list[np.ndarray] = []
    centre_sorted = np.sort(cl.centre)
    group_of_centre = cl.group[centre_sorted]
    start = 0
    for c in range(n_chunks):
        ids = read_ids(work_dir, c)
        lo, hi = np.searchsorted(centre_sorted, [start, start + len(ids)])
        named: list[int] = []
        chunk_names: list[str] = []
        for doc, g in zip(centre_sorted[lo:hi].tolist(), group_of_centre[lo:hi].tolist(), strict=True):
            rid = ids[doc - start]
            if is_root[g]:
                order[g] = split_order(cfg.split.seed, rid)
            if sizes[g] > 1:
                named.append(g)
                chunk_names.append(rid)
        if named:
            groups.append(np.asarray(named, dtype=np.int64))
            pieces.append("".join(chunk_names))
            lengths.append(np.fromiter(map(len, chunk_names), dtype=np.int64, count=len(chunk_names)))
        start += len(ids)
    if not groups:
        return order, GroupNames.empty()
    offsets = np.zeros(sum(x.size for x in lengths) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths), out=offsets[1:])
    return order, GroupNames(np.concatenate(groups), "".join(pieces), offsets)


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
    out["cluster_id"] = d.cluster_id(g, str(rec["id"]))
    out["cluster_size"] = int(d.group_size[g])
    return out


def write_dataset(cfg: CurateConfig, work_dir: Path, out_dir: Path, n_chunks: int, d: Decisions) -> dict[str, Any]:
    """Pass 2: write splits and quarantine; return counts and examples for the data card."""
    files: dict[str, IO[str]] = {s: open(out_dir / f"{s}.jsonl", "w", encoding="utf-8") for s in SPLITS}  # noqa: SIM115
    quarantine = open(out_dir / "quarantine.jsonl", "w", encoding="utf-8")  # noqa: SIM115
    # Every removed duplicate with the cluster (= kept representative's id) it belongs to.
    duplicates = open(out_dir / "duplicates.jsonl", "w", encoding="utf-8")  # noqa: SIM115
    top = np.lexsort((np.arange(d.group_size.size), -d.group_size))[:10].tolist()  # largest first, ties: earliest
    top_groups = {g: [] for g in top if d.group_size[g] > 1}  # type: dict[int, list[dict[str, Any]]]
    split_sizes: Counter[str] = Counter()
    kept_by_source: Counter[str] = Counter()
    quarantine_reasons: Counter[str] = Counter()
    label_by_split: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    lengths = array("l")  # words per kept record (4-8 bytes each, not a Python int)
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
                        dup = {"id": item["id"], "cluster_id": d.names[g], "reason": reason}
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
            {"cluster_id": d.names[g], "size": int(d.group_size[g]), "examples": ex} for g, ex in top_groups.items()
        ],
    }
