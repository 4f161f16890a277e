"""Keep broken client updates out of the average, and count them.

Flower's message strategies validate replies as a whole: one reply whose arrays have other keys
makes ``aggregate_train`` raise for the round, and a NaN poisons the average silently.
:class:`ScreenedStrategy` wraps any of them (FedAvg, FedProx, FedAdam, FedYogi): before the
strategy aggregates, every reply is checked - an error reply (a client that crashed) is a
failure, a reply whose tensors differ in names, shapes or dtypes from the global model's, holds
NaN/Inf, or carries a non-positive or non-finite weight is rejected with its reason - and only
the rest reach the wrapped strategy. An aggregate that is still not finite is discarded and the
round keeps the previous global model. Sampled clients that did not reply before the round's
timeout are counted as timed out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from shoestring.federate.rounds import RoundLog

__all__ = ["ScreenedStrategy", "screen_update"]

WEIGHT_KEY = "num-examples"


def screen_update(arrays: dict[str, np.ndarray], reference: dict[str, tuple[tuple[int, ...], str]],
                  weight: Any) -> str | None:  # fmt: skip
    """Why an update must not be averaged (``shape``, ``non_finite``, ``bad_weight``), or None if it is fine."""
    if set(arrays) != set(reference):
        return "shape"
    for name, a in arrays.items():
        shape, dtype = reference[name]
        if tuple(a.shape) != shape or str(a.dtype) != dtype:
            return "shape"
    if not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
        return "bad_weight"
    for a in arrays.values():
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            return "non_finite"
    return None


def _reply_arrays(msg: Message) -> dict[str, np.ndarray] | None:
    records = list(msg.content.array_records.values())
    if len(records) != 1:
        return None
    return {k: v.numpy() for k, v in records[0].items()}


def _reply_metrics(msg: Message) -> dict[str, Any]:
    records = list(msg.content.metric_records.values())
    return dict(records[0]) if len(records) == 1 else {}


class ScreenedStrategy(Strategy):
    """Wraps a Flower message strategy; screens replies, logs rounds, offsets round numbers on resume."""

    def __init__(self, inner: Strategy, log: RoundLog, round_offset: int = 0) -> None:
        self.inner = inner
        self.log = log
        self.offset = round_offset
        self._reference: dict[str, tuple[tuple[int, ...], str]] = {}

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:  # fmt: skip
        rnd = server_round + self.offset
        self._reference = {k: (tuple(int(d) for d in a.shape), str(a.dtype)) for k, a in arrays.items()}
        self.log.begin(rnd, 0)
        messages = list(self.inner.configure_train(rnd, arrays, config, grid))
        self.log.begin(rnd, len(messages))
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:  # fmt: skip
        replies = list(replies)
        failed = [m for m in replies if m.has_error()]
        kept: list[Message] = []
        accepted: list[dict[str, Any]] = []
        rejected: dict[str, int] = {}
        for msg in replies:
            if msg.has_error():
                continue
            arrays, metrics = _reply_arrays(msg), _reply_metrics(msg)
            reason = "shape" if arrays is None else screen_update(arrays, self._reference, metrics.get(WEIGHT_KEY))
            if reason is not None:
                rejected[reason] = rejected.get(reason, 0) + 1
                continue
            kept.append(msg)
            accepted.append(metrics)
        self.log.replies(len(replies), len(failed), rejected, accepted)
        if not kept:
            return None, None
        agg, metrics = self.inner.aggregate_train(server_round + self.offset, kept)
        if agg is not None and not all(np.isfinite(a.numpy()).all() for a in agg.values()):
            self.log.aggregate_rejected("non_finite")
            return None, metrics
        return agg, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:  # fmt: skip
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        ok = [m for m in replies if not m.has_error()]
        return self.inner.aggregate_evaluate(server_round + self.offset, ok) if ok else None
