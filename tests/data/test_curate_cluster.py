"""Near-duplicate clustering on hand-built documents with known exact Jaccard.

Documents are 400 distinct words; editing a block of k consecutive words changes k + 4 of the
396 word 5-grams, so the exact Jaccard of every pair is known by construction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shoestring.core.config import parse_config
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace
from shoestring.data.cluster import Loc, NearDupClusterer, ShingleStore, shingle_path
from shoestring.data.dedup import (
    MinHasher,
    estimated_jaccard,
    exact_jaccard,
    lsh_params,
    shingle_hashes,
    verification_band,
)

BASE = [f"w{i}" for i in range(400)]


def edit(words: list[str], start: int, k: int, tag: str) -> list[str]:
    return words[:start] + [f"{tag}{i}" for i in range(k)] + words[start + k :]


def jac(a: str, b: str) -> float:
    return exact_jaccard(shingle_hashes(a), shingle_hashes(b))


def index_texts(tmp: Path, texts: list[str]) -> tuple[ShingleStore, list[Loc]]:
    """Write the texts' shingles the way the map phase does (one chunk) and return a store + locations."""
    shingles = [shingle_hashes(t) for t in texts]
    path = shingle_path(tmp, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.concatenate(shingles).astype("<u8").tobytes())
    starts = np.cumsum([0] + [s.size for s in shingles])
    return ShingleStore(tmp), [(0, int(starts[i]), int(shingles[i].size)) for i in range(len(texts))]


def assign(clus: NearDupClusterer, h: MinHasher, texts: list[str], locs: list[Loc]) -> list[tuple[int, str]]:
    """Feed documents in order; returns (cluster, role) per document (role: centre or member)."""
    out = []
    for pos, (t, loc) in enumerate(zip(texts, locs, strict=True)):
        g, _, q = clus.match(h.signature(t), loc)
        if g < 0:
            g = len(clus.centre)
            clus.add(q, g, "centre", (0, pos))
            out.append((g, "centre"))
        else:
            clus.add(q, g, "member", (0, pos))
            out.append((g, "member"))
    return out


def test_band_is_three_standard_errors_and_banding_reaches_its_lower_edge() -> None:
    low, high = verification_band(0.8, 128)
    assert low == pytest.approx(0.8 - 3 * 0.0353553, abs=1e-4) and high == pytest.approx(0.8 + 3 * 0.0353553, abs=1e-4)
    bands, rows = lsh_params(low, 128)
    assert 1 - (1 - low**rows) ** bands > 0.98  # candidates surface down to the band's lower edge


def test_exact_check_keeps_a_true_pair_the_estimate_puts_below_threshold(tmp_path: Path) -> None:
    # The benchmark's miss (a): true Jaccard 0.816, 128-permutation estimate 0.797.
    a, b = " ".join(BASE), " ".join(edit(BASE, 150, 36, "b"))
    h = MinHasher(128, 5, seed=3)
    assert jac(a, b) == pytest.approx(0.8165, abs=1e-4)
    assert estimated_jaccard(h.signature(a), h.signature(b)) < 0.8  # the defect's precondition
    store, locs = index_texts(tmp_path, [a, b])
    clus = NearDupClusterer(128, 0.8, store)
    assert assign(clus, h, [a, b], locs) == [(0, "centre"), (0, "member")]
    assert clus.exact_checks == 1 and clus.exact_flips == 1


def test_exact_check_rejects_a_false_pair_the_estimate_puts_above_threshold(tmp_path: Path) -> None:
    a, b = " ".join(BASE), " ".join(edit(BASE, 150, 43, "b"))
    h = MinHasher(128, 5, seed=7)  # a seed whose estimate lands on the wrong side
    assert jac(a, b) == pytest.approx(0.7878, abs=1e-4)
    assert estimated_jaccard(h.signature(a), h.signature(b)) >= 0.8
    store, locs = index_texts(tmp_path, [a, b])
    clus = NearDupClusterer(128, 0.8, store)
    assert assign(clus, h, [a, b], locs) == [(0, "centre"), (1, "centre")]


def chain(n: int) -> list[str]:
    """d0 ~ d1 ~ ... : each edits the next block of 28 words of the previous one."""
    docs, words = [" ".join(BASE)], BASE
    for k in range(1, n):
        words = edit(words, 150 + 28 * (k - 1), 28, f"e{k}_")
        docs.append(" ".join(words))
    return docs


def test_non_transitive_triple_recentres_on_the_document_close_to_both(tmp_path: Path) -> None:
    # The benchmark's miss (b): c matches member b (0.85) but the representative a only at 0.737.
    a, b, c = chain(3)
    assert jac(a, b) >= 0.85 and jac(b, c) >= 0.85 and jac(a, c) == pytest.approx(0.7368, abs=1e-4)
    store, locs = index_texts(tmp_path, [a, b, c])
    clus = NearDupClusterer(128, 0.8, store)
    assert assign(clus, MinHasher(), [a, b, c], locs) == [(0, "centre"), (0, "member"), (0, "member")]
    assert clus.centre[0] == 1 and sorted(clus.members[0]) == [0, 2]  # b, close to both, is kept
    assert [(r.old, r.new) for r in clus.recentred] == [(0, 1)]


def test_chain_with_no_common_centre_is_not_merged(tmp_path: Path) -> None:
    # a~b~c~d: after b takes {a, c}, d matches only c; no document is >= 0.8 to all of a..d.
    docs = chain(4)
    assert jac(docs[1], docs[3]) < 0.8 and jac(docs[2], docs[3]) >= 0.85
    store, locs = index_texts(tmp_path, docs)
    clus = NearDupClusterer(128, 0.8, store)
    roles = assign(clus, MinHasher(), docs, locs)
    assert roles[3] == (1, "centre")  # kept: no chaining into b's cluster
    for g, centre in clus.centre.items():  # every removed document verifies against its kept one
        for m in clus.members[g]:
            assert jac(docs[m], docs[centre]) >= 0.8


def test_curate_keeps_the_medoid_of_a_non_transitive_triple(tmp_path: Path) -> None:
    a, b, c = chain(3)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in zip("abc", (a, b, c), strict=True)))
    stage = get_stage("curate")
    cfg = parse_config(
        stage.config,
        {
            "sources": [{"path": str(corpus), "name": "s"}],
            "workers": 1,
            "normalize": {"enabled": False},
            "quality": {"enabled": False},
            "pii": {"enabled": False},
            "split": {"validation": 0.0, "test": 0.0},
        },
        "test",
    )
    art = Workspace(tmp_path / "ws").run(stage, cfg).artifact.path
    kept = [json.loads(line) for line in (art / "train.jsonl").read_text().splitlines()]
    dups = [json.loads(line) for line in (art / "duplicates.jsonl").read_text().splitlines()]
    assert [r["id"] for r in kept] == ["s:b"] and kept[0]["cluster_id"] == "s:b" and kept[0]["cluster_size"] == 3
    assert sorted((r["id"], r["cluster_id"]) for r in dups) == [("s:a", "s:b"), ("s:c", "s:b")]
    card = json.loads((art / "datacard.json").read_text())
    assert card["dedup"]["recentred_clusters"] == 1
