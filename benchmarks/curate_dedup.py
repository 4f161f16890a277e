"""Curation benchmark: shoestring curate vs datatrove's MinHash pipeline, on a real offline corpus.

Corpus: the licence, copyright and README files that installed Debian packages and Python
packages ship (``/usr/share/doc/**`` incl. gzipped changelogs, ``site-packages/*.dist-info``
LICENSE/COPYING/METADATA files) - full of real near-duplicates (the same licence with
different copyright lines). Nothing is downloaded.

Measured side by side, one tool at a time, each in its own process tree, same worker count:

* docs/s and peak RSS (sum over the process tree, sampled every 20 ms) for
  - shoestring near-dup only (exact dedup, quality, PII, normalisation off),
  - shoestring full op chain (normalise, quality, PII, exact + near dedup, split),
  - datatrove MinHash (signature -> buckets -> cluster -> filter), default ``MinhashConfig``;
* near-duplicate detection quality against exact ground truth: Jaccard over word 5-gram
  shingles (words = lower-cased ``\\w+`` tokens), brute force over every pair that can reach
  0.8 (pairs whose shingle-set sizes differ by more than 1/0.8 cannot, so they are skipped
  exactly, not approximately). A tool's *decision* is "removed doc -> kept doc of its
  cluster"; precision = decisions with true Jaccard >= 0.8; recall = true pairs that the tool
  put in one cluster; plus two cluster-free counts: true pairs left among the kept documents,
  and removed documents with no kept document at Jaccard >= 0.8;
* memory scaling: shoestring's full chain on the corpus and on a 10x corpus (10 word-shuffled
  variants of every document, so the dedup index really grows).

Precision/recall are reported for near-dup-only runs; in the full chain other ops rewrite
(PII, HTML) or drop (quality) documents before dedup, so raw-text ground truth does not apply.

Usage: ``python benchmarks/curate_dedup.py [--max-docs 3000] [--workers 2] [--scale 10]``
(about 5-10 minutes on 2 cores). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from shoestring.data.dedup import shingle_hashes  # noqa: E402

THRESHOLD = 0.8


# -- corpus ------------------------------------------------------------------------------------


def corpus_files() -> list[Path]:
    site = Path(np.__file__).resolve().parents[1]
    files = sorted(p for p in Path("/usr/share/doc").rglob("*") if p.is_file())
    files += sorted(
        p
        for p in site.glob("*.dist-info/**/*")
        if p.is_file()
        and (p.name.startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE", "AUTHORS")) or p.name == "METADATA")
    )
    return files


def build_corpus(path: Path, max_docs: int, max_bytes: int = 200_000) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as out:
        for f in corpus_files():
            try:
                data = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
                text = data.decode("utf-8")
            except (OSError, UnicodeDecodeError, EOFError):
                continue
            if not (200 <= len(text) <= max_bytes):
                continue
            out.write(json.dumps({"id": f"d{n:06d}", "text": text, "path": str(f)}) + "\n")
            n += 1
            if n >= max_docs:
                break
    return n


def scale_corpus(src: Path, dst: Path, factor: int) -> int:
    """``factor`` variants of each document; variant k>0 shuffles words within each line."""
    n = 0
    docs = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines()]
    with open(dst, "w", encoding="utf-8") as out:
        for k in range(factor):
            rng = random.Random(k)
            for d in docs:
                text = d["text"]
                if k:
                    lines = []
                    for line in text.split("\n"):
                        w = line.split(" ")
                        rng.shuffle(w)
                        lines.append(" ".join(w))
                    text = "\n".join(lines)
                out.write(json.dumps({"id": f"{d['id']}-v{k}", "text": text}) + "\n")
                n += 1
    return n


# -- ground truth --------------------------------------------------------------------------------


def true_pairs(corpus: Path) -> tuple[set[tuple[str, str]], dict[str, np.ndarray]]:
    ids, sets = [], []
    for line in corpus.read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        ids.append(d["id"])
        sets.append(shingle_hashes(d["text"], 5))  # sorted unique 64-bit shingle hashes
    order = sorted(range(len(ids)), key=lambda i: sets[i].size)
    pairs: set[tuple[str, str]] = set()
    for a_pos, i in enumerate(order):
        si = sets[i]
        if si.size == 0:
            continue
        for j in order[a_pos + 1 :]:
            sj = sets[j]
            if si.size < THRESHOLD * sj.size:
                break  # sizes only grow from here: J <= |si| / |sj| < 0.8
            inter = np.intersect1d(si, sj, assume_unique=True).size
            if inter / (si.size + sj.size - inter) >= THRESHOLD:
                pairs.add((min(ids[i], ids[j]), max(ids[i], ids[j])))
    return pairs, dict(zip(ids, sets, strict=True))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - inter
    return inter / union if union else 1.0


def score(
    clusters: dict[str, str], kept: set[str], truth: set[tuple[str, str]], sets: dict[str, np.ndarray]
) -> dict[str, float]:
    """clusters: doc id -> cluster key (every doc); kept: ids the tool kept."""
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
            correct += jaccard(sets[d], sets[reps[0]]) >= THRESHOLD
    found = sum(clusters.get(a) is not None and clusters.get(a) == clusters.get(b) for a, b in truth)
    p = correct / decisions if decisions else 1.0
    r = found / len(truth) if truth else 1.0
    # Two cluster-free views of the same output (added, not replacing the above):
    # kept-set purity = true pairs with both documents kept (duplicates left in the data);
    # over-removal = removed documents with no kept document at Jaccard >= 0.8 (data lost).
    kept_pairs = sum(a in kept and b in kept for a, b in truth)
    covered = {b for a, b in truth if a in kept} | {a for a, b in truth if b in kept}
    over = sum(1 for doc in clusters if doc not in kept and doc not in covered)
    return {
        "removed": decisions,
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r) if p + r else 0.0,
        "kept_pairs": kept_pairs,
        "over_removed": over,
    }


# -- running tools -------------------------------------------------------------------------------


def run_measured(cmd: list[str], cwd: Path) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes of the whole process tree, stderr tail)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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


CHUNK_SIZE = 1000


def shoestring_config(corpus: Path, full: bool, workers: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "sources": [{"path": str(corpus), "name": "corpus", "max_record_bytes": 1_000_000}],
        "workers": workers,
        "chunk_size": CHUNK_SIZE,
        "dedup": {"exact": full, "near": True, "threshold": THRESHOLD},
        "split": {"validation": 0.0, "test": 0.0},
    }
    if not full:
        cfg.update(normalize={"enabled": False}, quality={"enabled": False}, pii={"enabled": False})
    else:
        cfg.update(quality={"min_words": 20}, split={"validation": 0.1, "test": 0.1})
    return cfg


def run_shoestring(corpus: Path, work: Path, full: bool, workers: int) -> tuple[float, int, Path]:
    import yaml

    tag = "full" if full else "near"
    cfg_path = work / f"shoestring-{tag}-{corpus.stem}.yaml"
    cfg_path.write_text(yaml.safe_dump(shoestring_config(corpus, full, workers)))
    ws = work / f"ws-{tag}-{corpus.stem}"
    cmd = [sys.executable, "-m", "shoestring.cli", "curate", "--config", str(cfg_path), "-w", str(ws), "--force"]
    wall, peak, out = run_measured(cmd, ROOT)
    return wall, peak, Path(out.strip().splitlines()[-1])


def shoestring_clusters(art: Path) -> tuple[dict[str, str], set[str]]:
    clusters, kept = {}, set()
    for split in ("train", "validation", "test"):
        for line in (art / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            doc = r["id"].split(":", 1)[1]
            clusters[doc] = r["cluster_id"]
            kept.add(doc)
    for line in (art / "duplicates.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        clusters[r["id"].split(":", 1)[1]] = r["cluster_id"]
    return clusters, kept


def datatrove_main(corpus: str, work: str, workers: int) -> None:
    """Datatrove's documented 4-stage MinHash dedup, default MinhashConfig, `workers` processes."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    cfg = MinhashConfig()
    base = Path(work)
    reader = JsonlReader(str(Path(corpus).parent), glob_pattern=Path(corpus).name, id_key="id")
    common = {"workers": workers, "skip_completed": False}
    LocalPipelineExecutor(
        [reader, MinhashDedupSignature(str(base / "sigs"), config=cfg)],
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
            JsonlReader(str(Path(corpus).parent), glob_pattern=Path(corpus).name, id_key="id"),
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


def datatrove_clusters(work: Path) -> tuple[dict[str, str], set[str]]:
    clusters, kept = {}, set()
    for sub in ("kept", "removed"):
        for f in sorted((work / sub).glob("*.jsonl")):
            for line in f.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                cid = r.get("metadata", {}).get("minhash_cluster_id", -1)
                clusters[r["id"]] = f"c{cid}" if cid != -1 else f"solo-{r['id']}"
                if sub == "kept":
                    kept.add(r["id"])
    return clusters, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-docs", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/shoestring-curate-bench"))
    ap.add_argument("--chunk-size", type=int, default=1000, help="shoestring records per chunk")
    ap.add_argument("--scaling-only", action="store_true", help="only the 1x vs Nx memory comparison")
    ap.add_argument("--datatrove-stage", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global CHUNK_SIZE
    CHUNK_SIZE = args.chunk_size
    if args.datatrove_stage:
        datatrove_main(args.datatrove_stage[0], args.datatrove_stage[1], args.workers)
        return
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    corpus = args.work / "corpus.jsonl"
    n = build_corpus(corpus, args.max_docs)
    size_mb = corpus.stat().st_size / 1e6
    print(f"corpus: {n} documents, {size_mb:.1f} MB, load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.scaling_only:
        scaling(corpus, n, size_mb, args, *run_shoestring(corpus, args.work, True, args.workers)[:2])
        return
    t0 = time.perf_counter()
    truth, sets = true_pairs(corpus)
    print(
        f"ground truth: {len(truth)} pairs with Jaccard >= {THRESHOLD} ({time.perf_counter() - t0:.0f} s brute force)",
        flush=True,
    )

    rows = []
    for full in (False, True):
        wall, peak, art = run_shoestring(corpus, args.work, full, args.workers)
        q = score(*shoestring_clusters(art), truth, sets)
        rows.append(("shoestring " + ("full chain" if full else "near-dup only"), wall, peak, q))
        print(f"  {rows[-1][0]}: {wall:.1f} s", flush=True)
    dt_work = args.work / "datatrove"
    cmd = [sys.executable, __file__, "--workers", str(args.workers), "--datatrove-stage", str(corpus), str(dt_work)]
    wall, peak, _ = run_measured(cmd, ROOT)
    rows.append(("datatrove MinHash (default config)", wall, peak, score(*datatrove_clusters(dt_work), truth, sets)))
    print(f"  datatrove: {wall:.1f} s", flush=True)

    print(f"\n{n} documents ({size_mb:.1f} MB), {args.workers} workers, {len(truth)} true near-duplicate pairs\n")
    print(
        "| tool | wall s | docs/s | peak RSS MiB | removed | precision | recall | F1 "
        "| true pairs left among kept | removed with no kept doc >= 0.8 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, wall, peak, q in rows:
        if "full chain" in name:  # other ops rewrite (PII, HTML) and drop (quality) documents first
            quality = f"{q['removed']} | n/a | n/a | n/a | n/a | n/a"
        else:
            quality = (
                f"{q['removed']} | {q['precision']:.3f} | {q['recall']:.3f} | {q['f1']:.3f} "
                f"| {q['kept_pairs']} | {q['over_removed']}"
            )
        print(f"| {name} | {wall:.1f} | {n / wall:.0f} | {peak / 2**20:.0f} | {quality} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    if args.scale > 1:
        scaling(corpus, n, size_mb, args, rows[1][1], rows[1][2])


def scaling(corpus: Path, n: int, size_mb: float, args: argparse.Namespace, wall: float, peak: int) -> None:
    big = args.work / "corpus_x.jsonl"
    n_big = scale_corpus(corpus, big, args.scale)
    wall_big, peak_big, _ = run_shoestring(big, args.work, True, args.workers)
    print(f"\nMemory scaling, shoestring full chain ({args.workers} workers, chunk_size {CHUNK_SIZE})\n")
    print("| corpus | documents | MB | wall s | docs/s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| 1x | {n} | {size_mb:.1f} | {wall:.1f} | {n / wall:.0f} | {peak / 2**20:.0f} |")
    print(
        f"| {args.scale}x | {n_big} | {big.stat().st_size / 1e6:.1f} | {wall_big:.1f} | {n_big / wall_big:.0f} | "
        f"{peak_big / 2**20:.0f} |"
    )
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
