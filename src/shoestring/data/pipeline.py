"""The per-record (parallel) phase: chunks of records go through the op chain into shard files.

Every op is generator-in / generator-out (:func:`~shoestring.data.records.apply_op`) with
its own stats. A chunk's results are written to ``work_dir`` as three files; the stats file
is written last (atomically) and is the chunk's completion marker, so a rerun after a kill
skips finished chunks and gets the same bytes.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shoestring.core.artifact import atomic_write_bytes, atomic_write_json
from shoestring.data.cluster import shingle_path
from shoestring.data.config import CurateConfig
from shoestring.data.dedup import MinHasher, band_keys, exact_key64, lsh_params, shingle_batch, verification_band
from shoestring.data.label import LabelVoter
from shoestring.data.normalize import normalize_record
from shoestring.data.pii import PIIScrubber
from shoestring.data.quality import quality_record
from shoestring.data.records import OpStats, Quarantined, Record, apply_op, full_text
from shoestring.data.semantic import Embedder

__all__ = [
    "MAP_OPS",
    "ChunkPaths",
    "chunk_paths",
    "load_chunk_stats",
    "process_chunk",
    "read_shard",
    "shingle_offsets",
]

MAP_OPS = ("normalize", "quality", "pii", "label")


class ChunkPaths:
    def __init__(self, work_dir: Path, index: int) -> None:
        stem = work_dir / "chunks" / f"chunk-{index:06d}"
        self.records = stem.with_suffix(".jsonl")
        self.signatures = stem.with_suffix(".sig.npy")
        # Compact per-record arrays the global phase reads instead of the records' JSON.
        self.band_keys = stem.with_suffix(".bands.npy")  # (bands, records) uint64 LSH band keys
        self.exact = stem.with_suffix(".exact.npy")  # (records,) uint64: first 64 bits of the exact key
        self.ids = stem.with_suffix(".ids.json")  # record ids, in record order
        self.embeddings = stem.with_suffix(".emb.npy")
        # Shingle hashes for exact verification, read back by offset (cluster.ShingleStore).
        self.shingles = shingle_path(work_dir, index)
        self.shingle_offsets = stem.with_suffix(".shoff.npy")
        self.stats = stem.with_suffix(".stats.json")


def chunk_paths(work_dir: Path, index: int) -> ChunkPaths:
    return ChunkPaths(work_dir, index)


def _chain(cfg: CurateConfig, records: Iterator[Record], stats: dict[str, OpStats]) -> Iterator[Record]:
    """Wire the enabled ops into one generator pipeline."""
    out = records
    if cfg.normalize.enabled:
        out = apply_op(out, "normalize", lambda r, s: normalize_record(r, s, cfg.normalize), stats["normalize"])
    if cfg.quality.enabled:
        out = apply_op(out, "quality", lambda r, s: quality_record(r, s, cfg.quality), stats["quality"])
    if cfg.pii.enabled:
        out = apply_op(out, "pii", PIIScrubber(cfg.pii, shareable=cfg.share.enabled), stats["pii"])
    if cfg.labels.functions:
        out = apply_op(out, "label", LabelVoter(cfg.labels), stats["label"])
    return out


def process_chunk(
    cfg_json: dict[str, Any], index: int, items: list[Record | Quarantined], work_dir: str
) -> dict[str, Any]:
    """Run the op chain over one chunk and write its shard; returns the chunk's stats.

    Pure function of its arguments, so local processes and Ray tasks give identical shards.
    """
    cfg = CurateConfig.model_validate(cfg_json)
    paths = chunk_paths(Path(work_dir), index)
    stats = {name: OpStats(name) for name in MAP_OPS}
    quarantined = [q for q in items if isinstance(q, Quarantined)]
    records = (r for r in items if not isinstance(r, Quarantined))
    hasher = MinHasher(cfg.dedup.num_perm, cfg.dedup.ngram, cfg.dedup.seed)
    lines: list[str] = [json.dumps({"_quarantine": q.to_json()}, ensure_ascii=False) for q in quarantined]
    read_by_source: dict[str, int] = {}
    for item in items:
        src = item.source if isinstance(item, Quarantined) else str(item["_source"])
        read_by_source[src] = read_by_source.get(src, 0) + 1
    clock = time.process_time()
    kept = list(_chain(cfg, records, stats))
    texts = [full_text(rec) for rec in kept]
    seconds: dict[str, float] = {}
    clock = _lap(seconds, "ops", clock)
    flat, offsets = shingle_batch(texts, cfg.dedup.ngram)
    clock = _lap(seconds, "shingle", clock)
    sigs = hasher.signatures(flat, offsets)  # (N, num_perm)
    clock = _lap(seconds, "minhash", clock)
    bands, rows = lsh_params(verification_band(cfg.dedup.threshold, cfg.dedup.num_perm)[0], cfg.dedup.num_perm)
    keys = np.ascontiguousarray(band_keys(sigs, bands, rows).T)  # (bands, N): one band's keys are contiguous
    exact = np.fromiter((exact_key64(t) for t in texts), dtype=np.uint64, count=len(texts))
    clock = _lap(seconds, "bands", clock)
    embeddings = None
    if cfg.dedup.semantic or cfg.labels.zero_shot:
        embeddings = _embedder().encode(texts)  # (N, 384)
        if cfg.labels.zero_shot:
            _zero_shot(cfg, kept, embeddings, stats["label"])
        clock = _lap(seconds, "embed", clock)
    lines += [json.dumps(rec, ensure_ascii=False, default=str) for rec in kept]
    paths.records.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(paths.records, ("\n".join(lines) + "\n").encode("utf-8") if lines else b"")
    _save_npy(paths.signatures, sigs)
    _save_npy(paths.band_keys, keys)
    _save_npy(paths.exact, exact)
    atomic_write_bytes(paths.ids, json.dumps([rec["id"] for rec in kept], ensure_ascii=False).encode("utf-8"))
    atomic_write_bytes(paths.shingles, flat.astype("<u8").tobytes())
    _save_npy(paths.shingle_offsets, offsets)
    if embeddings is not None and cfg.dedup.semantic:
        _save_npy(paths.embeddings, embeddings)
    _lap(seconds, "write", clock)
    result = {
        "index": index,
        "read": len(items),
        "read_by_source": read_by_source,
        "quarantined": len(quarantined),
        "ops": {name: s.to_json() for name, s in stats.items()},
        "cpu_seconds": {k: round(v, 4) for k, v in seconds.items()},
    }
    atomic_write_json(paths.stats, result)  # completion marker: written last
    return result


def _lap(seconds: dict[str, float], phase: str, since: float) -> float:
    """Add the CPU seconds since ``since`` to ``phase``; returns the new mark."""
    now = time.process_time()
    seconds[phase] = seconds.get(phase, 0.0) + now - since
    return now


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


_EMBEDDER: Embedder | None = None


def _embedder() -> Embedder:
    """One encoder per worker process, loaded on first use and reused across chunks."""
    global _EMBEDDER
    if _EMBEDDER is None:
        _EMBEDDER = Embedder()
    return _EMBEDDER


def _zero_shot(cfg: CurateConfig, records: list[Record], embeddings: np.ndarray, stats: OpStats) -> None:
    """Label records no labelling function covered with the most similar candidate label."""
    labels = list(cfg.labels.zero_shot)
    label_vecs = _embedder().encode(labels)  # (L, 384)
    sims = embeddings @ label_vecs.T  # (N, L) cosine similarities
    for rec, row in zip(records, sims, strict=True):
        if rec.get("_votes"):
            continue
        best = int(np.argmax(row))
        if float(row[best]) >= cfg.labels.zero_shot_min_score:
            rec["_zero_shot"] = labels[best]
            stats.counters[f"zero_shot:{labels[best]}"] += 1


def load_chunk_stats(work_dir: Path, index: int) -> dict[str, Any] | None:
    """A finished chunk's stats, or None if the chunk has not completed."""
    p = chunk_paths(work_dir, index).stats
    if not p.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data


def shingle_offsets(work_dir: Path, index: int) -> np.ndarray:
    """(records + 1,) int64: record k's shingles are ``[off[k], off[k+1])`` of the chunk's shingle file."""
    return np.load(chunk_paths(work_dir, index).shingle_offsets, allow_pickle=False)


def read_shard(
    work_dir: Path, index: int
) -> Iterator[tuple[Record | Quarantined, np.ndarray | None, np.ndarray | None]]:
    """Stream a finished chunk: quarantine entries, then records with signature and embedding (or None)."""
    paths = chunk_paths(work_dir, index)
    sigs = np.load(paths.signatures, allow_pickle=False)
    embs = np.load(paths.embeddings, allow_pickle=False) if paths.embeddings.is_file() else None
    k = 0
    with open(paths.records, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            obj = json.loads(line)
            if "_quarantine" in obj:
                q = obj["_quarantine"]
                yield Quarantined(q["source"], q["location"], q["reason"], q["raw"]), None, None
                continue
            yield obj, sigs[k], None if embs is None else embs[k]
            k += 1
