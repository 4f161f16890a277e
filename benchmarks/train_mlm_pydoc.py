"""Masked-LM on Python's docs: step profile, held-out MLM loss/accuracy and fill-mask top-5.

Three sub-commands (all CPU, bounded):

* ``profile``  - seconds per optimizer step for all-MiniLM-L6-v2 + MLM head, vocabulary
  projection at every position (the model's own ``logits``) vs only at the masked positions
  (what ``shoestring train`` does), same batch;
* ``eval MODEL`` - held-out MLM loss and top-1 accuracy on the python-docs validation split
  (fixed masking seed, so "before" and "after" see the same masked tokens) and fill-mask top-5
  for a few sentences; MODEL is a masked-LM artifact/folder, or ``init`` for the untrained
  all-MiniLM head as ``shoestring train`` initialises it before step 1.

Usage::

    flock /tmp/shoestring-bench.lock .venv/bin/python benchmarks/train_mlm_pydoc.py profile
    .venv/bin/python benchmarks/train_mlm_pydoc.py eval .shoestring/train-mlm-pydoc/mlm
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

SENTENCES = [
    "The cat sat on the [MASK].",
    "The [MASK] statement leaves the innermost loop.",
    "The [MASK] statement skips to the next iteration of the loop.",
    "A function is defined with the [MASK] keyword.",
    "Exceptions are raised with the [MASK] statement.",
    "The [MASK] of a list is returned by len().",
]


def _batch(tok: Any, n_rows: int, seq_len: int, seed: int) -> dict[str, Any]:
    import torch

    from shoestring.train import data as D

    train, _ = D.python_docs_records()
    ex, _ = D.build_examples(train[:400], tok, task="masked-lm", seq_len=seq_len, text_field="text",
                             messages_field="messages", label_field="label", label_to_id=None)  # fmt: skip
    rows = D.concat_segments(ex, seq_len, tok.cls_token_id)[:n_rows]
    b = D.collate(rows, int(tok.pad_token_id), packed=False)
    D.mask_tokens(b, tok, 0.15, torch.Generator().manual_seed(seed))
    b.pop("real_tokens", None)
    return b


def profile(steps: int, rows: int, seq_len: int) -> None:
    import torch

    from shoestring.models import load_model, load_tokenizer
    from shoestring.train.modeling import LossModule

    tok = load_tokenizer("all-minilm-l6-v2")
    batch = _batch(tok, rows, seq_len, 0)
    res = {}
    for variant in ("all positions (model logits)", "masked positions only (shoestring)"):
        torch.manual_seed(0)
        model = load_model("all-minilm-l6-v2", "masked-lm").train()
        lossmod = LossModule.create(model, "masked-lm")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            if variant.startswith("all"):
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                keep = batch["labels"] != -100
                loss = torch.nn.functional.cross_entropy(
                    out.logits.float().view(-1, out.logits.shape[-1]), batch["labels"].view(-1), reduction="sum"
                ) / keep.sum()
            else:
                s, n = lossmod(**batch)
                loss = s / n
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        res[variant] = statistics.median(times[1:])  # first step warms allocators
    tokens = int(batch["attention_mask"].sum())
    masked = int((batch["labels"] != -100).sum())
    print(f"batch: {rows} rows x {seq_len} tokens ({tokens} real, {masked} masked), {steps} steps each, "
          f"torch threads {torch.get_num_threads()}\n")  # fmt: skip
    print("| vocabulary projection | s/step (median) | real tokens/s | speed-up |")
    print("|---|---|---|---|")
    base = res["all positions (model logits)"]
    for k, v in res.items():
        print(f"| {k} | {v:.3f} | {tokens / v:,.0f} | {base / v:.2f}x |")


def evaluate(spec: str, limit: int, seq_len: int) -> None:
    import torch

    from shoestring.models import load_model, load_tokenizer
    from shoestring.train import data as D
    from shoestring.train.modeling import init_mlm_head

    base = "all-minilm-l6-v2" if spec == "init" else spec
    tok = load_tokenizer(base)
    model = load_model(base, "masked-lm").eval()
    if spec == "init":
        from shoestring.train.loop import _token_counts

        train, _ = D.python_docs_records()
        ex, _ = D.build_examples(train, tok, task="masked-lm", seq_len=seq_len, text_field="text",
                                 messages_field="messages", label_field="label", label_to_id=None)  # fmt: skip
        init_mlm_head(model, _token_counts(D.pad_rows(ex), len(tok), tok.all_special_ids))
    _, val = D.python_docs_records()
    ex, _ = D.build_examples(val[:limit], tok, task="masked-lm", seq_len=seq_len, text_field="text",
                             messages_field="messages", label_field="label", label_to_id=None)  # fmt: skip
    rows = D.concat_segments(ex, seq_len, tok.cls_token_id)
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for i in range(0, len(rows), 16):
            b = D.collate(rows[i : i + 16], int(tok.pad_token_id), packed=False)
            D.mask_tokens(b, tok, 0.15, torch.Generator().manual_seed(1234 + i))
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            keep = b["labels"] != -100
            lg, y = logits[keep].float(), b["labels"][keep]
            total += float(torch.nn.functional.cross_entropy(lg, y, reduction="sum"))
            correct += int((lg.argmax(-1) == y).sum())
            n += int(keep.sum())
    print(f"model: {spec}\nheld-out MLM (python-docs validation, {len(rows)} rows, {n} masked tokens): "
          f"loss {total / n:.3f}, top-1 accuracy {correct / n:.3f}\n")  # fmt: skip
    print("| sentence | top-5 (probability) |")
    print("|---|---|")
    for text in SENTENCES:
        enc = tok(text.replace("[MASK]", tok.mask_token), return_tensors="pt")
        pos = int((enc["input_ids"][0] == tok.mask_token_id).nonzero()[0])
        with torch.no_grad():
            probs = model(**enc).logits[0, pos].float().softmax(-1)
        p, ids = probs.topk(5)
        words = ", ".join(f"`{tok.convert_ids_to_tokens(int(j))}` {float(q):.2f}" for q, j in zip(p, ids, strict=True))
        print(f"| {text} | {words} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("profile")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    e = sub.add_parser("eval")
    e.add_argument("model")
    e.add_argument("--limit", type=int, default=200, help="validation paragraphs")
    e.add_argument("--seq-len", type=int, default=128)
    a = ap.parse_args()
    if a.cmd == "profile":
        profile(a.steps, a.rows, a.seq_len)
    else:
        evaluate(a.model, a.limit, a.seq_len)


if __name__ == "__main__":
    main()
