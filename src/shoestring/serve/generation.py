"""Continuous batching for causal LMs: one model thread, many concurrent requests.

The scheduler keeps one running batch with a KV cache. Between two decode steps it admits
waiting requests: they are prefilled together (left-padded), then their caches are padded
on the left to the running batch's length and concatenated along the batch dimension, so a
request that arrives mid-generation joins at the next token step instead of waiting for the
batch to finish. Finished or cancelled rows are dropped from the cache at once (their
compute stops), and columns that became padding for every row are trimmed.

Left padding is sound because rotary position embeddings are applied to keys before they
are cached: each row's keys keep their own positions, and we pass per-row ``position_ids``
and a 2-D attention mask that masks the padding. Models whose cache is not a plain
``DynamicCache`` of ``DynamicLayer``s (sliding windows, hybrid caches) still batch, but new
requests wait until the running batch drains.

Results go back to the asyncio side as events on a per-request ``asyncio.Queue``. Every
admitted request gets exactly one terminal event (``done`` or ``error``), whatever happens:
a model call that raises fails only the requests in that call (the prefill group, or the
running batch for a decode step) and the thread goes on serving the others; a failure
outside a model call stops the thread and fails everything it holds, including requests
taken off the queue whose prefill had started.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

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
    """When the prefill began (seconds, monotonic); None while still queued."""
    generated: int = 0
    finished: bool = False
    """True once the terminal event was sent (set by the model thread only)."""
    _generator: Any = None

    def cancel(self) -> None:
        """Ask the model thread to stop this request at the next step (idempotent)."""
        self.cancelled.set()

    def _finish(self, kind: str, value: Any) -> None:
        """Send the one terminal event (later calls are no-ops) and leave the batch."""
        if not self.finished:
            self.finished = True
            self._emit(kind, value)
        self.cancelled.set()

    def _emit(self, kind: str, value: Any) -> None:
        if self.loop is None:
            self.events.put_nowait((kind, value))
        else:
            try:
                self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
            except RuntimeError:  # the event loop closed (server shut down): nobody is listening
                self.cancelled.set()


@dataclass
class _Batch:
    rows: list[GenRequest]
    cache: Any
    mask: torch.Tensor  # (B, T) 1 = real token, 0 = left padding
    next_tokens: torch.Tensor  # (B,) token each row feeds at the next step
    positions: torch.Tensor  # (B,) position id of that token


class GenerationScheduler:
    """Owns the model; admits, batches, steps and streams generation requests."""

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        eos_ids: set[int],
        pad_id: int,
        context_length: int,
        max_batch_size: int = 8,
        max_queue: int = 64,
        batch_timeout_s: float = 0.005,
        observer: Any = None,
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        """Where the model's weights are; batch tensors are built there."""
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.context_length = context_length
        self.max_batch_size = max(1, max_batch_size)
        self.max_queue = max(1, max_queue)
        self.batch_timeout_s = batch_timeout_s
        self.observer = observer
        """Object with ``on_batch(size)``, ``on_step(tokens, seconds)``, ``on_first_token(seconds)``."""
        self._waiting: collections.deque[GenRequest] = collections.deque()
        self._running: _Batch | None = None
        self._admitted: list[GenRequest] = []
        """Requests taken off the queue whose prefill is running (counted against max_queue)."""
        self._cond = threading.Condition()
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self.fatal_error: str | None = None
        self.step_seconds_ema = 0.05
        """Smoothed seconds per decode step, used to estimate Retry-After."""

    # ------------------------------------------------------------------ admission
    @property
    def queue_depth(self) -> int:
        """Requests admitted but not yet prefilled."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests being prefilled or in the running batch."""
        b = self._running
        return (len(b.rows) if b is not None else 0) + len(self._admitted)

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
        return not self._waiting and self._running is None and not self._admitted

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop the model thread; requests still queued get an error event."""
        with self._cond:
            self._accepting = False
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ------------------------------------------------------------------ model thread
    def _loop(self) -> None:
        import torch

        try:
            with torch.inference_mode():
                while True:
                    admitted = self._take_admissions()
                    if admitted is None:
                        break
                    if admitted:
                        try:
                            self._prefill(admitted)
                        except Exception as err:
                            self._call_failed("prefill", err, admitted)
                        finally:
                            with self._cond:
                                self._admitted = []
                    if self._running is not None:
                        try:
                            self._decode_step()
                        except Exception as err:
                            self._call_failed("decode step", err, [])
        except BaseException as err:  # keep serving errors visible instead of hanging every client
            self.fatal_error = f"model thread failed: {type(err).__name__}: {err}"
            self._fail_all(self.fatal_error)
            if not isinstance(err, Exception):
                raise

    def _call_failed(self, what: str, err: Exception, group: list[GenRequest]) -> None:
        """A model call raised: fail its requests, keep the thread serving the rest.

        A failed prefill fails its own group; if the group had already joined the running
        batch (the failure came after the merge), or a decode step failed, the running
        batch's cache is in an unknown state, so every row in it fails too.
        """
        message = f"model {what} failed: {type(err).__name__}: {err}"
        b = self._running
        if b is not None and (not group or any(r in b.rows for r in group)):
            self._running = None
            group = [*group, *b.rows]
        for r in group:
            r._finish("error", message)
        if self.observer is not None and hasattr(self.observer, "on_model_error"):
            self.observer.on_model_error(what)

    def _take_admissions(self) -> list[GenRequest] | None:
        """Block until there is work; return new requests to prefill ([] = just step)."""
        with self._cond:
            while not self._stop and not self._waiting and self._running is None:
                self._cond.wait(0.5)
            if self._stop:
                self._fail_locked(SHUTTING_DOWN)
                return None
            if self._running is None and self._waiting and self.batch_timeout_s > 0:
                # An idle server waits a short window so a burst is prefilled as one batch.
                end = time.monotonic() + self.batch_timeout_s
                while len(self._waiting) < self.max_batch_size and (left := end - time.monotonic()) > 0:
                    self._cond.wait(left)
            room = self.max_batch_size - self.running
            if self._running is not None and not self._can_join():
                room = 0
            out: list[GenRequest] = []
            now = time.monotonic()
            while self._waiting and len(out) < room:
                req = self._waiting.popleft()
                if req.cancelled.is_set():
                    req._finish("done", "cancelled")
                elif now > req.deadline:
                    req._finish("error", "timeout")
                else:
                    out.append(req)
            self._admitted = out
            return out

    def _can_join(self) -> bool:
        from transformers.cache_utils import DynamicLayer

        layers = getattr(self._running.cache, "layers", None) if self._running else None
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers or ())

    def _prefill(self, reqs: list[GenRequest]) -> None:
        import torch
        from transformers import DynamicCache

        t0 = time.perf_counter()
        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)  # (n, L)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, r in enumerate(reqs):
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
            r.started_at = time.monotonic()
            if r.seed is not None:
                r._generator = torch.Generator(device=self.device).manual_seed(r.seed)
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (n, L)
        cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        first = self._sample(out.logits[:, -1, :], reqs)  # (n,)
        new = _Batch(reqs, out.past_key_values, mask, first, mask.sum(-1))
        self._running = new if self._running is None else _merge(self._running, new)
        if self.observer is not None:
            self.observer.on_batch(len(reqs))
            for r in reqs:
                self.observer.on_first_token(time.monotonic() - r.enqueued_at)
        self._publish(reqs, first)
        self.step_seconds_ema = 0.8 * self.step_seconds_ema + 0.2 * (time.perf_counter() - t0) / max(1, len(reqs))
        self._drop_finished()

    def _decode_step(self) -> None:
        import torch

        b = self._running
        assert b is not None
        t0 = time.perf_counter()
        mask = torch.cat([b.mask, torch.ones((len(b.rows), 1), dtype=b.mask.dtype, device=b.mask.device)], dim=1)  # (B, T+1)
        out = self.model(
            input_ids=b.next_tokens[:, None],
            attention_mask=mask,
            position_ids=b.positions[:, None],
            past_key_values=b.cache,
            use_cache=True,
        )
        b.cache, b.mask = out.past_key_values, mask
        b.positions = b.positions + 1
        b.next_tokens = self._sample(out.logits[:, -1, :], b.rows)
        dt = time.perf_counter() - t0
        self.step_seconds_ema = 0.9 * self.step_seconds_ema + 0.1 * dt
        if self.observer is not None:
            self.observer.on_step(len(b.rows), dt)
        self._publish(b.rows, b.next_tokens)
        self._drop_finished()

    def _sample(self, logits: torch.Tensor, reqs: list[GenRequest]) -> torch.Tensor:
        """Next token per row: greedy at temperature 0, else temperature + nucleus sampling."""
        import torch

        greedy = logits.argmax(-1)  # (B,)
        if all(r.temperature <= 0 for r in reqs):
            return greedy
        out = greedy.clone()
        for i, r in enumerate(reqs):
            if r.temperature <= 0:
                continue
            probs = torch.softmax(logits[i].float() / r.temperature, -1)  # (V,)
            if r.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(-1) - sorted_p < r.top_p  # always keeps the top token
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
            out[i] = torch.multinomial(probs, 1, generator=r._generator)[0]
        return out

    def _publish(self, reqs: list[GenRequest], tokens: torch.Tensor) -> None:
        """Send each row its token, and mark rows that are finished."""
        b = self._running
        assert b is not None
        now = time.monotonic()
        for r, tok in zip(reqs, tokens.tolist(), strict=True):
            if r.cancelled.is_set():
                continue
            if now > r.deadline:
                r._finish("error", "timeout")
                continue
            if tok in self.eos_ids:
                r._finish("done", "stop")
                continue
            r.generated += 1
            r._emit("token", tok)
            if r.generated >= r.max_new_tokens or len(r.prompt_ids) + r.generated >= self.context_length:
                r._finish("done", "length")

    def _drop_finished(self) -> None:
        """Remove finished/cancelled rows from the batch and trim all-padding columns."""
        import torch

        b = self._running
        assert b is not None
        for r in b.rows:
            if r.cancelled.is_set():
                r._finish("done", "cancelled")  # no-op for rows that already finished
        keep = [i for i, r in enumerate(b.rows) if not r.cancelled.is_set()]
        if not keep:
            self._running = None
            return
        if len(keep) < len(b.rows):
            idx = torch.tensor(keep, device=b.mask.device)
            b.cache.batch_select_indices(idx)
            b.rows = [b.rows[i] for i in keep]
            b.mask, b.next_tokens, b.positions = b.mask[idx], b.next_tokens[idx], b.positions[idx]
            if self._can_join():
                lead = int((b.mask.sum(0) == 0).long().cumprod(0).sum())  # all-padding leading columns
                if lead:
                    b.mask = b.mask[:, lead:]
                    for layer in b.cache.layers:
                        layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]

    def _fail_locked(self, message: str) -> None:
        while self._waiting:
            self._waiting.popleft()._finish("error", message)
        for r in self._admitted:
            r._finish("error", message)
        self._admitted = []
        if self._running is not None:
            for r in self._running.rows:
                r._finish("error", message)
            self._running = None

    def _fail_all(self, message: str) -> None:
        with self._cond:
            self._fail_locked(message)


def _merge(a: _Batch, b: _Batch) -> _Batch:
    """Join two batches: left-pad the shorter cache and mask, then concatenate rows."""
    import torch
    import torch.nn.functional as F

    ta, tb = a.mask.shape[1], b.mask.shape[1]
    width = max(ta, tb)
    for la, lb in zip(a.cache.layers, b.cache.layers, strict=True):
        ka, va = F.pad(la.keys, (0, 0, width - ta, 0)), F.pad(la.values, (0, 0, width - ta, 0))  # (B, H, T, D)
        kb, vb = F.pad(lb.keys, (0, 0, width - tb, 0)), F.pad(lb.values, (0, 0, width - tb, 0))
        la.keys, la.values = torch.cat([ka, kb]), torch.cat([va, vb])
    mask = torch.cat([F.pad(a.mask, (width - ta, 0)), F.pad(b.mask, (width - tb, 0))])
    return _Batch(
        a.rows + b.rows,
        a.cache,
        mask,
        torch.cat([a.next_tokens, b.next_tokens]),
        torch.cat([a.positions, b.positions]),
    )
