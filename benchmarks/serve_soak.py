"""Soak `shoestring serve`: N streaming clients for a fixed time; is the server still the same at the end?

Starts the real server (``serve_load.mode_command``/``start_server``), warms it up, then keeps
``--clients`` clients each sending streamed chat completions back to back for ``--minutes``.
Every ``--window-s`` seconds it samples the server process: resident memory, open file
descriptors, threads, and the window's answers by status with p50/p99 time to first token and
latency. Reports per window, then the RSS slope over the second half of the run (least squares,
MiB per minute: growth after the warm-up is what a leak looks like), the first and last window's
fds and threads, and whether every answer was a 200 / 429 / 503.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import _pct, mode_command, start_server, stream_chat


def _slope_mib_per_min(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes) points, in MiB per minute."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] / 2**20 for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


async def soak(url: str, pid: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    proc = psutil.Process(pid)
    stop_at = time.monotonic() + 60 * args.minutes
    windows: list[dict[str, Any]] = []
    current: dict[str, Any] = {"statuses": collections.Counter(), "ttft": [], "latency": [], "tokens": 0}

    async def client(i: int, http: httpx.AsyncClient) -> None:
        j = 0
        while time.monotonic() < stop_at:
            msgs = [{"role": "user", "content": f"Question {i}-{j}: what is {i} plus {j}?"}]
            r = await stream_chat(http, url, msgs, args.max_tokens)
            w = current
            w["statuses"][r["status"]] += 1
            if r["status"] == "200":
                w["latency"].append(r["latency"])
                w["tokens"] += r["tokens"]
                if r["ttft"] is not None:
                    w["ttft"].append(r["ttft"])
            elif r["status"] == "429":
                await asyncio.sleep(0.5)  # a client that honours back-pressure
            j += 1

    async def sampler() -> None:
        nonlocal current
        t0 = time.monotonic()
        while time.monotonic() < stop_at:
            await asyncio.sleep(args.window_s)
            w, current = current, {"statuses": collections.Counter(), "ttft": [], "latency": [], "tokens": 0}
            with proc.oneshot():
                w.update(t=round(time.monotonic() - t0, 1), rss=proc.memory_info().rss, fds=proc.num_fds(),
                         threads=proc.num_threads())  # fmt: skip
            windows.append(w)
            print(f"t={w['t']:.0f}s rss={w['rss'] / 2**20:.0f} MiB fds={w['fds']} threads={w['threads']} "
                  f"{dict(w['statuses'])}", file=sys.stderr, flush=True)  # fmt: skip

    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients + 8)
    async with httpx.AsyncClient(timeout=args.request_timeout_s + 30, limits=limits) as http:
        await asyncio.gather(sampler(), *(client(i, http) for i in range(args.clients)))
    return windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--mode", default="torch", choices=["torch", "llama.cpp", "auto"])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--window-s", type=float, default=30.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--request-timeout-s", type=float, default=60.0)
    ap.add_argument("--json", type=Path, help="also write the windows here")
    args = ap.parse_args()
    args.baseline_src = None

    cmd, env = mode_command(args.mode, args.model, args)
    proc, url, log = start_server(cmd, env)
    print(f"{args.mode}: {' | '.join(x for x in log if x.startswith('engine'))}", file=sys.stderr, flush=True)
    try:
        httpx.post(f"{url}/v1/chat/completions", timeout=120,
                   json={"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})  # fmt: skip
        windows = asyncio.run(soak(url, proc.pid, args))
        healthy = httpx.get(f"{url}/health", timeout=30).status_code == 200
    finally:
        proc.terminate()
        proc.wait(120)

    print("| t (s) | 200 | 429 | 503 | other | generated tok/s | p50 TTFT (s) | p99 TTFT (s) | p99 latency (s) "
          "| RSS (MiB) | fds | threads |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in windows:
        st = w["statuses"]
        other = sum(v for k, v in st.items() if k not in ("200", "429", "503"))
        print(f"| {w['t']:.0f} | {st['200']} | {st['429']} | {st['503']} | {other} | {w['tokens'] / args.window_s:.1f} "
              f"| {_pct(w['ttft'], 50):.2f} | {_pct(w['ttft'], 99):.2f} | {_pct(w['latency'], 99):.2f} "
              f"| {w['rss'] / 2**20:.0f} | {w['fds']} | {w['threads']} |")  # fmt: skip
    half = [(w["t"], w["rss"]) for w in windows[len(windows) // 2:]]
    total = collections.Counter()
    for w in windows:
        total.update(w["statuses"])
    bad = {k: v for k, v in total.items() if k not in ("200", "429", "503")}
    print(f"\nRSS slope over the second half: {_slope_mib_per_min(half):+.2f} MiB/min; "
          f"fds {windows[0]['fds']} -> {windows[-1]['fds']}, threads {windows[0]['threads']} -> "
          f"{windows[-1]['threads']}; answers {dict(total)}; other than 200/429/503: {bad or 'none'}; "
          f"healthy after: {'yes' if healthy else 'NO'}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([{**w, "statuses": dict(w["statuses"])} for w in windows]))


if __name__ == "__main__":
    main()
