"""Near-duplicate clustering with verified candidates and a re-centring representative rule.

Every document that is not an exact duplicate is indexed (signature in the LSH index, its
shingle hashes left on disk in the map phase's per-chunk files and read back with
``pread`` only when an exact check needs them, so RAM holds no shingles). A cluster has one
**centre** (the kept representative) and near-duplicate **members**, each of which verified
at Jaccard >= threshold against the centre.

Verification: a candidate's MinHash estimate decides outside the uncertainty band
(:func:`~shoestring.data.dedup.verification_band`); inside it the exact Jaccard of the two
shingle sets decides.

Assignment of a new document A (the rule, documented in docs/ARCHITECTURE.md):

1. A verifies against one or more centres -> A joins the most similar one (ties: earliest).
2. Otherwise, if A verifies against a *member* B of cluster X (but not X's centre C): the
   cluster is re-centred if some document M of X that verifies against A also verifies
   against every other document of X (C included). The M with the highest summed
   similarity to the others (a medoid; ties: earliest) becomes the centre, C becomes a
   member, and A joins. So every removed document still verifies against its kept
   representative (no chaining), and the pair A~B ends in one cluster.
3. Otherwise A founds a cluster (is kept). Its pair with B then crosses clusters; that
   happens only when no single document of X ∪ {A} is within the threshold of all the
   others - no kept representative could stand for all of them, so no clustering with one
   verified representative per cluster can put every such pair together.

Re-centring checks at most ``max_recenter`` members (bounded time on huge clusters) and never
moves the centre of a cluster that holds semantic duplicates (they matched the centre's embedding).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shoestring.data.dedup import LSHIndex, estimated_jaccard, exact_jaccard, verification_band

__all__ = ["CandidateIndex", "Loc", "NearDupClusterer", "Recentre", "ShingleStore", "shingle_path"]

Loc = tuple[int, int, int]
"""Where a document's shingle hashes live: (chunk, first shingle, number of shingles)."""


def shingle_path(work_dir: Path, chunk: int) -> Path:
    """Raw little-endian uint64 shingle hashes of a chunk's records, concatenated in record order."""
    return work_dir / "chunks" / f"chunk-{chunk:06d}.shingles.u64"


class ShingleStore:
    """Reads shingle hashes back from the per-chunk files; keeps only an LRU of open descriptors."""

    def __init__(self, work_dir: Path, max_open: int = 32) -> None:
        self.work_dir = work_dir
        self.max_open = max_open
        self._fds: OrderedDict[int, int] = OrderedDict()
        self.reads = 0

    def get(self, loc: Loc) -> np.ndarray:
        chunk, start, count = loc
        fd = self._fds.get(chunk)
        if fd is None:
            fd = os.open(shingle_path(self.work_dir, chunk), os.O_RDONLY)
            self._fds[chunk] = fd
            if len(self._fds) > self.max_open:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(chunk)
        self.reads += 1
        data = os.pread(fd, count * 8, start * 8)
        return np.frombuffer(data, dtype="<u8").astype(np.uint64, copy=False)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class CandidateIndex(Protocol):
    """Where the clusterer finds earlier documents sharing an LSH band with a new one."""

    bands: int
    rows: int

    @property
    def signatures(self) -> np.ndarray: ...

    def signature(self, idx: int) -> np.ndarray: ...

    def keys(self, sig: np.ndarray) -> Any: ...

    def candidates(self, keys: Any) -> list[int]: ...

    def add(self, sig: np.ndarray, keys: Any) -> int: ...


@dataclass(frozen=True)
class Recentre:
    """Cluster ``group``'s centre moved from indexed document ``old`` to ``new``."""

    group: int
    old: int
    new: int


@dataclass
class _Query:
    """The document being assigned: its signature, band keys and (lazily read) shingles."""

    sig: np.ndarray
    keys: Any
    loc: Loc
    shingles: np.ndarray | None = None
    sims: dict[int, float] = field(default_factory=dict)


class NearDupClusterer:
    """Streaming near-duplicate clustering; see the module docstring for the rule."""

    def __init__(
        self,
        num_perm: int,
        threshold: float,
        store: ShingleStore,
        z: float = 3.0,
        max_recenter: int = 256,
        index: CandidateIndex | None = None,
    ) -> None:
        self.threshold = threshold
        self.low, self.high = verification_band(threshold, num_perm, z)
        # The candidate index: a growing LSH dict by default, or one built for a whole component.
        self.lsh: CandidateIndex = index if index is not None else LSHIndex(num_perm, self.low)
        self.store = store
        self.max_recenter = max_recenter
        self.locs: list[Loc] = []  # per indexed document
        self.at: list[Any] = []  # per indexed document: where the caller has it (e.g. its global number)
        self.group: list[int] = []  # per indexed document: its cluster
        self.centre: dict[int, int] = {}  # cluster -> indexed document that is its centre
        self.members: dict[int, list[int]] = {}  # cluster -> near-duplicate members (centre excluded)
        self.pinned: set[int] = set()  # clusters holding documents grouped by another rule: never re-centred
        self.recentred: list[Recentre] = []  # not yet applied by the caller (who clears it)
        self.cross_pairs: list[tuple[int, int]] = []  # (i, j): verified at >= threshold, in different clusters
        self.recentre_count = 0
        self.candidates_checked = 0
        self.candidates_rejected = 0
        self.exact_checks = 0
        self.exact_flips = 0  # exact check disagreed with the estimate's side of the threshold
        self.exact_seconds = 0.0  # CPU seconds reading shingles back and intersecting them

    # -- similarity ---------------------------------------------------------------------------
    def _decide(self, est: float, a: Loc | np.ndarray, b: Loc) -> float:
        """The similarity used for the decision: the estimate outside the band, else exact Jaccard."""
        if est < self.low or est >= self.high:
            return est
        clock = time.process_time()
        sa = a if isinstance(a, np.ndarray) else self.store.get(a)
        exact = exact_jaccard(sa, self.store.get(b))
        self.exact_seconds += time.process_time() - clock
        self.exact_checks += 1
        self.exact_flips += (exact >= self.threshold) != (est >= self.threshold)
        return exact

    def _settle(self, q: _Query, i: int, est: float) -> float:
        """The decided similarity of the query to indexed document ``i`` given the estimate."""
        if self.low <= est < self.high and q.shingles is None:
            q.shingles = self.store.get(q.loc)
        s = self._decide(est, q.shingles if q.shingles is not None else q.loc, self.locs[i])
        q.sims[i] = s
        return s

    def _sim_query(self, q: _Query, i: int) -> float:
        if i not in q.sims:
            return self._settle(q, i, estimated_jaccard(q.sig, self.lsh.signature(i)))
        return q.sims[i]

    def _sim_pair(self, i: int, j: int, cache: dict[tuple[int, int], float]) -> float:
        key = (min(i, j), max(i, j))
        if key not in cache:
            est = estimated_jaccard(self.lsh.signature(i), self.lsh.signature(j))
            cache[key] = self._decide(est, self.locs[key[0]], self.locs[key[1]])
        return cache[key]

    # -- assignment ---------------------------------------------------------------------------
    def match(self, sig: np.ndarray, loc: Loc, keys: Any = None) -> tuple[int, float, _Query]:
        """(cluster, similarity to its centre, query) for a new document; cluster -1 = none.

        ``keys``: what the index needs to find its candidates (band keys, or the position of
        the document in a component index); computed from the signature when None.
        May re-centre a cluster (recorded in ``recentred``); call :meth:`add` next either way.
        """
        q = _Query(sig, self.lsh.keys(sig) if keys is None else keys, loc)
        neighbours: list[tuple[float, int]] = []
        cands = self.lsh.candidates(q.keys)
        if cands:
            # All candidates' estimates in one vectorised comparison: (C, P) == (P,) -> (C,).
            ests = np.count_nonzero(self.lsh.signatures[cands] == sig, axis=1) / sig.size
            for i, est in zip(cands, ests.tolist(), strict=True):
                self.candidates_checked += 1
                s = self._settle(q, i, est)
                if s >= self.threshold:
                    neighbours.append((s, i))
                else:
                    self.candidates_rejected += 1
        best, best_s = -1, 0.0
        for s, i in neighbours:  # rule 1: the most similar centre
            g = self.group[i]
            if self.centre.get(g) == i and (s > best_s or (s == best_s and g < best)):
                best, best_s = g, s
        if best >= 0:
            return best, best_s, q
        tried: set[int] = set()
        for _, i in sorted(neighbours, key=lambda t: (-t[0], t[1])):  # rule 2: re-centre
            g = self.group[i]
            if g in tried or i not in self.members.get(g, ()):
                continue
            tried.add(g)
            s_centre = self._recentre(g, q)
            if s_centre is not None:
                return g, s_centre, q
        return -1, 0.0, q

    def _recentre(self, g: int, q: _Query) -> float | None:
        """Make ``g`` take the query: returns its similarity to the (possibly new) centre, or None."""
        centre, members = self.centre[g], self.members[g]
        s_c = self._sim_query(q, centre)  # the LSH may simply have missed the centre
        if s_c >= self.threshold:
            return s_c
        if len(members) > self.max_recenter or g in self.pinned:
            return None
        cluster = [centre, *members]
        cache: dict[tuple[int, int], float] = {}
        best, best_score = -1, -1.0
        for m in members:
            s_q = self._sim_query(q, m)
            if s_q < self.threshold:
                continue
            total = s_q
            for other in cluster:
                if other == m:
                    continue
                s = self._sim_pair(m, other, cache)
                if s < self.threshold:
                    break
                total += s
            else:
                if total > best_score or (total == best_score and m < best):
                    best, best_score = m, total
        if best < 0:
            return None
        members.remove(best)
        members.append(centre)
        self.centre[g] = best
        self.recentred.append(Recentre(g, centre, best))
        self.recentre_count += 1
        return q.sims[best]

    def add(self, q: _Query, group: int, role: str, at: Any) -> int:
        """Index the queried document in ``group`` as ``centre`` (a new cluster), ``member``
        (verified near-duplicate of the centre) or ``other`` (grouped by another rule, e.g.
        semantic dedup: indexed for later candidates and the leak check, never a centre)."""
        idx = self.lsh.add(q.sig, q.keys)
        for i, s in q.sims.items():  # verified near-duplicate pairs that cross clusters: the split joins them
            if s >= self.threshold and self.group[i] != group:
                self.cross_pairs.append((i, idx))
        self.locs.append(q.loc)
        self.at.append(at)
        self.group.append(group)
        if role == "centre":
            self.centre[group] = idx
            self.members[group] = []
        elif role == "member":
            self.members[group].append(idx)
        else:  # e.g. a semantic duplicate of the centre: moving the centre could break its match
            self.pinned.add(group)
        return idx

    def stats(self) -> dict[str, Any]:
        return {
            "lsh_bands": self.lsh.bands,
            "lsh_rows": self.lsh.rows,
            "verification_band": [round(self.low, 4), round(self.high, 4)],
            "candidates_checked": self.candidates_checked,
            "candidates_rejected_by_verification": self.candidates_rejected,
            "exact_jaccard_checks": self.exact_checks,
            "exact_checks_that_flipped_the_estimate": self.exact_flips,
            "recentred_clusters": self.recentre_count,
        }
