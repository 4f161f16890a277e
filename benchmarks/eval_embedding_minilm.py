"""Embedding evaluation of the packaged all-MiniLM-L6-v2 on a real labelled set that needs no
internet: MovieLens-100k movie titles (shipped inside the recbole package) labelled with their
genre, keeping single-genre movies of the genres with at least 30 such movies (6 classes).
A seeded stratified 60/40 split gives the reference (train) and evaluated (test) records.

Runs `shoestring compress --method int8-dynamic` on MiniLM, then `shoestring evaluate --task
embedding` with the int8 model as ``model`` and the float parent as ``compare``: kNN /
nearest-centroid accuracy and macro-F1, precision@K and MRR with 95% CIs, alignment /
uniformity, per-record cosine between the two models' embeddings and paired tests. Quality
figures only (no timing), so it needs no bench lock:

    nice -n 19 .venv/bin/python benchmarks/eval_embedding_minilm.py --work /tmp/eval-emb
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
from pathlib import Path

import numpy as np

from shoestring.core.artifact import Artifact
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace

MIN_PER_GENRE = 30


def movie_titles(out: Path, seed: int = 0) -> Path:
    """Write the title -> genre dataset artifact (train/test jsonl + a minimal manifest)."""
    spec = importlib.util.find_spec("recbole")
    assert spec is not None and spec.submodule_search_locations, "recbole (ships MovieLens-100k) is not installed"
    item = Path(next(iter(spec.submodule_search_locations))) / "dataset_example/ml-100k/ml-100k.item"
    rows = []
    for line in item.read_text(encoding="latin-1").splitlines()[1:]:
        f = line.split("\t")
        genres = f[3].split()
        if len(genres) == 1 and f[1].strip():
            rows.append({"id": f"movie-{f[0]}", "text": f[1].strip(), "label": genres[0], "year": f[2]})
    counts = collections.Counter(r["label"] for r in rows)
    rows = [r for r in rows if counts[r["label"]] >= MIN_PER_GENRE]
    rng = np.random.default_rng(seed)
    split: dict[str, list[dict[str, str]]] = {"train": [], "test": []}
    for g in sorted({r["label"] for r in rows}):
        grp = [r for r in rows if r["label"] == g]
        order = rng.permutation(len(grp))
        n_train = round(0.6 * len(grp))
        split["train"] += [grp[i] for i in order[:n_train]]
        split["test"] += [grp[i] for i in order[n_train:]]
    out.mkdir(parents=True, exist_ok=True)
    for name, recs in split.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    stats = {"records": {k: len(v) for k, v in split.items()}, "classes": dict(collections.Counter(
        r["label"] for r in split["test"]))}
    (out / "manifest.json").write_text(json.dumps({"kind": "dataset", "hash": f"movielens-titles-{seed}",
                                                   "stats": stats}))
    return out


def ci(d: dict) -> str:
    return f"{d['value']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", default="/tmp/eval-embedding")
    ap.add_argument("--method", default="int8-dynamic")
    args = ap.parse_args()
    ws = Workspace(Path(args.work) / "ws")
    data = Artifact.load(movie_titles(Path(args.work) / "movies"))
    comp = get_stage("compress")
    ccfg = comp.config.model_validate({"model": "all-minilm-l6-v2", "method": args.method, "task": "embedding",
                                       "dataset": str(data.path), "gate_action": "warn"})
    small = ws.run(comp, ccfg, {"dataset": data}).artifact
    ev = get_stage("evaluate")
    ecfg = ev.config.model_validate({"model": str(small.path), "compare": "all-minilm-l6-v2", "task": "embedding",
                                     "dataset": str(data.path), "max_records": 5000, "k": [1, 10], "knn_k": 10})
    res = ws.run(ev, ecfg, {"model": small, "dataset": data})
    m = json.loads((res.artifact.path / "metrics.json").read_text())
    test = [json.loads(x) for x in (data.path / "test.jsonl").read_text().splitlines()]
    majority = collections.Counter(r["label"] for r in test).most_common(1)[0][1] / len(test)
    print(f"records: test {m['model']['records']}, classes {m['classes']}, majority-class accuracy {majority:.3f}")
    print(f"report: {res.artifact.path / 'report.html'}\n")
    print("| model | kNN (k=10) accuracy | kNN macro-F1 | centroid accuracy | centroid macro-F1 | precision@10 | MRR | "
          "alignment | uniformity | eff. rank |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for role, name in (("compare", "MiniLM-L6 fp32"), ("model", f"MiniLM-L6 {args.method}")):
        b = m[role]
        print(f"| {name} | {ci(b['knn']['accuracy'])} | {ci(b['knn']['macro_f1'])} | {ci(b['centroid']['accuracy'])} | "
              f"{ci(b['centroid']['macro_f1'])} | {ci(b['retrieval']['precision@10'])} | {ci(b['retrieval']['mrr'])} | "
              f"{ci(b['intrinsic']['alignment'])} | {ci(b['intrinsic']['uniformity'])} | "
              f"{b['intrinsic']['effective_rank']:.1f} |")
    c = m["comparison"]
    cs = c["cosine_similarity"]
    print(f"\nper-record cosine(int8, fp32): {ci(cs)}, min {cs['min']:.4f}, 5th percentile {cs['p05']:.4f}")
    print(f"top-10 neighbour overlap: {ci(c['neighbour_overlap@10'])}; kNN label agreement {c['knn_label_agreement']:.3f}")
    for name in ("knn_accuracy_difference", "mrr_difference"):
        d = c[name]
        print(f"{name} (int8 - fp32): {ci(d['difference'])}, permutation p {d['p_value_permutation']:.3g}, "
              f"{d['b_better']} records int8 higher / {d['a_better']} fp32 higher / {d['ties']} ties")


if __name__ == "__main__":
    main()
