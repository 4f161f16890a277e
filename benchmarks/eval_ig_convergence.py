"""Integrated Gradients convergence on the packaged SmolLM2-135M-Instruct from the pad-token
baseline: the relative completeness gap |sum(attr) - (f(x) - f(baseline))| / |f(x) - f(baseline)|
at growing Gauss-Legendre step counts, for a few chat prompts (the explained output is the
log-probability of the greedy next token, as `shoestring evaluate` explains it).

Each step count is a fresh IG run (no doubling), so seconds per row are comparable. Timed:
run it holding the bench lock.

    flock /tmp/shoestring-bench.lock .venv/bin/python benchmarks/eval_ig_convergence.py --steps 16 32 64 128 256
"""

from __future__ import annotations

import argparse
import os
import time

PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Name three primary colours.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    args = ap.parse_args()
    import torch

    from shoestring.evaluate.explain import explain_next_token
    from shoestring.evaluate.lm import format_prompt
    from shoestring.models import load_model, load_tokenizer

    print(f"load average at start: {os.getloadavg()}")
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct", "causal-lm", dtype=torch.float32).eval()
    print(f"torch threads: {torch.get_num_threads()}")
    print("| prompt | prompt tokens | steps | f(x) | f(baseline) | sum(attr) | relative gap | within tol | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in PROMPTS[: args.prompts]:
        text = format_prompt(tok, p)
        n_tok = len(tok(text, add_special_tokens=False)["input_ids"])
        for n in args.steps:
            t0 = time.perf_counter()
            r = explain_next_token(model, tok, text, steps=n, max_steps=n, tolerance=args.tolerance)
            sec = time.perf_counter() - t0
            print(f"| {p} | {n_tok} | {n} | {r['f_x']:.4f} | {r['f_baseline']:.4f} | {sum(r['scores']):.4f} | "
                  f"{r['relative_gap']:.4f} | {r['within_tolerance']} | {sec:.1f} |", flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
