"""Where the per-record phase runs: this process, local worker processes, or Ray.

*What* runs (:func:`~shoestring.data.pipeline.process_chunk`, a pure function of its chunk)
is separate from *where*. All executors keep a bounded number of chunks in flight
(2-4 x workers), so memory stays flat however large the corpus is, and all return chunk
results in input order.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from shoestring.core.errors import ShoestringError

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "SerialExecutor", "make_executor"]

Task = tuple[Any, ...]


class Executor(Protocol):
    def map(self, fn: Callable[..., dict[str, Any]], tasks: Iterable[Task]) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Runs chunks in this process (workers = 1; also the easiest to debug)."""

    def map(self, fn: Callable[..., dict[str, Any]], tasks: Iterable[Task]) -> Iterator[dict[str, Any]]:
        for t in tasks:
            yield fn(*t)

    def close(self) -> None:
        return None


class LocalExecutor:
    """A pool of ``workers`` spawned processes with at most 2 x workers chunks in flight."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        # spawn, not fork: the parent may hold threads (Ray, tokenizers) that fork would copy broken.
        self.pool = mp.get_context("spawn").Pool(workers)

    def map(self, fn: Callable[..., dict[str, Any]], tasks: Iterable[Task]) -> Iterator[dict[str, Any]]:
        window: deque[Any] = deque()
        for t in tasks:
            window.append(self.pool.apply_async(fn, t))
            if len(window) >= 2 * self.workers:
                yield window.popleft().get()
        while window:
            yield window.popleft().get()

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def _run_pickled(row: dict[str, Any]) -> dict[str, Any]:
    """Ray Data row function: unpickle (fn, args), run, return the result as JSON text."""
    import json
    import pickle

    fn, args = pickle.loads(row["task"])
    return {"index": row["index"], "result": json.dumps(fn(*args))}


class RayExecutor:
    """Ray Data over windows of chunks (a local Ray instance unless one is already running).

    Each window of ``4 x workers`` chunks becomes a small dataset of pickled tasks that
    ``Dataset.map`` runs with ``concurrency=workers``; windows keep memory bounded because
    the reader is a single stream in the driver. Tasks travel pickled because records are
    free-form dicts that Arrow cannot always type.
    """

    def __init__(self, workers: int) -> None:
        try:
            import ray
            import ray.data
        except ImportError:
            raise ShoestringError("executor 'ray' needs Ray Data: pip install 'shoestring[ray]'") from None
        self.ray = ray
        self.workers = workers
        self.started = False
        if not ray.is_initialized():
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
            self.started = True
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-window plans are noise to users
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False

    def _window(self, fn: Callable[..., dict[str, Any]], tasks: list[tuple[int, Task]]) -> list[dict[str, Any]]:
        import json

        from ray import cloudpickle

        rows = [{"index": i, "task": cloudpickle.dumps((fn, t))} for i, t in tasks]
        ds = self.ray.data.from_items(rows, override_num_blocks=len(rows)).map(
            _run_pickled, concurrency=min(self.workers, len(rows)), num_cpus=1
        )
        out = sorted(ds.take_all(), key=lambda r: r["index"])
        return [json.loads(r["result"]) for r in out]

    def map(self, fn: Callable[..., dict[str, Any]], tasks: Iterable[Task]) -> Iterator[dict[str, Any]]:
        window: list[tuple[int, Task]] = []
        for i, t in enumerate(tasks):
            window.append((i, t))
            if len(window) >= 4 * self.workers:
                yield from self._window(fn, window)
                window = []
        if window:
            yield from self._window(fn, window)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_executor(kind: str, workers: int) -> Executor:
    if kind == "ray":
        return RayExecutor(max(1, workers))
    if workers <= 1:
        return SerialExecutor()
    return LocalExecutor(workers)
