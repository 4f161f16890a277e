"""DP-SGD text classification: all-MiniLM-L6-v2 + LoRA on Python-docs paragraphs labelled by topic.

A real, offline labelled text set: paragraphs of four ``pydoc_data.topics`` entries of the
Python reference (``compound`` statements, ``specialnames`` data model, ``debugger`` pdb,
``string-methods``), every 5th paragraph held out for validation and every 5th+1 for test.
Trains through ``shoestring train`` (the stage API) with ``privacy: {target_epsilon: E}``
for each E given, and once without privacy (the ordinary classification loop) at the same
lr / batch / epochs; test accuracy is computed here, the same way for every model.

Usage::

    .venv/bin/python benchmarks/train_dp_classify.py --epsilons 8 --epochs 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

TOPICS = ("compound", "specialnames", "debugger", "string-methods")


def write_dataset(folder: Path) -> dict[str, int]:
    from pydoc_data.topics import topics

    splits: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
    for key in TOPICS:
        paras = [" ".join(p.split()) for p in str(topics[key]).split("\n\n")]
        for i, text in enumerate(p for p in paras if len(p) >= 40):
            split = "validation" if i % 5 == 0 else "test" if i % 5 == 1 else "train"
            splits[split].append({"id": f"{key}-{i}", "text": text, "label": key})
    folder.mkdir(parents=True, exist_ok=True)
    for name, recs in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    digest = hashlib.sha256((folder / "train.jsonl").read_bytes()).hexdigest()
    manifest = {"kind": "dataset", "stage": "curate", "hash": digest, "stats": {"kept": len(splits["train"])}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return {k: len(v) for k, v in splits.items()}


def test_accuracy(art: Path, ds: Path, seq_len: int) -> float:
    import torch

    from shoestring.models import load_model, load_tokenizer

    folder = art / ("adapter" if (art / "adapter").is_dir() else "model")
    label_to_id = json.loads((folder / "labels.json").read_text())
    id2label = {int(i): lab for lab, i in label_to_id.items()}
    model = load_model(str(art), "classification", num_labels=len(id2label)).eval()
    tok = load_tokenizer(str(art))
    recs = [json.loads(line) for line in (ds / "test.jsonl").read_text().splitlines()]
    correct = 0
    with torch.no_grad():
        for i in range(0, len(recs), 32):
            chunk = recs[i : i + 32]
            enc = tok([r["text"] for r in chunk], truncation=True, max_length=seq_len, padding=True, return_tensors="pt")
            pred = model(**enc).logits.argmax(-1)
            correct += sum(id2label[int(p)] == r["label"] for p, r in zip(pred, chunk, strict=True))
    return correct / len(recs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epsilons", type=float, nargs="*", default=[8.0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()

    from rich.console import Console

    from shoestring.core.artifact import Artifact
    from shoestring.core.registry import get_stage
    from shoestring.core.workspace import Workspace

    work = a.work or Path(tempfile.mkdtemp(prefix="dp-classify-"))
    sizes = write_dataset(work / "ds")
    stage = get_stage("train")
    common = {"dataset": str(work / "ds"), "model": "all-minilm-l6-v2", "task": "classification", "method": "lora",
              "seq_len": a.seq_len, "micro_batch_size": a.batch, "epochs": a.epochs, "lr": a.lr, "progress": False,
              "lora": {"r": 8, "alpha": 16, "target_modules": ["query", "value"]},
              "tracking": {"tensorboard": False}}  # fmt: skip
    variants: list[tuple[str, dict[str, Any]]] = [] if a.no_baseline else [("no DP", {})]
    variants += [(f"DP ε={e:g}", {"privacy": {"target_epsilon": e}}) for e in a.epsilons]
    print(f"data: {sizes} paragraphs, 4 topics {TOPICS}; LoRA r=8 on query/value + head, lr {a.lr}, "
          f"batch {a.batch}, seq_len {a.seq_len}, {a.epochs} epochs\n")  # fmt: skip
    rows = []
    for name, extra in variants:
        cfg = stage.config.model_validate({**common, **extra})
        t0 = time.perf_counter()
        art = Workspace(work / "ws", console=Console(stderr=True)).run(
            stage, cfg, {"dataset": Artifact.load(work / "ds")}
        ).artifact
        wall = time.perf_counter() - t0
        rep = art.manifest.get("privacy") or {}
        eps = rep.get("epsilon_spent", math.inf)
        rows.append((name, eps, rep.get("delta"), rep.get("noise_multiplier", 0.0), test_accuracy(art.path, work / "ds", a.seq_len), wall))
    print("| variant | ε spent | δ | noise multiplier | test accuracy | wall s |")
    print("|---|---|---|---|---|---|")
    for name, eps, delta, noise, acc, wall in rows:
        d = f"{delta:.1e}" if delta else "-"
        print(f"| {name} | {eps:.3f} | {d} | {noise:.3f} | {acc:.4f} | {wall:.0f} |")


if __name__ == "__main__":
    main()
