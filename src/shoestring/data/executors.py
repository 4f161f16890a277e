"""Where the per-record phase runs: this process, local worker processes, or Ray.

*What* runs (:func:`~shoestring.data.pipeline.process_chunk`, a pure function of its chunk)
is separate from *where*. All executors keep a bounded number of chunks in flight
(2 x workers), so memory stays flat however large the corpus is, and all return chunk
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


class RayExecutor:
    """Ray tasks (a local Ray instance unless one is already running) with a bounded window."""

    def __init__(self, workers: int) -> None:
        try:
            import ray
        except ImportError:
            raise ShoestringError("executor 'ray' needs Ray: pip install 'shoestring[ray]'") from None
        self.ray = ray
        self.workers = workers
        self.started = False
        if not ray.is_initialized():
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
            self.started = True

    def map(self, fn: Callable[..., dict[str, Any]], tasks: Iterable[Task]) -> Iterator[dict[str, Any]]:
        remote = self.ray.remote(num_cpus=1)(fn)
        window: deque[Any] = deque()
        for t in tasks:
            window.append(remote.remote(*t))
            if len(window) >= 2 * self.workers:
                yield self.ray.get(window.popleft())
        while window:
            yield self.ray.get(window.popleft())

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_executor(kind: str, workers: int) -> Executor:
    if kind == "ray":
        return RayExecutor(max(1, workers))
    if workers <= 1:
        return SerialExecutor()
    return LocalExecutor(workers)
