"""The batched near-dup hot path: vectorised shingling and MinHash match their definitions, and
clustering per candidate component in memory-bounded batches decides what one global pass does."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from shoestring.core.config import parse_config
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace
from shoestring.data.candidates import BYTES_PER_BATCHED_DOC, build_index, cluster_batch, save_chunk_start
from shoestring.data.cluster import NearDupClusterer, ShingleStore, shingle_path
from shoestring.data.config import CurateConfig
from shoestring.data.dedup import MinHasher, shingle_batch, shingle_hashes, words
from shoestring.data.pipeline import process_chunk

P_WORD = 0x100000001B3
M64 = (1 << 64) - 1


def mix64(x: int) -> int:
    """SplitMix64's finaliser on a Python int."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def reference_shingles(text: str, n: int = 5) -> np.ndarray:
    """The definition, one Python step at a time: regex words, polynomial hashes, n-gram combination."""
    toks = words(text)
    if not toks:
        return np.zeros(0, dtype=np.uint64)
    hs = []
    for w in toks:
        h = 0
        for ch in w:
            h = (h * P_WORD + ord(ch)) & M64
        hs.append(h ^ ((len(w) * 0x9E3779B97F4A7C15) & M64))
    wh = [mix64(h) for h in hs]
    k = min(n, len(toks))
    grams = []
    for i in range(len(toks) - k + 1):
        acc = wh[i]
        for j in range(1, k):
            acc = (acc * P_WORD + wh[i + j]) & M64
        grams.append(acc)
    return np.unique(np.array([mix64(g) for g in grams], dtype=np.uint64))


def test_batched_shingles_equal_the_per_text_definition() -> None:
    rng = random.Random(0)
    vocab = ["the", "Ünïcödé", "naïve", "日本語", "x_1", "42", "ǅemal", "straße", "—", "“q”", "a\0b", "İstanbul"]
    texts = ["", "one", "a b c", "   ", "\0\0", "Ω " * 3]
    texts += [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 60))) for _ in range(200)]
    texts.append(" ".join(f"w{i}" for i in range(70_000)))  # longer than one shingling batch
    flat, off = shingle_batch(texts)
    for i, t in enumerate(texts):
        assert np.array_equal(flat[off[i] : off[i + 1]], reference_shingles(t)), repr(t[:40])
    assert np.array_equal(shingle_hashes(texts[10]), reference_shingles(texts[10]))


def test_batched_minhash_equals_one_signature_at_a_time() -> None:
    rng = random.Random(1)
    texts = [" ".join(f"w{rng.randrange(300)}" for _ in range(rng.choice([0, 3, 40, 900]))) for _ in range(60)]
    flat, off = shingle_batch(texts)
    h = MinHasher(64, 5, seed=4)
    sigs = h.signatures(flat, off)
    for i, t in enumerate(texts):
        s = shingle_hashes(t)
        # Definition: top 32 bits of min over shingles of (a x + b) mod 2^64, all-max for an empty set.
        want = np.full(64, 0xFFFFFFFF, dtype=np.uint32)
        if s.size:
            with np.errstate(over="ignore"):
                want = ((s[:, None] * h.a[None, :] + h.b[None, :]).min(axis=0) >> np.uint64(32)).astype(np.uint32)
        assert np.array_equal(sigs[i], want)


BASE = [f"w{i}" for i in range(120)]


def family_corpus(seed: int) -> list[str]:
    """Families of edited copies (near-duplicates at various Jaccard), exact copies and loners."""
    rng = random.Random(seed)
    texts: list[str] = []
    for f in range(40):
        base = [f"f{f}_{w}" for w in BASE]
        texts.append(" ".join(base))
        for _ in range(rng.randint(0, 6)):
            words_ = list(base)
            for _ in range(rng.randint(1, 6)):
                words_[rng.randrange(len(words_))] = f"e{rng.randrange(10**6)}"
            texts.append(" ".join(words_))
        if rng.random() < 0.3:
            texts.append(texts[-1])  # an exact copy
    texts += [" ".join(f"l{i}_{j}" for j in range(rng.randint(3, 90))) for i in range(60)]
    rng.shuffle(texts)
    return texts


def run_near_only(tmp: Path, texts: list[str], name: str, **extra: Any) -> Path:
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    stage = get_stage("curate")
    cfg = {
        "sources": [{"path": str(corpus), "name": "s"}],
        "normalize": {"enabled": False},
        "quality": {"enabled": False},
        "pii": {"enabled": False},
        "split": {"validation": 0.2, "test": 0.2},
        "chunk_size": 64,
        "workers": 1,
        **extra,
    }
    return Workspace(tmp / name).run(stage, parse_config(stage.config, cfg, "test")).artifact.path


def one_global_pass(tmp: Path, texts: list[str]) -> dict[str, str]:
    """The clustering rule over the whole corpus in one index, documents in order: id -> cluster id."""
    shingles = [shingle_hashes(t) for t in texts]
    path = shingle_path(tmp / "ref", 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(np.concatenate(shingles).astype("<u8").tobytes())
    starts = np.cumsum([0] + [s.size for s in shingles])
    clus = NearDupClusterer(128, 0.8, ShingleStore(tmp / "ref"))
    h = MinHasher()
    first: dict[str, int] = {}
    group_of: list[int] = []
    for i, t in enumerate(texts):
        key = " ".join(t.casefold().split())
        if key in first:
            group_of.append(group_of[first[key]])
            continue
        first[key] = i
        g, _, q = clus.match(h.signature(t), (0, int(starts[i]), int(shingles[i].size)))
        if g < 0:
            g = i
            clus.add(q, g, "centre", i)
        else:
            clus.add(q, g, "member", i)
        group_of.append(g)
    centre_doc = {g: clus.at[idx] for g, idx in clus.centre.items()}
    return {f"s:{i}": f"s:{centre_doc[g]}" for i, g in enumerate(group_of)}


def clusters_of(art: Path) -> dict[str, str]:
    out = {}
    for split in ("train", "validation", "test"):
        for line in (art / f"{split}.jsonl").read_text().splitlines():
            r = json.loads(line)
            out[r["id"]] = r["cluster_id"]
    for line in (art / "duplicates.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["id"]] = r["cluster_id"]
    return out


def test_components_in_tiny_batches_decide_what_one_global_pass_does(tmp_path: Path) -> None:
    texts = family_corpus(0)
    art = run_near_only(tmp_path, texts, "default")
    assert clusters_of(art) == one_global_pass(tmp_path, texts)
    # A 1 MiB budget over 2 workers cuts the candidate components into many batches; the
    # output (splits, duplicates, data card) is byte-identical and the budget is reported.
    small = run_near_only(tmp_path, texts, "small", workers=2, dedup={"max_memory": 1})
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "duplicates.jsonl", "datacard.json"):
        assert (art / name).read_bytes() == (small / name).read_bytes(), name
    run = json.loads((small / "manifest.json").read_text())["stats"]["profile"]["near_dup_index"]
    card = json.loads((small / "datacard.json").read_text())["dedup"]
    assert run["max_memory_mib"] == 1 and run["batches"] >= 2
    assert (
        run["largest_batch_documents"] * 1300 <= 2**20 // 2
        or run["largest_batch_documents"] == card["index"]["largest_component"]
    )
    stats = json.loads((small / "manifest.json").read_text())["stats"]
    assert stats["read"] == len(texts) == stats["kept"] + stats["dropped"]
    assert stats["leak_check"]["cross_split_pairs"] == 0


def test_a_batch_stays_within_its_per_document_budget(tmp_path: Path) -> None:
    """max_memory is honoured: a batch's traced peak is under BYTES_PER_BATCHED_DOC a document,
    and batches are cut at whole components to the budget the workers share."""
    rng = random.Random(3)
    texts = []
    for f in range(12):  # dense families: every copy is a candidate of most others
        base = [f"f{f}_{i}" for i in range(80)]
        for _ in range(60):
            words_ = list(base)
            for _ in range(rng.randint(0, 8)):
                words_[rng.randrange(len(words_))] = f"e{rng.randrange(10**6)}"
            texts.append(" ".join(words_))
    cfg = CurateConfig.model_validate(
        {
            "input": "x.jsonl",
            "dedup": {"max_memory": 1},
            **{op: {"enabled": False} for op in ("normalize", "quality", "pii")},
        }
    )
    cfg_json = cfg.model_dump(mode="json")
    recs: list[Any] = [{"id": f"s:{i}", "text": t, "_source": "s"} for i, t in enumerate(texts)]
    for c in range(0, len(recs), 200):
        process_chunk(cfg_json, c // 200, recs[c : c + 200], str(tmp_path))
    index = build_index(cfg, tmp_path, -(-len(recs) // 200), workers=2)
    save_chunk_start(tmp_path, index.chunk_start)
    per_worker_docs = 2**20 // (BYTES_PER_BATCHED_DOC * 2)
    assert index.run["batches"] >= 2 and index.run["largest_batch_documents"] <= per_worker_docs
    tracemalloc.start()
    try:
        result = cluster_batch(cfg_json, str(tmp_path), 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    docs = np.load(tmp_path / "index" / "batch-00000.npy")[0].size
    assert result["counters"]["candidates_checked"] > docs  # dense: the index really was exercised
    assert peak <= docs * BYTES_PER_BATCHED_DOC, peak / docs
