"""The near-duplicate index on disk: exact groups, the LSH candidate graph, and its components.

The map phase leaves compact arrays per chunk (exact keys, band keys, signatures, shingle
offsets); this module never parses a record. For N documents (exact copies removed first):

1. **exact groups** - the 64-bit exact keys of all documents, one stable argsort: each copy points
   at its first occurrence, and only first occurrences are indexed;
2. **candidate graph** - for each LSH band, the band keys of all indexed documents are sorted
   (one band in memory at a time: 8 bytes per document); documents with equal keys are
   candidates, and each run of equal keys links consecutive documents, so the graph has at
   most N edges per band. Its connected components (scipy's ``connected_components``,
   merged band by band into one label array) are what the clustering needs: a document's
   candidates all lie in its component, so the greedy assignment of
   :class:`~shoestring.data.cluster.NearDupClusterer`, run per component in document order,
   decides exactly what one pass over the whole corpus would;
3. **batches** - singletons (most documents) need no work: each keeps itself. The documents
   of the other components are cut into batches of whole components that fit ``max_memory``
   (signatures, band keys and the per-component LSH index: about 2 KB a document), loaded
   from the chunk files by memory-mapped reads that are dropped after each chunk, and
   clustered independently - in parallel worker processes, each given only a batch number and
   paths (nothing large is pickled), each writing its result to a file.

Resident state that grows with the corpus is a few arrays of 1-8 bytes per document (the
exact keys and component labels, about 30 bytes a document at the peak, 30 MB at 1M).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoestring.data.cluster import NearDupClusterer, ShingleStore
from shoestring.data.config import CurateConfig
from shoestring.data.dedup import lsh_params, verification_band

__all__ = ["BYTES_PER_BATCHED_DOC", "Index", "build_index", "cluster_batch"]

BYTES_PER_BATCHED_DOC = 2048
"""Working set per document of a batch, measured (``tests/data/test_curate_dedup.py``): signature
512 B, band keys 200 B, the component index ~0.9 KB, the clusterer's per-document lists."""

CENTRE, MEMBER, OTHER = 0, 1, 2


def _paths(work_dir: Path, chunk: int, suffix: str) -> Path:
    return work_dir / "chunks" / f"chunk-{chunk:06d}{suffix}"


def index_dir(work_dir: Path) -> Path:
    return work_dir / "index"


@dataclass
class Index:
    """What the global phase knows about the indexed documents after :func:`build_index`."""

    chunk_start: np.ndarray  # (chunks + 1,) int64: global number of each chunk's first record
    first: np.ndarray  # (N,) int64: the first occurrence of each document's exact key
    indexed: np.ndarray  # (M,) int64: global numbers of first occurrences, ascending
    batches: int
    stats: dict[str, Any]
    run: dict[str, Any]

    @property
    def n_docs(self) -> int:
        return int(self.chunk_start[-1])


def _exact_keys(work_dir: Path, n_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [np.load(_paths(work_dir, c, ".exact.npy"), allow_pickle=False) for c in range(n_chunks)]
    start = np.zeros(n_chunks + 1, dtype=np.int64)
    np.cumsum([p.size for p in parts], out=start[1:])
    keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    return keys, start


def _band_column(work_dir: Path, chunk_start: np.ndarray, indexed: np.ndarray, band: int) -> np.ndarray:
    """(M,) uint64: one band's keys of the indexed documents, read chunk by chunk."""
    out = np.empty(indexed.size, dtype=np.uint64)
    bounds = np.searchsorted(indexed, chunk_start)
    for c in range(len(chunk_start) - 1):
        lo, hi = bounds[c], bounds[c + 1]
        if lo == hi:
            continue
        keys = np.load(_paths(work_dir, c, ".bands.npy"), mmap_mode="r", allow_pickle=False)
        out[lo:hi] = keys[band, indexed[lo:hi] - chunk_start[c]]
        del keys  # unmaps: the pages read stop counting as resident
    return out


def _components(work_dir: Path, chunk_start: np.ndarray, indexed: np.ndarray, bands: int) -> np.ndarray:
    """(M,) int64: for each indexed document, the position of the first document of its component."""
    from scipy.sparse import coo_matrix  # here, not at module level: batch workers never need scipy
    from scipy.sparse.csgraph import connected_components

    m = indexed.size
    labels = np.arange(m, dtype=np.int64)
    for band in range(bands):
        keys = _band_column(work_dir, chunk_start, indexed, band)
        order = np.argsort(keys, kind="stable")
        ks = keys[order]
        same = np.flatnonzero(ks[1:] == ks[:-1])
        del keys, ks
        if same.size == 0:
            continue
        u, v = labels[order[same]], labels[order[same + 1]]
        cross = u != v
        if not cross.any():
            continue
        graph = coo_matrix((np.ones(int(cross.sum()), dtype=np.int8), (u[cross], v[cross])), shape=(m, m))
        _, comp = connected_components(graph, directed=False)
        labels = comp[labels]
    first = np.full(labels.max() + 1 if m else 0, m, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(m))
    return first[labels]


def _first_occurrence(keys: np.ndarray) -> np.ndarray:
    """(N,) int32: position of the first document with the same key (by one stable argsort)."""
    if keys.size == 0:  # every record was quarantined or dropped
        return np.empty(0, dtype=np.int32)
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    new_run = np.concatenate(([True], ks[1:] != ks[:-1]))
    del ks
    dtype = np.int32 if keys.size < 2**31 else np.int64
    first = np.empty(keys.size, dtype=dtype)
    first[order] = order[np.flatnonzero(new_run)][np.cumsum(new_run) - 1]  # stable: a run starts with its earliest
    return first


def build_index(cfg: CurateConfig, work_dir: Path, n_chunks: int, workers: int) -> Index:
    """Exact groups, candidate components and the batch files of non-singleton components."""
    t0 = time.process_time()
    keys, chunk_start = _exact_keys(work_dir, n_chunks)
    first = _first_occurrence(keys)
    del keys
    indexed = np.flatnonzero(first == np.arange(first.size, dtype=first.dtype))
    t_exact = time.process_time()
    bands, _ = lsh_params(verification_band(cfg.dedup.threshold, cfg.dedup.num_perm)[0], cfg.dedup.num_perm)
    if cfg.dedup.semantic:
        # Semantic matches are not limited to LSH candidates: one component, one pass in order.
        comp = np.zeros(indexed.size, dtype=np.int64)
    else:
        comp = _components(work_dir, chunk_start, indexed, bands)
    t_bands = time.process_time()
    sizes = np.bincount(comp, minlength=indexed.size) if indexed.size else np.zeros(0, dtype=np.int64)
    multi = np.flatnonzero(sizes[comp] > 1)  # positions (into indexed) of documents with candidates
    order = multi[np.lexsort((multi, comp[multi]))]  # by component, then document
    comp_sorted = comp[order]
    starts = np.flatnonzero(np.concatenate(([True], comp_sorted[1:] != comp_sorted[:-1]))) if order.size else order
    # max_memory is shared by the workers that cluster batches at the same time.
    budget_docs = max(1, cfg.dedup.max_memory * 2**20 // (BYTES_PER_BATCHED_DOC * max(1, workers)))
    # At least one batch per worker (when there is work), whole components only.
    per_batch = max(1, min(budget_docs, -(-order.size // max(1, workers))))
    cuts = [0]
    ends = np.append(starts[1:], order.size)
    for s, e in zip(starts[1:], ends[1:], strict=True):
        if e - cuts[-1] > per_batch:  # this component would overflow the batch: it starts the next
            cuts.append(int(s))
    cuts.append(int(order.size))
    out = index_dir(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_batches = 0
    largest_batch = 0
    for lo, hi in itertools.pairwise(cuts):
        if hi <= lo:
            continue
        np.save(out / f"batch-{n_batches:05d}.npy", np.stack([indexed[order[lo:hi]], comp_sorted[lo:hi]]))
        largest_batch = max(largest_batch, hi - lo)
        n_batches += 1
    comp_sizes = sizes[sizes > 1]
    stats = {  # a function of the data and the dedup settings only (it goes into the data card)
        "documents": int(first.size),
        "indexed": int(indexed.size),
        "documents_with_candidates": int(order.size),
        "candidate_components": int(comp_sizes.size),
        "largest_component": int(comp_sizes.max()) if comp_sizes.size else 0,
    }
    run = {  # depends on max_memory and workers too (it goes into the manifest)
        "batches": n_batches,
        "largest_batch_documents": largest_batch,
        "max_memory_mib": cfg.dedup.max_memory,
        "largest_batch_working_set_mib": round(largest_batch * BYTES_PER_BATCHED_DOC / 2**20, 1),
        "cpu_seconds": {"exact": round(t_exact - t0, 4), "bands": round(t_bands - t_exact, 4)},
    }
    return Index(chunk_start, first, indexed, n_batches, stats, run)


def _load_batch(work_dir: Path, chunk_start: np.ndarray, docs: np.ndarray) -> dict[str, np.ndarray]:
    """Signatures, band keys and shingle locations of ``docs`` (global numbers, any order).

    Each chunk's rows are copied straight into their places in preallocated outputs, so the
    batch is held once (not as per-chunk parts, their concatenation and a reordered copy).
    """
    chunk_of = np.searchsorted(chunk_start, docs, side="right") - 1
    sigs = keys = None
    locs = np.empty((docs.size, 3), dtype=np.int64)
    for c in np.unique(chunk_of):
        where = np.flatnonzero(chunk_of == c)  # positions in the batch, ascending
        rows = docs[where] - chunk_start[c]
        s = np.load(_paths(work_dir, int(c), ".sig.npy"), mmap_mode="r", allow_pickle=False)
        k = np.load(_paths(work_dir, int(c), ".bands.npy"), mmap_mode="r", allow_pickle=False)
        off = np.load(_paths(work_dir, int(c), ".shoff.npy"), allow_pickle=False)
        if sigs is None:
            sigs = np.empty((docs.size, s.shape[1]), dtype=s.dtype)
            keys = np.empty((docs.size, k.shape[0]), dtype=k.dtype)
        sigs[where] = s[rows]
        keys[where] = k[:, rows].T
        locs[where, 0] = c
        locs[where, 1] = off[rows]
        locs[where, 2] = off[rows + 1] - off[rows]
        del s, k  # unmaps: the pages read stop counting as resident
    if sigs is None or keys is None:
        raise ValueError("an empty batch")
    return {"sigs": sigs, "keys": keys, "locs": locs}


def _embeddings(work_dir: Path, chunk_start: np.ndarray, docs: np.ndarray) -> np.ndarray:
    chunk_of = np.searchsorted(chunk_start, docs, side="right") - 1
    parts = []
    for c in np.unique(chunk_of):
        e = np.load(_paths(work_dir, int(c), ".emb.npy"), mmap_mode="r", allow_pickle=False)
        parts.append(np.asarray(e[docs[chunk_of == c] - chunk_start[c]]))
    return np.concatenate(parts)


class ComponentIndex:
    """The LSH buckets of one candidate component as sorted arrays: no Python object per key.

    Built at once from the component's signatures (m, P) and band keys (m, B): per band, the
    documents sorted by (key, position), so a bucket is a run and the documents of a run that
    come before document j are the run's slice up to j. ``candidates(j)`` gathers those slices
    of all bands with one segmented arange. Per document: its signature and three int32 per
    band (about 0.8 KB at 128 x 25).
    """

    def __init__(self, sigs: np.ndarray, keys: np.ndarray, rows: int) -> None:
        m, self.bands = keys.shape
        self.rows = rows
        self._sigs = sigs
        self.n = 0
        self.members = np.empty(m * self.bands, dtype=np.int32)  # per band: documents sorted by (key, position)
        self.lo = np.empty((m, self.bands), dtype=np.int32)  # where the document's run starts
        self.mid = np.empty((m, self.bands), dtype=np.int32)  # where the document itself is in it
        for band in range(self.bands):
            order = np.argsort(keys[:, band], kind="stable")  # stable: a run lists its documents in order
            ks = keys[order, band]
            new_run = np.concatenate(([True], ks[1:] != ks[:-1]))
            run_start = np.flatnonzero(new_run)[np.cumsum(new_run) - 1]  # (m,) start of each sorted slot's run
            base = band * m
            self.members[base : base + m] = order
            self.lo[order, band] = base + run_start
            self.mid[order, band] = base + np.arange(m)

    @property
    def signatures(self) -> np.ndarray:
        return self._sigs

    def signature(self, idx: int) -> np.ndarray:
        return self._sigs[idx]

    def keys(self, sig: np.ndarray) -> Any:
        raise TypeError("a component index is queried by document position")

    def candidates(self, j: int) -> list[int]:
        """Documents before ``j`` that share at least one band with it, ascending."""
        lo, lens = self.lo[j], self.mid[j] - self.lo[j]  # (B,): earlier documents of j's run in each band
        total = int(lens.sum())
        if total == 0:
            return []
        ends = np.cumsum(lens)
        positions = np.repeat(lo - ends + lens, lens) + np.arange(total)  # segmented arange over the runs
        return np.unique(self.members[positions]).tolist()

    def add(self, sig: np.ndarray, keys: Any) -> int:
        self.n += 1
        return self.n - 1


def cluster_batch(cfg_json: dict[str, Any], work_dir_s: str, batch: int) -> dict[str, Any]:
    """Cluster one batch of components; writes ``index/result-NNNNN.npz`` and returns its counters.

    Pure function of the chunk files and the batch file, so any executor gives the same bytes.
    """
    from shoestring.data.semantic import SemanticIndex

    t0 = time.process_time()
    cfg = CurateConfig.model_validate(cfg_json)
    work_dir = Path(work_dir_s)
    docs, comp = np.load(index_dir(work_dir) / f"batch-{batch:05d}.npy", allow_pickle=False)
    chunk_start = np.load(index_dir(work_dir) / "chunk_start.npy", allow_pickle=False)
    data = _load_batch(work_dir, chunk_start, docs)
    _, rows = lsh_params(verification_band(cfg.dedup.threshold, cfg.dedup.num_perm)[0], cfg.dedup.num_perm)
    emb = _embeddings(work_dir, chunk_start, docs) if cfg.dedup.semantic else None
    t_load = time.process_time()
    founder = np.empty(docs.size, dtype=np.int64)  # global number of the document that founded the cluster
    role = np.empty(docs.size, dtype=np.uint8)
    sim = np.zeros(docs.size, dtype=np.float64)
    cross: list[tuple[int, int]] = []
    counters: dict[str, int] = {}
    exact_seconds = 0.0
    store = ShingleStore(work_dir)
    starts = np.flatnonzero(np.concatenate(([True], comp[1:] != comp[:-1])))
    try:
        for lo, hi in zip(starts, [*starts[1:], docs.size], strict=True):
            index = ComponentIndex(data["sigs"][lo:hi], data["keys"][lo:hi], rows)
            clus = NearDupClusterer(cfg.dedup.num_perm, cfg.dedup.threshold, store, index=index)
            sem = SemanticIndex(384, cfg.dedup.semantic_threshold) if emb is not None else None
            for k in range(lo, hi):
                loc = tuple(int(x) for x in data["locs"][k])
                g, j, q = clus.match(data["sigs"][k], loc, k - lo)  # type: ignore[arg-type]
                if g >= 0:
                    clus.add(q, g, "member", k)
                    role[k], sim[k] = MEMBER, j
                    continue
                owner = -1
                if sem is not None and emb is not None:
                    owner, _ = sem.query(emb[k])
                if owner >= 0:
                    clus.add(q, owner, "other", k)
                    role[k] = OTHER
                else:
                    clus.add(q, k, "centre", k)  # a cluster is named by the batch position of its founder
                    role[k] = CENTRE
                    if sem is not None and emb is not None:
                        sem.add(emb[k], k)
            for i in range(hi - lo):
                founder[lo + i] = docs[clus.group[i]]
                if role[lo + i] == CENTRE:
                    role[lo + i] = MEMBER  # the final centres are set below (re-centring moves them)
            for centre in clus.centre.values():
                role[lo + centre] = CENTRE
            cross += [(int(docs[lo + a]), int(docs[lo + b])) for a, b in clus.cross_pairs]
            exact_seconds += clus.exact_seconds
            for name, value in clus.stats().items():
                if isinstance(value, int) and name not in ("lsh_bands", "lsh_rows"):
                    counters[name] = counters.get(name, 0) + value
    finally:
        store.close()
    np.savez(
        index_dir(work_dir) / f"result-{batch:05d}.npz",
        docs=docs,
        founder=founder,
        role=role,
        sim=sim,
        cross=np.asarray(cross, dtype=np.int64).reshape(-1, 2),
    )
    t_end = time.process_time()
    return {
        "batch": batch,
        "counters": counters,
        "cpu_seconds": {
            "load": round(t_load - t0, 4),
            "verify_exact": round(exact_seconds, 4),
            "cluster": round(t_end - t_load - exact_seconds, 4),
        },
    }


def save_chunk_start(work_dir: Path, chunk_start: np.ndarray) -> None:
    np.save(index_dir(work_dir) / "chunk_start.npy", chunk_start)


def load_result(work_dir: Path, batch: int) -> dict[str, np.ndarray]:
    with np.load(index_dir(work_dir) / f"result-{batch:05d}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def read_ids(work_dir: Path, chunk: int) -> list[str]:
    ids: list[str] = json.loads(_paths(work_dir, chunk, ".ids.json").read_text(encoding="utf-8"))
    return ids
