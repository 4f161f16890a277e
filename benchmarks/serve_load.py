"""Load test of `shoestring serve` on loopback: batching vs one-at-a-time at 16/64/256 clients.

Starts the real server (``python -m shoestring.cli serve MODEL``) twice - continuous batching
(``--max-batch-size 16``) and one request at a time (``--max-batch-size 1``), same bounded
queue - and drives it with N concurrent asyncio clients. Each client sends
``--requests-per-client`` chat completions back to back (greedy, ``--max-tokens`` tokens) and
records the first answer it gets: no retries, so 429/503 shedding shows in the status mix.
A level stops sending new requests after ``--level-timeout-s`` seconds.

Reports per mode and level: answers by status, completed requests/s, generated tokens/s,
p50/p99 latency of the 200 answers, the server's peak RSS, and whether it stayed healthy.

    .venv/bin/python benchmarks/serve_load.py                      # SmolLM2-135M, ~5-10 min on 2 cores
    .venv/bin/python benchmarks/serve_load.py --levels 16 --requests-per-client 1   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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


@dataclass
class LevelResult:
    mode: str
    clients: int
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies_s: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0
    peak_rss_bytes: int = 0
    healthy: bool = False


def start_server(model: str, batch: int, queue: int, timeout_s: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "shoestring.cli", "serve", model, "--port", "0", "--model-name", "bench",
           "--max-batch-size", str(batch), "--max-queue", str(queue), "--request-timeout-s", str(timeout_s)]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        m = re.search(r"on (http://[\d.]+:\d+)/v1", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
            return proc, m.group(1)
    raise SystemExit(f"server failed to start (exit {proc.wait()})")


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
            body = {
                "model": "bench",
                "messages": [{"role": "user", "content": f"Question {i}-{j}: what is {i} plus {j}?"}],
                "max_tokens": args.max_tokens,
                "temperature": 0,
            }
            t0 = time.perf_counter()
            try:
                r = await http.post(f"{url}/v1/chat/completions", json=body)
            except httpx.HTTPError as err:
                res.statuses[type(err).__name__] += 1
                continue
            res.statuses[str(r.status_code)] += 1
            if r.status_code == 200:
                res.latencies_s.append(time.perf_counter() - t0)
                res.tokens += r.json()["usage"]["completion_tokens"]

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


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def table(results: list[LevelResult]) -> str:
    head = ("| mode | clients | requests | 200 | 429 | 503 | other | completed req/s | generated tok/s "
            "| p50 latency (s) | p99 latency (s) | server peak RSS (MiB) | healthy after |")  # fmt: skip
    lines = [head, "|" + "---|" * 13]
    for r in results:
        total = sum(r.statuses.values())
        other = total - sum(r.statuses[k] for k in ("200", "429", "503"))
        ok = r.statuses["200"]
        lines.append(
            f"| {r.mode} | {r.clients} | {total} | {ok} | {r.statuses['429']} | {r.statuses['503']} | {other} "
            f"| {ok / r.wall_s:.2f} | {r.tokens / r.wall_s:.1f} | {_pct(r.latencies_s, 50):.2f} "
            f"| {_pct(r.latencies_s, 99):.2f} | {r.peak_rss_bytes / 2**20:.0f} | {'yes' if r.healthy else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--levels", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16, help="--max-batch-size of the batching server")
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--request-timeout-s", type=float, default=60.0)
    ap.add_argument("--level-timeout-s", type=float, default=90.0, help="stop sending new requests after this")
    ap.add_argument("--modes", nargs="+", default=["batching", "one-at-a-time"])
    args = ap.parse_args()

    results: list[LevelResult] = []
    for mode in args.modes:
        batch = args.batch_size if mode == "batching" else 1
        proc, url = start_server(args.model, batch, args.max_queue, args.request_timeout_s)
        try:
            # Warm-up: the first forward pass allocates and compiles kernels; keep it out of the figures.
            httpx.post(f"{url}/v1/chat/completions", timeout=120,
                       json={"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})  # fmt: skip
            for clients in args.levels:
                r = asyncio.run(run_level(url, mode, clients, args, proc.pid))
                results.append(r)
                print(f"{mode} {clients} clients: {dict(r.statuses)} in {r.wall_s:.1f}s", file=sys.stderr, flush=True)
        finally:
            proc.terminate()
            proc.wait(120)
    print(table(results))


if __name__ == "__main__":
    main()
