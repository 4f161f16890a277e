"""Continuous batching for causal LMs: one model thread, many concurrent requests, any engine.

The scheduler owns an :class:`~shoestring.serve.engine.Engine` and runs one loop on its
own thread. Each turn it admits waiting requests into free engine slots, then builds one
step: a decode token for every running sequence plus prompt chunks of new sequences, up to
the engine's ``prefill_chunk`` tokens. A long prompt is prefilled over several steps while
the others keep decoding, so a request arriving mid-generation neither waits for the batch
to finish nor stalls it. Finished, cancelled and timed-out sequences leave at once and their
slots are freed. An engine that holds one sequence (``max_seqs == 1``) is served one
request at a time.

Results go back to the asyncio side as events on a per-request ``asyncio.Queue``, one
thread-safe callback per event loop per step. Every admitted request gets exactly one
terminal event (``done`` or ``error``), whatever happens. A step that raises is retried
sequence by sequence, so only the sequences whose own work raises fail ("model prefill
failed" while the prompt is being fed, "model decode step failed" after); the thread goes
on serving the others. A failure outside a model call stops the thread and fails
everything it holds (``fatal_error``; ``/health`` answers 500).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from shoestring.serve.engine import Engine, Sampling, Work

__all__ = ["SHUTTING_DOWN", "GenRequest", "GenerationScheduler", "QueueFull", "NotAccepting"]

SHUTTING_DOWN = "server is shutting down"
"""The error event's message for requests failed by shutdown (answered 503, not 500)."""


class QueueFull(Exception):
    """Admission refused: the bounded queue is full (answer 429 with Retry-After)."""


class NotAccepting(Exception):
    """Admission refused: the server is draining or the model thread stopped (answer 503)."""


@dataclass(eq=False)
class GenRequest:
    """One generation request and the channel its tokens come back on."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    deadline: float = float("inf")
    """``time.monotonic()`` after which the request is abandoned (seconds)."""
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    """``("token", id)``, then one ``("done", finish_reason)`` or ``("error", message)``."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    """When its prefill began (seconds, monotonic); None while still queued."""
    generated: int = 0
    cached_prompt_tokens: int = 0
    """Prompt tokens whose KV came from the prefix cache (no prefill needed)."""
    finished: bool = False
    """True once the terminal event was sent (set by the model thread only)."""

    def cancel(self) -> None:
        """Ask the model thread to stop this request at the next step (idempotent)."""
        self.cancelled.set()

    def _finish(self, kind: str, value: Any, outbox: _Outbox | None = None) -> None:
        """Send the one terminal event (later calls are no-ops)."""
        if not self.finished:
            self.finished = True
            (outbox or _Outbox()).put(self, kind, value, flush=outbox is None)
        self.cancelled.set()


class _Outbox:
    """Events of one step, handed to each event loop in one thread-safe callback."""

    def __init__(self) -> None:
        self.by_loop: dict[Any, list[tuple[GenRequest, tuple[str, Any]]]] = collections.defaultdict(list)

    def put(self, req: GenRequest, kind: str, value: Any, flush: bool = False) -> None:
        self.by_loop[req.loop].append((req, (kind, value)))
        if flush:
            self.flush()

    def flush(self) -> None:
        for loop, items in self.by_loop.items():
            if loop is None:
                for req, ev in items:
                    req.events.put_nowait(ev)
                continue
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the event loop closed (server shut down): nobody is listening
                for req, _ in items:
                    req.cancelled.set()
        self.by_loop.clear()


def _deliver(items: list[tuple[GenRequest, tuple[str, Any]]]) -> None:
    for req, ev in items:
        req.events.put_nowait(ev)


@dataclass(eq=False)
class _Seq:
    """A request that holds an engine slot."""

    req: GenRequest
    slot: int
    fed: int
    """Prompt tokens already in the slot's cache (tokens)."""
    last: int = -1
    """The token sampled last step, fed at the next decode step."""

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.req.prompt_ids)


class GenerationScheduler:
    """Owns the engine; admits, batches, steps and streams generation requests."""

    def __init__(
        self,
        engine: Engine,
        *,
        eos_ids: set[int],
        max_batch_size: int = 8,
        max_queue: int = 64,
        batch_timeout_s: float = 0.005,
        observer: Any = None,
    ) -> None:
        self.engine = engine
        self.eos_ids = eos_ids
        self.context_length = engine.info.context_length
        self.max_batch_size = max(1, min(max_batch_size, engine.info.max_seqs))
        """Most sequences in the running batch: the server's --max-batch-size, capped by the engine."""
        self.max_queue = max(1, max_queue)
        self.batch_timeout_s = batch_timeout_s
        self.observer = observer
        """Object with ``on_batch(size)``, ``on_step(tokens, seconds)``, ``on_first_token(seconds)``,
        ``on_model_error(call)``."""
        self._waiting: collections.deque[GenRequest] = collections.deque()
        self._seqs: list[_Seq] = []
        self._cond = threading.Condition()
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self.fatal_error: str | None = None
        self.step_seconds_ema = 0.05
        """Smoothed seconds per step, used to estimate Retry-After."""

    # ------------------------------------------------------------------ admission
    @property
    def queue_depth(self) -> int:
        """Requests admitted but not yet given an engine slot."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests holding an engine slot (prefilling or decoding)."""
        return len(self._seqs)

    def submit(self, req: GenRequest) -> None:
        """Admit a request or raise :class:`QueueFull` / :class:`NotAccepting`."""
        with self._cond:
            if not self._accepting or self._stop or self.fatal_error:
                raise NotAccepting(self.fatal_error or SHUTTING_DOWN)
            if len(self._waiting) + self.running >= self.max_queue:
                raise QueueFull()
            self._waiting.append(req)
            self._cond.notify()

    def retry_after_s(self) -> int:
        """A rough wait before retrying: the queue's worth of steps, at least 1 second."""
        per_req = max(self.step_seconds_ema, 1e-3) * 16
        est = per_req * (len(self._waiting) + self.running) / self.max_batch_size
        return max(1, min(60, round(est)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="shoestring-generate", daemon=True)
        self._thread.start()

    def stop_accepting(self) -> None:
        with self._cond:
            self._accepting = False

    def idle(self) -> bool:
        return not self._waiting and not self._seqs

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop the model thread; requests still queued or running get an error event."""
        with self._cond:
            self._accepting = False
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ------------------------------------------------------------------ model thread
    def _loop(self) -> None:
        try:
            import torch

            with torch.inference_mode():
                while self._admit_waiting():
                    if self._seqs:
                        self._step()
        except BaseException as err:  # keep serving errors visible instead of hanging every client
            self.fatal_error = f"model thread failed: {type(err).__name__}: {err}"
            with self._cond:
                self._fail_locked(self.fatal_error)
            if not isinstance(err, Exception):
                raise

    def _admit_waiting(self) -> bool:
        """Block until there is work; give waiting requests free slots. False = stop."""
        with self._cond:
            while not self._stop and not self._waiting and not self._seqs:
                self._cond.wait(0.5)
            if self._stop:
                self._fail_locked(SHUTTING_DOWN)
                return False
            if not self._seqs and self._waiting and self.batch_timeout_s > 0:
                # An idle server waits a short window so a burst is prefilled together.
                end = time.monotonic() + self.batch_timeout_s
                while len(self._waiting) < self.max_batch_size and (left := end - time.monotonic()) > 0:
                    self._cond.wait(left)
            taken: list[GenRequest] = []
            now = time.monotonic()
            while self._waiting and len(self._seqs) + len(taken) < self.max_batch_size:
                req = self._waiting.popleft()
                if req.cancelled.is_set():
                    req._finish("done", "cancelled")
                elif now > req.deadline:
                    req._finish("error", "timeout")
                else:
                    taken.append(req)
            for req in taken:  # slot reservation is cheap; the prefill happens in the steps
                self._open(req)
        return True

    def _open(self, req: GenRequest) -> None:
        req.started_at = time.monotonic()
        sampling = Sampling(req.temperature, req.top_p, req.seed)
        try:
            slot, cached = self.engine.admit(req.prompt_ids, sampling)
        except Exception as err:
            req._finish("error", f"model prefill failed: {type(err).__name__}: {err}")
            self._count_error("prefill")
            return
        req.cached_prompt_tokens = cached
        self._seqs.append(_Seq(req, slot, cached))

    def _plan(self) -> list[tuple[_Seq, Work]]:
        """This step's work: every decoding sequence's token, then prompt chunks within budget."""
        plan = [(s, Work(s.slot, [s.last], len(s.req.prompt_ids) + s.req.generated - 1, True))
                for s in self._seqs if not s.prefilling]  # fmt: skip
        budget = max(1, self.engine.info.prefill_chunk - len(plan))
        for s in self._seqs:
            if not s.prefilling or budget <= 0:
                continue
            prompt = s.req.prompt_ids
            n = min(budget, len(prompt) - s.fed)
            plan.append((s, Work(s.slot, prompt[s.fed : s.fed + n], s.fed, s.fed + n == len(prompt))))
            budget -= n
        return plan

    def _step(self) -> None:
        outbox = _Outbox()
        self._drop_finished(outbox)
        plan = self._plan()
        if not plan:
            outbox.flush()
            return
        t0 = time.perf_counter()
        tokens = self._run(plan, outbox)
        dt = time.perf_counter() - t0
        self.step_seconds_ema = 0.9 * self.step_seconds_ema + 0.1 * dt
        prefills = sum(1 for s, w in plan if w.start < len(s.req.prompt_ids))
        if self.observer is not None:
            if prefills:
                self.observer.on_batch(prefills)
            self.observer.on_step(len(tokens), dt)
        now = time.monotonic()
        for s, w in plan:
            if s.prefilling:
                s.fed += len(w.tokens)
            tok = tokens.get(s.slot)
            if tok is None or s.req.finished:
                continue
            if s.req.generated == 0 and self.observer is not None:
                self.observer.on_first_token(now - s.req.enqueued_at)
            self._publish(s, tok, now, outbox)
        self._drop_finished(outbox)
        outbox.flush()

    def _run(self, plan: list[tuple[_Seq, Work]], outbox: _Outbox) -> dict[int, int]:
        """One engine step; if it raises, retry each sequence alone and fail only those that raise.

        Retrying is sound because a step only writes the KV of the positions it feeds: a
        failed attempt leaves nothing a retry would not overwrite.
        """
        try:
            return self.engine.step([w for _, w in plan])
        except Exception as err:
            if len(plan) == 1:
                self._fail_seq(plan[0][0], err, outbox)
                return {}
        out: dict[int, int] = {}
        for s, w in plan:
            try:
                out.update(self.engine.step([w]))
            except Exception as err:
                self._fail_seq(s, err, outbox)
        return out

    def _fail_seq(self, s: _Seq, err: Exception, outbox: _Outbox) -> None:
        what = "prefill" if s.prefilling else "decode step"
        s.req._finish("error", f"model {what} failed: {type(err).__name__}: {err}", outbox)
        self._count_error(what)

    def _count_error(self, what: str) -> None:
        if self.observer is not None and hasattr(self.observer, "on_model_error"):
            self.observer.on_model_error(what)

    def _publish(self, s: _Seq, tok: int, now: float, outbox: _Outbox) -> None:
        """Send a sequence its token, or finish it (EOS, length, context, deadline, cancel)."""
        r = s.req
        if r.cancelled.is_set():
            return
        if now > r.deadline:
            r._finish("error", "timeout", outbox)
            return
        if tok in self.eos_ids:
            r._finish("done", "stop", outbox)
            return
        r.generated += 1
        s.last = tok
        outbox.put(r, "token", tok)
        if r.generated >= r.max_new_tokens or len(r.prompt_ids) + r.generated >= self.context_length:
            r._finish("done", "length", outbox)

    def _drop_finished(self, outbox: _Outbox) -> None:
        """Free the slots of finished, cancelled and timed-out sequences."""
        now = time.monotonic()
        keep: list[_Seq] = []
        for s in self._seqs:
            if not s.req.cancelled.is_set() and now > s.req.deadline:
                s.req._finish("error", "timeout", outbox)
            if s.req.cancelled.is_set():
                s.req._finish("done", "cancelled", outbox)  # no-op for requests that already finished
                with contextlib.suppress(Exception):  # a slot is freed even if the engine complains
                    self.engine.free(s.slot)
            else:
                keep.append(s)
        self._seqs = keep

    def _fail_locked(self, message: str) -> None:
        while self._waiting:
            self._waiting.popleft()._finish("error", message)
        for s in self._seqs:
            s.req._finish("error", message)
            with contextlib.suppress(Exception):
                self.engine.free(s.slot)
        self._seqs = []
