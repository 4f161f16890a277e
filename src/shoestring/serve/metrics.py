"""Prometheus metrics of one server, in a registry of its own (several apps per process in tests)."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServerMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """Counters, gauges and histograms the server exports on ``/metrics``.

    Also the ``observer`` the model threads report to (``on_batch``, ``on_step``,
    ``on_first_token``, ``on_model_error``); tokens/s is a gauge over a sliding window of recent steps.
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "shoestring_requests", "HTTP requests answered, by endpoint and status code.", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "shoestring_request_latency_seconds",
            "Time from request arrival to the last byte of the answer (seconds).",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("shoestring_queue_depth", "Requests admitted and waiting for the model.", registry=r)
        self.running = Gauge("shoestring_running_requests", "Requests in the model's running batch.", registry=r)
        self.ttft = Histogram(
            "shoestring_time_to_first_token_seconds",
            "Time from admission to the first generated token (seconds).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "shoestring_batch_size", "Requests per model call (prefill or task batch).", buckets=_BATCH_BUCKETS, registry=r
        )
        self.step_batch = Histogram(
            "shoestring_decode_batch_size", "Sequences per decode step.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.generated_tokens = Counter(
            "shoestring_generated_tokens", "Tokens generated, all requests (tokens).", registry=r
        )
        self.prompt_tokens = Counter("shoestring_prompt_tokens", "Prompt tokens processed (tokens).", registry=r)
        self.tokens_per_s = Gauge(
            "shoestring_tokens_per_second", "Generated tokens per second over the last 10 s (tokens/s).", registry=r
        )
        self.rejected = Counter(
            "shoestring_rejected_requests", "Requests refused before the model, by reason.", ["reason"], registry=r
        )
        self.drift_psi = Gauge(
            "shoestring_drift_psi",
            "Population stability index of a feature over the recent window vs the evaluation reference "
            "(<0.1 stable, 0.1-0.25 moderate, >0.25 significant).",
            ["feature"],
            registry=r,
        )
        self.drift_level = Gauge(
            "shoestring_drift_level", "Drift level per feature: 0 stable, 1 moderate, 2 significant.", ["feature"], registry=r
        )
        self.drift_samples = Gauge(
            "shoestring_drift_window_samples", "Requests in the drift window.", registry=r
        )
        self.model_errors = Counter(
            "shoestring_model_errors", "Model calls that raised (their requests got a 500), by call.", ["call"], registry=r
        )
        self.engine = Gauge(
            "shoestring_engine_info", "The generation engine (value 1), with its name and how many sequences it batches.",
            ["engine", "batched", "max_sequences"], registry=r,
        )  # fmt: skip
        self.engine_stat = Gauge(
            "shoestring_engine_stat",
            "Engine counters: steps, tokens fed, prefix-cache lookups, hits and reused prompt tokens.",
            ["stat"], registry=r,
        )  # fmt: skip
        self.ready = Gauge("shoestring_ready", "1 when the server accepts requests, 0 while loading or draining.", registry=r)
        self._window_s = window_s
        self._steps: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def describe_engine(self, info: Any) -> None:
        """Publish which engine serves (``EngineInfo``)."""
        self.engine.labels(info.name, str(info.batched).lower(), str(info.max_seqs)).set(1)

    # --- observer interface, called from model threads
    def on_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def on_first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def on_model_error(self, call: str) -> None:
        self.model_errors.labels(call).inc()

    def on_step(self, tokens: int, seconds: float) -> None:
        self.step_batch.observe(tokens)
        self.generated_tokens.inc(tokens)
        now = time.monotonic()
        with self._lock:
            self._steps.append((now, tokens))

    def refresh(self) -> None:
        """Update window gauges right before a scrape."""
        now = time.monotonic()
        with self._lock:
            while self._steps and self._steps[0][0] < now - self._window_s:
                self._steps.popleft()
            total = sum(t for _, t in self._steps)
        self.tokens_per_s.set(total / self._window_s)
