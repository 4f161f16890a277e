"""Load test of `shoestring serve` on loopback: engines and batching at 16/64/256 clients, and the prefix cache.

Starts the real server (``python -m shoestring.cli serve MODEL``) once per ``--modes`` entry,
same bounded queue, and drives it with N concurrent asyncio clients. Each client sends
``--requests-per-client`` streamed chat completions back to back (greedy, ``--max-tokens``
tokens) and records the first answer it gets: no retries, so 429/503 shedding shows in the
status mix. A level stops sending new requests after ``--level-timeout-s`` seconds.

Modes: ``torch`` / ``llama.cpp`` / ``auto`` (``--engine``, continuous batching up to
``--batch-size`` sequences), ``one-at-a-time`` (``--engine torch --max-batch-size 1``), and
``baseline``: the server code of ``--baseline-src`` (a ``src`` folder of an older checkout,
``git worktree add /tmp/old COMMIT``) with ``--max-batch-size --batch-size``, to compare
with the same load in the same run. ``in-process``: no HTTP at all: the torch engine and the
server's own scheduler built in this process by the server's loader (same config, threads,
queue bound and chat template), the same clients and requests submitted straight to the
scheduler; beside ``torch`` it shows what HTTP, streaming and the load generator cost.

Reports per mode and level: answers by status (200 = a stream that ended with ``[DONE]``
and no error chunk; ``200+error`` = an in-band error, e.g. a timeout after the stream
began), completed requests/s, generated tokens/s, p50/p99 time to first token and latency
of the completed answers, the server's peak RSS, and whether it stayed healthy. Then, per
mode (``--prefix-requests``), one client's time to first token with a ~400-token system
prompt shared by every request vs a system prompt that differs from the first token on.

    .venv/bin/python benchmarks/serve_load.py --modes torch llama.cpp one-at-a-time
    .venv/bin/python benchmarks/serve_load.py --levels 16 --requests-per-client 1   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

SYSTEM = ("You are the support assistant of a small company that sells refurbished laptops. " * 4
          + "Answer in two sentences. Be polite, be precise, never invent a price, and say when "
            "you do not know. Refer billing questions to billing@example.com. " * 6)  # fmt: skip


@dataclass
class LevelResult:
    mode: str
    clients: int
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0
    peak_rss_bytes: int = 0
    healthy: bool = False


def mode_command(mode: str, model: str, args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    base = [sys.executable, "-m", "shoestring.cli", "serve", model, "--port", "0", "--model-name", "bench",
            "--max-queue", str(args.max_queue), "--request-timeout-s", str(args.request_timeout_s)]  # fmt: skip
    env = dict(os.environ)
    if args.threads:
        base += ["--threads", str(args.threads)]
    if mode == "baseline":
        if not args.baseline_src:
            raise SystemExit("mode 'baseline' needs --baseline-src (the src folder of the older checkout)")
        env["PYTHONPATH"] = args.baseline_src
        return [*base, "--max-batch-size", str(args.batch_size)], env
    if mode == "one-at-a-time":
        return [*base, "--engine", "torch", "--max-batch-size", "1"], env
    return [*base, "--engine", mode, "--max-batch-size", str(args.batch_size)], env


def start_server(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    assert proc.stderr is not None
    log: list[str] = []
    for line in proc.stderr:
        log.append(line.rstrip())
        m = re.search(r"on (http://[\d.]+:\d+)/v1", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
            return proc, m.group(1), log
    raise SystemExit(f"server failed to start (exit {proc.wait()}):\n" + "\n".join(log[-5:]))


class RssSampler:
    """Polls the server's resident memory every 50 ms and keeps the peak (bytes)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


async def stream_chat(
    http: httpx.AsyncClient, url: str, messages: list[dict[str, str]], max_tokens: int
) -> dict[str, Any]:
    """One streamed chat completion: status, time to first token, latency, completion tokens."""
    body = {"model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    t0 = time.perf_counter()
    out: dict[str, Any] = {"status": "", "ttft": None, "latency": None, "tokens": 0}
    try:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            out["status"] = str(r.status_code)
            if r.status_code != 200:
                await r.aread()
                return out
            done = False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    out["status"] = "200+error"
                    continue
                if chunk.get("usage"):
                    out["tokens"] = int(chunk["usage"]["completion_tokens"])
                if out["ttft"] is None and any(
                    (c.get("delta") or {}).get("content") for c in chunk.get("choices") or []
                ):
                    out["ttft"] = time.perf_counter() - t0
            if not done and out["status"] == "200":
                out["status"] = "200+cut"
    except httpx.HTTPError as err:
        out["status"] = type(err).__name__
        return out
    out["latency"] = time.perf_counter() - t0
    return out


async def run_level(url: str, mode: str, clients: int, args: argparse.Namespace, pid: int) -> LevelResult:
    res = LevelResult(mode, clients)
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    stop_at = time.monotonic() + args.level_timeout_s
    start = asyncio.Event()

    async def client(i: int, http: httpx.AsyncClient) -> None:
        await start.wait()
        for j in range(args.requests_per_client):
            if time.monotonic() > stop_at:
                return
            msgs = [{"role": "user", "content": f"Question {i}-{j}: what is {i} plus {j}?"}]
            r = await stream_chat(http, url, msgs, args.max_tokens)
            res.statuses[r["status"]] += 1
            if r["status"] == "200":
                res.latencies_s.append(r["latency"])
                res.tokens += r["tokens"]
                if r["ttft"] is not None:
                    res.ttft_s.append(r["ttft"])

    with RssSampler(pid) as rss:
        async with httpx.AsyncClient(timeout=args.request_timeout_s + 30, limits=limits) as http:
            tasks = [asyncio.create_task(client(i, http)) for i in range(clients)]
            t0 = time.perf_counter()
            start.set()
            await asyncio.gather(*tasks)
            res.wall_s = time.perf_counter() - t0
            try:
                res.healthy = (await http.get(f"{url}/health")).status_code == 200
            except httpx.HTTPError:
                res.healthy = False
    res.peak_rss_bytes = rss.peak
    return res


def in_process_scheduler(model: str, args: argparse.Namespace) -> tuple[Any, Any]:
    """(the loaded model, the server's GenerationScheduler on it) as ``shoestring serve --engine torch`` builds them."""
    from shoestring.serve.backends import load_for_serving
    from shoestring.serve.config import ServeConfig
    from shoestring.serve.generation import GenerationScheduler

    cfg = ServeConfig(model=model, engine="torch", max_batch_size=args.batch_size, max_queue=args.max_queue,
                      threads=args.threads)  # fmt: skip
    loaded = load_for_serving(cfg)
    sched = GenerationScheduler(loaded.engine, eos_ids=loaded.eos_ids, max_batch_size=cfg.max_batch_size,
                                max_queue=cfg.max_queue, batch_timeout_s=cfg.batch_timeout_ms / 1000)  # fmt: skip
    sched.start()
    return loaded, sched


async def run_level_in_process(loaded: Any, sched: Any, clients: int, args: argparse.Namespace) -> LevelResult:
    """``run_level``'s clients and requests, submitted to the scheduler directly (no HTTP, no JSON)."""
    from shoestring.serve.generation import GenRequest, QueueFull

    res = LevelResult("in-process", clients)
    stop_at = time.monotonic() + args.level_timeout_s
    start = asyncio.Event()

    async def client(i: int) -> None:
        await start.wait()
        for j in range(args.requests_per_client):
            if time.monotonic() > stop_at:
                return
            msgs = [{"role": "user", "content": f"Question {i}-{j}: what is {i} plus {j}?"}]
            ids = loaded.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                       return_dict=True)["input_ids"]  # fmt: skip
            t0 = time.perf_counter()
            req = GenRequest(prompt_ids=list(ids), max_new_tokens=args.max_tokens, loop=asyncio.get_running_loop(),
                             deadline=time.monotonic() + args.request_timeout_s)  # fmt: skip
            try:
                sched.submit(req)
            except QueueFull:
                res.statuses["429"] += 1
                continue
            n, ttft, status = 0, None, "200"
            while True:
                kind, value = await req.events.get()
                if kind == "token":
                    n += 1
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                elif kind == "done":
                    break
                else:  # the server answers a timeout before the first token 503, after it an in-band error
                    status = "503" if value == "timeout" and n == 0 else "200+error"
                    break
            res.statuses[status] += 1
            if status == "200":
                res.latencies_s.append(time.perf_counter() - t0)
                res.tokens += n
                if ttft is not None:
                    res.ttft_s.append(ttft)

    with RssSampler(os.getpid()) as rss:
        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        t0 = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        res.wall_s = time.perf_counter() - t0
    res.healthy = sched.fatal_error is None
    res.peak_rss_bytes = rss.peak
    return res


async def prefix_ttft(url: str, shared: bool, n: int) -> list[float]:
    """Time to first token of ``n`` sequential requests with a shared or a per-request system prompt."""
    out = []
    async with httpx.AsyncClient(timeout=120) as http:
        for i in range(n + 1):  # the first one fills the cache (shared) and is left out
            system = SYSTEM if shared else f"Ticket {i * 7919}. " + SYSTEM
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": f"Is laptop {i} in stock?"}]
            r = await stream_chat(http, url, msgs, 4)
            if i and r["ttft"] is not None:
                out.append(r["ttft"])
    return out


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def table(results: list[LevelResult]) -> str:
    head = ("| mode | clients | requests | 200 | 429 | 503 | other | completed req/s | generated tok/s "
            "| p50 TTFT (s) | p99 TTFT (s) | p50 latency (s) | p99 latency (s) | server peak RSS (MiB) | healthy after |")  # fmt: skip
    lines = [head, "|" + "---|" * 15]
    for r in results:
        total = sum(r.statuses.values())
        other = {k: v for k, v in r.statuses.items() if k not in ("200", "429", "503")}
        ok = r.statuses["200"]
        lines.append(
            f"| {r.mode} | {r.clients} | {total} | {ok} | {r.statuses['429']} | {r.statuses['503']} "
            f"| {sum(other.values())}{' ' + str(other) if other else ''} | {ok / r.wall_s:.2f} | {r.tokens / r.wall_s:.1f} "
            f"| {_pct(r.ttft_s, 50):.2f} | {_pct(r.ttft_s, 99):.2f} | {_pct(r.latencies_s, 50):.2f} "
            f"| {_pct(r.latencies_s, 99):.2f} | {r.peak_rss_bytes / 2**20:.0f} | {'yes' if r.healthy else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--levels", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16, help="--max-batch-size of the batching servers")
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="--threads of the server (default: its own)")
    ap.add_argument("--request-timeout-s", type=float, default=60.0)
    ap.add_argument("--level-timeout-s", type=float, default=90.0, help="stop sending new requests after this")
    ap.add_argument("--modes", nargs="+", default=["torch", "llama.cpp", "one-at-a-time"],
                    choices=["torch", "llama.cpp", "auto", "one-at-a-time", "baseline", "in-process"])  # fmt: skip
    ap.add_argument("--baseline-src", default=None, help="src folder of the older checkout (mode 'baseline')")
    ap.add_argument("--prefix-requests", type=int, default=8, help="requests per prefix-cache run (0: skip)")
    args = ap.parse_args()

    results: list[LevelResult] = []
    prefix: list[tuple[str, list[float], list[float]]] = []
    for mode in args.modes:
        if mode == "in-process":
            loaded, sched = in_process_scheduler(args.model, args)
            try:
                # Warm-up, as for the servers: one 2-token request through the same path.
                asyncio.run(run_level_in_process(loaded, sched, 1, argparse.Namespace(**{**vars(args),
                            "requests_per_client": 1, "max_tokens": 2})))  # fmt: skip
                for clients in args.levels:
                    r = asyncio.run(run_level_in_process(loaded, sched, clients, args))
                    results.append(r)
                    print(
                        f"{mode} {clients} clients: {dict(r.statuses)} in {r.wall_s:.1f}s", file=sys.stderr, flush=True
                    )
            finally:
                sched.shutdown()
            continue
        cmd, env = mode_command(mode, args.model, args)
        proc, url, log = start_server(cmd, env)
        print(f"{mode}: {' | '.join(x for x in log if x.startswith('engine'))}", file=sys.stderr, flush=True)
        try:
            # Warm-up: the first forward pass allocates and compiles kernels; keep it out of the figures.
            httpx.post(f"{url}/v1/chat/completions", timeout=120,
                       json={"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})  # fmt: skip
            for clients in args.levels:
                r = asyncio.run(run_level(url, mode, clients, args, proc.pid))
                results.append(r)
                print(f"{mode} {clients} clients: {dict(r.statuses)} in {r.wall_s:.1f}s", file=sys.stderr, flush=True)
            if args.prefix_requests:
                shared = asyncio.run(prefix_ttft(url, True, args.prefix_requests))
                unique = asyncio.run(prefix_ttft(url, False, args.prefix_requests))
                prefix.append((mode, shared, unique))
        finally:
            proc.terminate()
            proc.wait(120)
    print(table(results))
    if prefix:
        print("\n| mode | p50 TTFT, shared system prompt (s) | p50 TTFT, distinct system prompts (s) | ratio |")
        print("|---|---:|---:|---:|")
        for mode, shared, unique in prefix:
            a, b = _pct(shared, 50), _pct(unique, 50)
            print(f"| {mode} | {a:.3f} | {b:.3f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
