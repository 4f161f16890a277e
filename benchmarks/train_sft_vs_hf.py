"""LoRA SFT of SmolLM2-135M-Instruct on CPU: Shoestring vs a plain Hugging Face Trainer + peft script.

Same records, same token ids and assistant-only labels (both sides tokenise with
``shoestring.train.data.chat_example``), same LoRA shape (r=16, alpha 32, dropout 0.05, all
linear layers), optimizer, peak learning rate and schedule, one epoch, about the same tokens
per optimizer step (HF: 4 chats; Shoestring: one 640-token packed row, ~4 chats). What differs
is the training mechanics:

* hf: ``Trainer`` + ``DataCollatorForSeq2Seq`` (its default: pad each batch to its longest
  row), logits for every position, stock peft/transformers kernels; ``hf-bf16`` adds
  ``bf16=True`` (CPU autocast);
* shoestring: ``shoestring train`` with its defaults (packing with per-document attention,
  the head only at labelled positions, vectorised LoRA dropout masks, frozen weights cast
  once, bf16 autocast on CPUs with native bf16); ``-fp32``/``-bf16`` pin the precision,
  ``-stock`` turns the fast paths off, ``-bounded`` bounds glibc's heap.

Each variant runs in its own process (so peak RSS is its own). Reported: real (non-pad)
tokens per second of training, peak RSS above the pre-load baseline, and the held-out loss
of the trained adapter measured by one shared function. Usage::

    python benchmarks/train_sft_vs_hf.py --examples 96
    python benchmarks/train_sft_vs_hf.py --variants shoestring-fp32,shoestring-fp32-padding,shoestring-fp32-ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"


def load_chats(n_train: int, n_val: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Support-ticket Q&A pairs from the quickstart example data, as chats."""
    # The example file is deliberately messy (a few cp1252 lines, broken records): keep what parses.
    raw = (ROOT / "examples/quickstart/tickets.jsonl").read_bytes().decode("utf-8", errors="replace")
    chats = []
    for line in raw.splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(r, dict):
            continue
        q, a = r.get("question"), r.get("answer")
        if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
            chats.append({"id": str(r.get("ticket_id")), "text": a,
                          "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})  # fmt: skip
    return chats[:n_train], chats[n_train : n_train + n_val]


def tokenised(chats: list[dict[str, Any]], seq_len: int) -> list[dict[str, list[int]]]:
    from shoestring.models import load_tokenizer
    from shoestring.train.data import chat_example

    tok = load_tokenizer(MODEL)
    out = [chat_example(tok, c["messages"], seq_len) for c in chats]
    return [e for e in out if e is not None]


def run_hf(args: argparse.Namespace, out: Path, variant: str) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from shoestring.core.metering import PeakMemoryMeter
    from shoestring.models import load_model, load_tokenizer

    torch.manual_seed(0)
    train, _ = load_chats(args.examples, args.val)
    examples = [{**e, "attention_mask": [1] * len(e["input_ids"])} for e in tokenised(train, args.max_len)]
    real_tokens = sum(len(e["input_ids"]) for e in examples)
    with PeakMemoryMeter("cpu") as meter:
        tok = load_tokenizer(MODEL)
        model = load_model(MODEL, "causal-lm")
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))  # fmt: skip
        targs = TrainingArguments(
            output_dir=str(out / "hf"), per_device_train_batch_size=args.hf_batch, num_train_epochs=1,
            bf16=variant == "hf-bf16",
            learning_rate=2e-4, warmup_steps=0.05, lr_scheduler_type="cosine", weight_decay=0.0,
            logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
            disable_tqdm=True, dataloader_num_workers=0,
        )  # fmt: skip
        trainer = Trainer(model=model, args=targs, train_dataset=examples,
                          data_collator=DataCollatorForSeq2Seq(tok, padding=True))  # fmt: skip
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
    model.save_pretrained(str(out / f"{variant}-adapter"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"variant": variant, "real_tokens": real_tokens, "train_seconds": seconds, "steps": result.global_step,
            "peak_rss_bytes": meter.peak_bytes, "train_loss_last": losses[-1] if losses else None,
            "adapter": str(out / f"{variant}-adapter")}  # fmt: skip


def run_shoestring(args: argparse.Namespace, out: Path, variant: str) -> dict[str, Any]:
    from rich.console import Console

    from shoestring.core.artifact import Artifact
    from shoestring.core.registry import get_stage
    from shoestring.core.workspace import Workspace

    train, _ = load_chats(args.examples, args.val)
    ds = out / "dataset"
    ds.mkdir(parents=True, exist_ok=True)
    (ds / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (ds / "manifest.json").write_text(json.dumps({"kind": "dataset", "hash": f"bench-{len(train)}", "stats": {}}))
    stage = get_stage("train")
    cfg = stage.config.model_validate({
        "dataset": str(ds), "model": MODEL, "task": "sft", "method": "lora", "seq_len": args.seq_len,
        "micro_batch_size": args.batch, "grad_accum": 1, "epochs": 1, "lr": 2e-4, "val_max_examples": 0,
        "checkpoint_every": 10_000, "progress": False, "tracking": {"tensorboard": False},
        "packing": "padding" not in variant,
        "precision": "bf16" if "bf16" in variant else ("fp32" if "fp32" in variant else "auto"),
        "activation_checkpointing": "ckpt" in variant,
        "bound_allocator": True if "bounded" in variant else None,  # None: auto (unbounded without a plan)
        "fast_paths": "stock" not in variant,
    })  # fmt: skip
    ws = Workspace(out / f"ws-{variant}", console=Console(stderr=True, quiet=True))
    res = ws.run(stage, cfg, {"dataset": Artifact.load(ds)}, force=True)
    st = res.artifact.stats
    return {"variant": variant, "real_tokens": st["tokens"], "train_seconds": st["train_seconds"],
            "steps": st["steps"], "peak_rss_bytes": st["peak_memory_bytes"], "train_loss_last": st["train_loss_last"],
            "adapter": str(res.artifact.path / "adapter")}  # fmt: skip


def heldout_loss(adapter: str, args: argparse.Namespace) -> float:
    """Token-weighted assistant-token loss of base + adapter on the held-out chats (one shared function)."""
    import torch
    from peft import PeftModel

    from shoestring.models import load_model
    from shoestring.train.data import collate, pad_rows
    from shoestring.train.modeling import LossModule

    _, val = load_chats(args.examples, args.val)
    rows = pad_rows(tokenised(val, args.seq_len))
    model = PeftModel.from_pretrained(load_model(MODEL, "causal-lm"), adapter).eval()
    lossmod = LossModule.create(model, "sft")
    total = count = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), 4):
            b = collate(rows[i : i + 4], 2, packed=False)
            s, n = lossmod(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
            total, count = total + float(s), count + float(n)
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=24, help="training chats")
    ap.add_argument("--val", type=int, default=16, help="held-out chats for the final loss")
    ap.add_argument("--seq-len", type=int, default=640, help="Shoestring's packed row length (tokens)")
    ap.add_argument("--batch", type=int, default=1, help="Shoestring's micro-batch size (packed rows)")
    ap.add_argument("--hf-batch", type=int, default=4, help="HF Trainer's per-device batch size (chats)")
    ap.add_argument(
        "--max-len", type=int, default=512, help="chats longer than this (tokens) are truncated, both sides"
    )
    ap.add_argument("--variants", default="hf,hf-bf16,shoestring,shoestring-fp32,shoestring-stock-fp32",
                    help="hf[-bf16]; shoestring[-fp32|-bf16][-stock][-bounded][-padding][-ckpt]")  # fmt: skip
    ap.add_argument("--out", default="/tmp/shoestring-bench-train")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.one:  # child process: one variant, JSON on stdout
        res = run_hf(args, out, args.one) if args.one.startswith("hf") else run_shoestring(args, out, args.one)
        res["heldout_loss"] = heldout_loss(res["adapter"], args)
        print("RESULT " + json.dumps(res))
        return
    results = []
    for v in args.variants.split(","):
        cmd = [sys.executable, __file__, "--one", v, "--examples", str(args.examples), "--val", str(args.val),
               "--seq-len", str(args.seq_len), "--batch", str(args.batch), "--hf-batch", str(args.hf_batch),
               "--max-len", str(args.max_len), "--out", str(out)]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"{v} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results.append(json.loads(line[0][7:]))
        print(f"# done {v}: {results[-1]}", file=sys.stderr, flush=True)
    base = next((r for r in results if r["variant"] == "hf"), results[0] if results else None)
    print(
        f"\n{args.examples} chats; HF: batch {args.hf_batch} chats padded to the longest; Shoestring: "
        f"micro-batch {args.batch} x {args.seq_len}-token packed rows; LoRA r16 all-linear\n"
    )
    print("| variant | steps | real tokens | train s | real tokens/s | speed-up | peak RSS (MiB) | held-out loss |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        tps = r["real_tokens"] / r["train_seconds"]
        base_tps = base["real_tokens"] / base["train_seconds"] if base else tps
        print(f"| {r['variant']} | {r['steps']} | {r['real_tokens']} | {r['train_seconds']:.1f} | {tps:.1f} | "
              f"{tps / base_tps:.2f}× | {r['peak_rss_bytes'] / 2**20:.0f} | {r['heldout_loss']:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
