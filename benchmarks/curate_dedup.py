"""Curation benchmark: shoestring curate vs datatrove's MinHash pipeline, on real offline corpora.

Corpus: the Debian package index this machine's apt keeps
(``/var/lib/apt/lists/*_Packages.lz4``, bookworm main amd64): one document per package, its
control stanza without the checksum/size/file-name lines (63,440 documents, 32.9 MB) - short
English descriptions with real near-duplicates (library/-dev/-doc families, versioned
packages). Nothing is downloaded. ``--docs N`` builds a larger or smaller corpus by sampling
those documents with replacement and perturbing each copy (see :func:`perturb`).

Subcommands (each prints markdown tables; each fits in one ``benchmarks/timed.sh`` slot):

* ``compare``: near-dup only and the full op chain, then datatrove's documented 4-stage
  MinHash pipeline (default ``MinhashConfig``), same worker count. datatrove reads the corpus
  cut into one file per worker, so both of its reader tasks work (with a single file one
  task reads everything). Quality against the *exact* set of pairs with Jaccard >= 0.8 over
  word 5-gram shingles, found by an exact similarity join (prefix filtering: two sets with
  Jaccard >= t share a token among the first |s| - ceil(t |s|) + 1 of their tokens in a
  global rare-first order, so every such pair is a candidate; each candidate is verified).
* ``scale --docs N``: near-dup only on an N-document corpus (``--datatrove`` runs the peer
  too, ``--datatrove-only`` only the peer, for its own timed slot); then ``score --docs N``
  (untimed): 2,000 sampled removed documents checked against their kept representative
  (precision) and every true partner of 2,000 sampled documents found with the same prefix
  index (recall), all exact.

A tool's *decision* is "removed doc -> kept doc of its cluster"; precision = decisions with
true Jaccard >= 0.8; recall = true pairs the tool put in one cluster; document recall =
documents with a true partner that share a cluster with one of them. Peak RSS is summed over
the tool's process tree, sampled every 20 ms.

Usage: ``python benchmarks/curate_dedup.py compare`` · ``python benchmarks/curate_dedup.py scale --docs 1000000``
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from shoestring.data.dedup import exact_jaccard, shingle_batch  # noqa: E402

THRESHOLD = 0.8
PACKAGES = "/var/lib/apt/lists/*_Packages.lz4"
DROP = ("MD5sum:", "SHA256:", "SHA1:", "Filename:", "Size:", "Description-md5:", "Installed-Size:")


# -- corpus ------------------------------------------------------------------------------------


def package_documents() -> list[str]:
    """One text per package stanza of the apt package index (checksum, size and file lines dropped)."""
    files = sorted(glob.glob(PACKAGES))
    if not files:
        raise SystemExit(f"no apt package index at {PACKAGES} (run `apt-get update` once)")
    raw = subprocess.run(["lz4", "-dc", files[0]], capture_output=True, check=True).stdout.decode("utf-8")
    docs = []
    for stanza in raw.split("\n\n"):
        lines = [line for line in stanza.split("\n") if line and not line.startswith(DROP)]
        if lines:
            docs.append("\n".join(lines))
    return docs


def perturb(text: str, rng: random.Random) -> str:
    """A copy with a random share (0-12%) of its words replaced, deleted or duplicated.

    A document of w words edited in k places keeps about 1 - 5k/w of its 5-gram shingles,
    so copies land on both sides of Jaccard 0.8 (and some are exact copies, k = 0).
    """
    words = text.split(" ")
    k = round(len(words) * rng.uniform(0.0, 0.12))
    for _ in range(k):
        i = rng.randrange(len(words))
        op = rng.random()
        if op < 0.6:
            words[i] = f"x{rng.randrange(10**6)}"
        elif op < 0.8 and len(words) > 1:
            del words[i]
        else:
            words.insert(i, words[i])
    return " ".join(words)


def write_corpus(path: Path, n_docs: int | None, seed: int = 0) -> int:
    """The package corpus as JSONL; with ``n_docs``, that many sampled (and perturbed) documents."""
    docs = package_documents()
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        if n_docs is None:
            for i, text in enumerate(docs):
                out.write(json.dumps({"id": f"p{i:06d}", "text": text}) + "\n")
            return len(docs)
        for i in range(n_docs):
            j = rng.randrange(len(docs))
            text = docs[j] if rng.random() < 0.5 else perturb(docs[j], rng)
            out.write(json.dumps({"id": f"s{i:07d}", "text": text}) + "\n")
    return n_docs


def shard_corpus(src: Path, out_dir: Path, shards: int) -> None:
    """The corpus cut into ``shards`` files (round robin), so datatrove gives each reader task one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outs = [open(out_dir / f"part-{k}.jsonl", "w", encoding="utf-8") for k in range(shards)]  # noqa: SIM115
    with open(src, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            outs[i % shards].write(line)
    for o in outs:
        o.close()


# -- ground truth --------------------------------------------------------------------------------


def load_sets(corpus: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, flat shingle hashes, offsets) of every document, with the tool's own shingling."""
    ids, texts = [], []
    with open(corpus, encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            ids.append(d["id"])
            texts.append(d["text"])
    flat, off = shingle_batch(texts, 5)
    return ids, flat, off


class PrefixIndex:
    """Exact similarity join at Jaccard >= t by prefix filtering (tokens in a rare-first order)."""

    def __init__(self, flat: np.ndarray, off: np.ndarray, t: float) -> None:
        self.flat, self.off = flat, off
        sizes = np.diff(off)
        uniq, inv, cnt = np.unique(flat, return_inverse=True, return_counts=True)
        rank = np.empty(uniq.size, dtype=np.int32)
        rank[np.lexsort((uniq, cnt))] = np.arange(uniq.size, dtype=np.int32)
        del uniq, cnt
        tok = rank[inv]  # (S,) int32: rare tokens first
        del inv, rank
        doc = np.repeat(np.arange(sizes.size, dtype=np.int32), sizes)
        tok = tok[np.lexsort((tok, doc))]  # each document's tokens in rank order (doc is already sorted)
        frac = Fraction(t).limit_denominator(1000)
        need = -(-frac.numerator * sizes // frac.denominator)  # ceil(t |s|), exact
        self.plen = np.where(sizes > 0, sizes - need + 1, 0)
        keep = (np.arange(tok.size) - off[doc]) < self.plen[doc]
        ptok, pdoc = tok[keep], doc[keep]
        del keep, doc
        o = np.lexsort((pdoc, ptok))
        self.ptok, self.pdoc = ptok[o], pdoc[o]
        self.tok_sorted_by_doc = tok

    def set_of(self, i: int) -> np.ndarray:
        return self.flat[self.off[i] : self.off[i + 1]]

    def pairs(self) -> set[tuple[int, int]]:
        """All pairs (i < j) with exact Jaccard >= t."""
        runs = np.flatnonzero(np.concatenate(([True], self.ptok[1:] != self.ptok[:-1], [True])))
        cand: set[tuple[int, int]] = set()
        for a, b in itertools.pairwise(runs):
            if b - a < 2:
                continue
            members = self.pdoc[a:b]
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    cand.add((int(members[x]), int(members[y])))
        return {p for p in cand if self.similar(*p)}

    def partners(self, i: int) -> set[int]:
        """Every document j != i with exact Jaccard(i, j) >= t."""
        mine = self.tok_sorted_by_doc[self.off[i] : self.off[i] + self.plen[i]]
        lo = np.searchsorted(self.ptok, mine, side="left")
        hi = np.searchsorted(self.ptok, mine, side="right")
        cands = {int(j) for a, b in zip(lo, hi, strict=True) for j in self.pdoc[a:b] if j != i}
        return {j for j in cands if self.similar(i, j)}

    def similar(self, i: int, j: int) -> bool:
        a, b = self.set_of(i), self.set_of(j)
        if min(a.size, b.size) < THRESHOLD * max(a.size, b.size):
            return False
        return exact_jaccard(a, b) >= THRESHOLD


def score_exact(
    clusters: dict[str, str], kept: set[str], truth: set[tuple[int, int]], ids: list[str], idx: PrefixIndex
) -> dict[str, float]:
    """clusters: doc id -> cluster key (every doc); kept: ids the tool kept."""
    pos = {d: i for i, d in enumerate(ids)}
    members: dict[str, list[str]] = defaultdict(list)
    for doc, c in clusters.items():
        members[c].append(doc)
    decisions = correct = 0
    for group in members.values():
        reps = [d for d in group if d in kept]
        for d in group:
            if d in kept or not reps:
                continue
            decisions += 1
            correct += idx.similar(pos[d], pos[reps[0]])
    found = sum(clusters.get(ids[a]) == clusters.get(ids[b]) for a, b in truth)
    partners: dict[int, list[int]] = defaultdict(list)
    for a, b in truth:
        partners[a].append(b)
        partners[b].append(a)
    doc_found = sum(any(clusters[ids[a]] == clusters[ids[b]] for b in ps) for a, ps in partners.items())
    kept_pairs = sum(ids[a] in kept and ids[b] in kept for a, b in truth)
    p = correct / decisions if decisions else 1.0
    r = found / len(truth) if truth else 1.0
    return {
        "removed": decisions,
        "precision": p,
        "recall": r,
        "doc_recall": doc_found / len(partners) if partners else 1.0,
        "f1": 2 * p * r / (p + r) if p + r else 0.0,
        "kept_pairs": kept_pairs,
    }


def score_sampled(
    clusters: dict[str, str], kept: set[str], ids: list[str], idx: PrefixIndex, n: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Precision on ``n`` sampled removed documents; recall over the true partners of ``n`` sampled documents."""
    rng = random.Random(seed)
    pos = {d: i for i, d in enumerate(ids)}
    rep_of: dict[str, str] = {}
    for doc, c in clusters.items():
        if doc in kept:
            rep_of[c] = doc
    removed = sorted(d for d in clusters if d not in kept)
    sample = rng.sample(removed, min(n, len(removed)))
    correct = sum(idx.similar(pos[d], pos[rep_of[clusters[d]]]) for d in sample if clusters[d] in rep_of)
    found = total = docs_with = doc_found = 0
    # Its own generator, so every tool is scored on the same 2,000 documents.
    for i in random.Random(seed + 1).sample(range(len(ids)), min(n, len(ids))):
        ps = idx.partners(i)
        if not ps:
            continue
        docs_with += 1
        hits = sum(clusters[ids[i]] == clusters[ids[j]] for j in ps)
        found += hits
        total += len(ps)
        doc_found += hits > 0
    return {
        "removed": len(removed),
        "precision": correct / len(sample) if sample else 1.0,
        "recall": found / total if total else 1.0,
        "doc_recall": doc_found / docs_with if docs_with else 1.0,
        "sampled_pairs": total,
    }


# -- running tools -------------------------------------------------------------------------------


def run_measured(cmd: list[str], cwd: Path) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes of the whole process tree, stdout)."""
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # this checkout's shoestring, not an installed one
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    stop = False

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not stop:
            try:
                total = root.memory_info().rss + sum(c.memory_info().rss for c in root.children(recursive=True))
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop = True
    th.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed:\n{err[-3000:]}")
    return wall, peak, out


def shoestring_config(corpus: Path, full: bool, workers: int, max_memory: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "sources": [{"path": str(corpus), "name": "corpus", "max_record_bytes": 1_000_000}],
        "workers": workers,
        "chunk_size": 1000,
        "dedup": {"exact": full, "near": True, "threshold": THRESHOLD, "max_memory": max_memory},
        "split": {"validation": 0.0, "test": 0.0},
    }
    if not full:
        cfg.update(normalize={"enabled": False}, quality={"enabled": False}, pii={"enabled": False})
    else:
        cfg.update(quality={"min_words": 20}, split={"validation": 0.1, "test": 0.1})
    return cfg


def run_shoestring(corpus: Path, work: Path, full: bool, workers: int, max_memory: int = 64) -> tuple[float, int, Path]:
    import yaml

    tag = "full" if full else "near"
    cfg_path = work / f"shoestring-{tag}-{corpus.stem}.yaml"
    cfg_path.write_text(yaml.safe_dump(shoestring_config(corpus, full, workers, max_memory)))
    ws = work / f"ws-{tag}-{corpus.stem}"
    cmd = [sys.executable, "-m", "shoestring.cli", "curate", "--config", str(cfg_path), "-w", str(ws), "--force"]
    wall, peak, out = run_measured(cmd, ROOT)
    return wall, peak, Path(out.strip().splitlines()[-1])


def shoestring_clusters(art: Path) -> tuple[dict[str, str], set[str]]:
    clusters, kept = {}, set()
    for split in ("train", "validation", "test"):
        with open(art / f"{split}.jsonl", encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                doc = r["id"].split(":", 1)[1]
                clusters[doc] = r["cluster_id"].split(":", 1)[1]
                kept.add(doc)
    with open(art / "duplicates.jsonl", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            clusters[r["id"].split(":", 1)[1]] = r["cluster_id"].split(":", 1)[1]
    return clusters, kept


def datatrove_main(shards: str, work: str, workers: int) -> None:
    """Datatrove's documented 4-stage MinHash dedup, default MinhashConfig, `workers` processes."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    cfg = MinhashConfig()
    base = Path(work)
    common = {"workers": workers, "skip_completed": False}

    def reader() -> JsonlReader:
        return JsonlReader(shards, glob_pattern="*.jsonl", id_key="id")

    LocalPipelineExecutor(
        [reader(), MinhashDedupSignature(str(base / "sigs"), config=cfg)],
        tasks=workers,
        logging_dir=str(base / "logs/sigs"),
        **common,
    ).run()
    LocalPipelineExecutor(
        [MinhashDedupBuckets(str(base / "sigs"), str(base / "buckets"), config=cfg)],
        tasks=cfg.num_buckets,
        logging_dir=str(base / "logs/buckets"),
        **common,
    ).run()
    LocalPipelineExecutor(
        [MinhashDedupCluster(str(base / "buckets"), str(base / "remove"), config=cfg, save_cluster_id=True)],
        tasks=1,
        logging_dir=str(base / "logs/cluster"),
        workers=1,
        skip_completed=False,
    ).run()
    LocalPipelineExecutor(
        [
            reader(),
            MinhashDedupFilter(
                str(base / "remove"),
                load_cluster_ids=True,
                exclusion_writer=JsonlWriter(str(base / "removed"), compression=None),
            ),
            JsonlWriter(str(base / "kept"), compression=None),
        ],
        tasks=workers,
        logging_dir=str(base / "logs/filter"),
        **common,
    ).run()


def run_datatrove(corpus: Path, work: Path, workers: int) -> tuple[float, int, Path]:
    shards = work / f"shards-{corpus.stem}"
    shard_corpus(corpus, shards, workers)
    dt_work = work / f"datatrove-{corpus.stem}"
    shutil.rmtree(dt_work, ignore_errors=True)
    cmd = [sys.executable, __file__, "--workers", str(workers), "_datatrove", str(shards), str(dt_work)]
    wall, peak, _ = run_measured(cmd, ROOT)
    return wall, peak, dt_work


def datatrove_clusters(work: Path) -> tuple[dict[str, str], set[str]]:
    clusters, kept = {}, set()
    for sub in ("kept", "removed"):
        for f in sorted((work / sub).glob("*.jsonl")):
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    r = json.loads(line)
                    cid = r.get("metadata", {}).get("minhash_cluster_id", -1)
                    clusters[r["id"]] = f"c{cid}" if cid != -1 else f"solo-{r['id']}"
                    if sub == "kept":
                        kept.add(r["id"])
    return clusters, kept


def profile_rows(art: Path) -> dict[str, Any]:
    stats = json.loads((art / "manifest.json").read_text())["stats"]
    card = json.loads((art / "datacard.json").read_text())
    return {"profile": stats["profile"], "dedup": card["dedup"]}


# -- subcommands --------------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace) -> None:
    corpus = args.work / "packages.jsonl"
    n = write_corpus(corpus, args.docs)
    size_mb = corpus.stat().st_size / 1e6
    print(f"corpus: {n} documents, {size_mb:.1f} MB; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for full in (False, True):
        wall, peak, art = run_shoestring(corpus, args.work, full, args.workers, args.max_memory)
        rows.append(("shoestring " + ("full chain" if full else "near-dup only"), wall, peak, art))
        print(f"  {rows[-1][0]}: {wall:.1f} s, {peak / 2**20:.0f} MiB", flush=True)
    wall, peak, dt_work = run_datatrove(corpus, args.work, args.workers)
    rows.append(("datatrove MinHash (default config)", wall, peak, dt_work))
    print(f"  datatrove: {wall:.1f} s, {peak / 2**20:.0f} MiB; load average {os.getloadavg()[0]:.2f}", flush=True)
    # Ground truth after the timed runs (it is not part of any tool's time).
    t0 = time.perf_counter()
    ids, flat, off = load_sets(corpus)
    idx = PrefixIndex(flat, off, THRESHOLD)
    truth = idx.pairs()
    print(
        f"ground truth: {len(truth)} pairs with Jaccard >= {THRESHOLD} ({time.perf_counter() - t0:.0f} s, exact join)"
    )
    print(f"\n{n} documents ({size_mb:.1f} MB), {args.workers} workers, {len(truth)} true near-duplicate pairs\n")
    print(
        "| tool | wall s | docs/s | peak RSS MiB | removed | precision | recall (pairs) | recall (docs) | F1 | true pairs left among kept |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, wall, peak, art in rows:
        if "full chain" in name:  # other ops rewrite (PII, HTML) and drop (quality) documents first
            q = "n/a | n/a | n/a | n/a | n/a | n/a"
        else:
            sc = score_exact(
                *(shoestring_clusters(art) if "shoestring" in name else datatrove_clusters(art)), truth, ids, idx
            )
            q = (
                f"{sc['removed']} | {sc['precision']:.4f} | {sc['recall']:.4f} | {sc['doc_recall']:.4f} "
                f"| {sc['f1']:.4f} | {sc['kept_pairs']}"
            )
        print(f"| {name} | {wall:.1f} | {n / wall:,.0f} | {peak / 2**20:.0f} | {q} |")
    print(f"\nnear-dup speed-up over datatrove: {rows[2][1] / rows[0][1]:.2f}x")
    for name, _, _, art in rows[:2]:
        print(f"\n{name}: {json.dumps(profile_rows(art))}")


def cmd_scale(args: argparse.Namespace) -> None:
    """Timed part: the tools on an N-document corpus; figures and artifact paths saved for ``score``."""
    corpus = args.work / f"sampled-{args.docs}.jsonl"
    if not corpus.is_file():
        write_corpus(corpus, args.docs, seed=args.seed)
    n = args.docs
    size_mb = corpus.stat().st_size / 1e6
    print(f"corpus: {n} sampled+perturbed documents, {size_mb:.1f} MB; load {os.getloadavg()[0]:.2f}", flush=True)
    saved = args.work / f"scale-{args.docs}.json"
    rows = json.loads(saved.read_text()) if saved.is_file() else {}
    tools = ["datatrove"] if args.datatrove_only else ["shoestring", *(["datatrove"] if args.datatrove else [])]
    for tool in tools:
        if tool == "shoestring":
            wall, peak, art = run_shoestring(corpus, args.work, False, args.workers, args.max_memory)
        else:
            wall, peak, art = run_datatrove(corpus, args.work, args.workers)
        rows[tool] = {"wall": wall, "peak": peak, "art": str(art), "docs": n, "mb": size_mb}
        print(f"| {tool} | {n} | {wall:.1f} | {n / wall:,.0f} | {peak / 2**20:.0f} |", flush=True)
        if tool == "shoestring":
            print(json.dumps(profile_rows(art)))
    saved.write_text(json.dumps(rows))
    print(f"load average after the timed runs: {os.getloadavg()[0]:.2f}")


def cmd_score(args: argparse.Namespace) -> None:
    """Untimed part: sampled exact precision/recall of the runs ``scale`` saved."""
    corpus = args.work / f"sampled-{args.docs}.jsonl"
    rows = json.loads((args.work / f"scale-{args.docs}.json").read_text())
    ids, flat, off = load_sets(corpus)
    idx = PrefixIndex(flat, off, THRESHOLD)
    print(
        "| tool | documents | removed | precision (2,000 sampled removals) | recall (pairs of 2,000 sampled docs) | recall (docs) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for tool, row in rows.items():
        art = Path(row["art"])
        cl = shoestring_clusters(art) if tool == "shoestring" else datatrove_clusters(art)
        sc = score_sampled(*cl, ids, idx)
        print(
            f"| {tool} | {row['docs']} | {sc['removed']} | {sc['precision']:.4f} "
            f"| {sc['recall']:.4f} ({sc['sampled_pairs']} pairs) | {sc['doc_recall']:.4f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/shoestring-curate-bench"))
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="near-dup and full chain vs datatrove, exact truth")
    c.add_argument("--docs", type=int, default=None, help="sample this many documents instead of the real corpus")
    c.add_argument("--max-memory", type=int, default=64)
    s = sub.add_parser("scale", help="near-dup on a sampled+perturbed corpus, sampled truth")
    s.add_argument("--docs", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-memory", type=int, default=64)
    s.add_argument("--datatrove", action="store_true", help="run datatrove too")
    s.add_argument("--datatrove-only", action="store_true", help="run only datatrove (its own timed slot)")
    q = sub.add_parser("score", help="sampled precision/recall of a finished `scale` run (untimed)")
    q.add_argument("--docs", type=int, required=True)
    d = sub.add_parser("_datatrove")
    d.add_argument("shards")
    d.add_argument("out")
    args = ap.parse_args()
    if args.cmd == "_datatrove":
        datatrove_main(args.shards, args.out, args.workers)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    {"compare": cmd_compare, "scale": cmd_scale, "score": cmd_score}[args.cmd](args)


if __name__ == "__main__":
    main()
