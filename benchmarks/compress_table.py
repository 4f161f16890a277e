"""Compression table: size, latency, quality and KL per method, for SmolLM2-135M and MiniLM.

Every row runs the same code as ``shoestring compress``: compress a copy of the parent,
save it (safetensors + JSON), reload it from disk, and measure it against the parent with
:func:`shoestring.compress.regression.measure_pair` (same held-out blocks, interleaved
latency runs, same thread count).

    .venv/bin/python benchmarks/compress_table.py --model smollm2 --threads 2
    .venv/bin/python benchmarks/compress_table.py --model minilm --threads 2

Held-out text: Python's reference docs (every 5th ``pydoc_data`` topic); calibration and
distillation text: the other topics. Bounded: ``--eval-blocks`` x ``--eval-len`` tokens,
``--distill-steps`` steps. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

METHODS = {
    "smollm2": ["int8-dynamic", "int8-weight", "int4-weight", "prune", "distill"],
    "minilm": ["int8-dynamic", "int8-weight", "int4-weight", "prune"],
}


def _row(method: str, rep: dict[str, Any], seconds: float, note: str) -> str:
    q = (
        f"{rep['parent_ppl']:.2f} → {rep['child_ppl']:.2f} ({rep['ppl_increase_pct']:+.1f}%)"
        if "child_ppl" in rep
        else f"cos {rep['cosine_to_parent']:.4f}"
    )
    kl = f"{rep['kl_mean']:.4f}" if "kl_mean" in rep else "n/a"
    tps = (
        f"{rep['parent_tokens_per_s']:.1f} → {rep['child_tokens_per_s']:.1f}" if "child_tokens_per_s" in rep else "n/a"
    )
    return (
        f"| {method} | {rep['parent_weight_bytes'] / 1e6:.0f} → {rep['child_weight_bytes'] / 1e6:.0f} "
        f"| {rep['child_file_bytes'] / 1e6:.0f} | {rep['parent_latency_s'] * 1e3:.0f} → {rep['child_latency_s'] * 1e3:.0f} "
        f"| {rep['speedup']:.2f}x | {tps} | {q} | {kl} | {seconds:.0f} | {note} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(METHODS), default="smollm2")
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-blocks", type=int, default=8)
    ap.add_argument("--eval-len", type=int, default=256)
    ap.add_argument("--latency-runs", type=int, default=5)
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--distill-steps", type=int, default=40)
    args = ap.parse_args()

    import torch

    from shoestring.compress import regression as rg
    from shoestring.compress.config import CompressConfig
    from shoestring.compress.modelio import load_compressed, save_model_folder
    from shoestring.compress.quant import quantize_model
    from shoestring.compress.transforms import shrink_and_distill
    from shoestring.models import load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec, task = (
        ("smollm2-135m-instruct", "causal-lm") if args.model == "smollm2" else ("all-minilm-l6-v2", "embedding")
    )
    parent = load_model(spec, task).eval()  # type: ignore[arg-type]
    tok = load_tokenizer(spec)
    eval_len = min(args.eval_len, 256 if task == "embedding" else args.eval_len)
    blocks = rg.encode_blocks(tok, rg.builtin_texts("heldout"), eval_len, args.eval_blocks)
    train_blocks = rg.encode_blocks(tok, rg.builtin_texts("train"), 128, 256)
    rows = []
    for method in args.methods or METHODS[args.model]:
        t0 = time.perf_counter()
        note = ""
        qspec = None
        if method.startswith("int"):
            child = copy.deepcopy(parent)
            qspec = quantize_model(child, method)
        else:
            if method == "prune":
                if task == "causal-lm":
                    cfg = CompressConfig(
                        model=spec, method="prune", mlp_keep_ratio=0.75, distill_steps=args.distill_steps
                    )
                    note = f"MLP 1536→1152, {args.distill_steps} recovery distillation steps"
                else:
                    cfg = CompressConfig(model=spec, method="prune", drop_layers=2, mlp_keep_ratio=0.5)
                    note = "6→4 layers, MLP 1536→768, no recovery"
            else:
                cfg = CompressConfig(model=spec, method="distill", student_layers=20, distill_steps=args.distill_steps)
                note = f"30→20 layers, {args.distill_steps} distillation steps"
            work = Path(tempfile.mkdtemp(prefix="ss-distill-"))
            child, _ = shrink_and_distill(parent, cfg, task, train_blocks, work, lambda s: None)
        folder = Path(tempfile.mkdtemp(prefix="ss-compress-")) / "model"
        save_model_folder(child, tok, folder, task, qspec)
        del child
        child = load_compressed(folder, task)
        rep = rg.measure_pair(
            parent, child, blocks, task=task, latency_runs=args.latency_runs, gen_tokens=args.gen_tokens
        )
        rep["child_file_bytes"] = rg.folder_bytes(folder)
        if qspec is not None:
            from shoestring.models.quantized import quantized_modules

            note = ", ".join(sorted({m.backend for m in quantized_modules(child).values()}))
        rows.append(_row(method, rep, time.perf_counter() - t0, note))
        print(rows[-1], flush=True)  # a row per method as it finishes, so a killed run keeps its rows
        del child
    print(
        f"\n{spec}: {blocks.shape[0]}x{blocks.shape[1]} held-out tokens, {args.threads} threads, "
        f"latency = median of {args.latency_runs} interleaved runs over {min(128, blocks.shape[1])} tokens\n"
    )
    print(
        "| method | weights MB (parent → child) | file MB | forward ms (parent → child) | speedup "
        "| gen tok/s (parent → child) | quality | KL nats/tok | build+measure s | notes |"
    )
    print("|---|---|---:|---|---:|---|---|---:|---:|---|")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
