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
from typing import TYPE_CHECKING, Any, Protocol

from shoestring.core.cluster import NodeWatch, cluster_nodes, ensure_ray, on_cluster
from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "SerialExecutor", "make_executor"]

Task = tuple[Any, ...]
RAY_TASK_RETRIES = 3  # re-runs of a chunk whose worker or node died (the chunk is pure, so a re-run is safe)


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
    """Ray Data row function: unpickle (fn, args), run, return the result as JSON text and the node it ran on."""
    import json
    import pickle

    import ray

    fn, args = pickle.loads(row["task"])
    return {"index": row["index"], "result": json.dumps(fn(*args)), "node": ray.get_runtime_context().get_node_id()}


class RayExecutor:
    """Ray Data over windows of chunks: on the recipe's cluster, else on a private local Ray.

    Each window of ``4 x workers`` chunks becomes a small dataset of pickled tasks that
    ``Dataset.map`` runs with ``concurrency=workers``; windows keep memory bounded because
    the reader is a single stream in the driver. Tasks travel pickled because records are
    free-form dicts that Arrow cannot always type. On a cluster, ``workers`` is at least the
    cluster's CPU count. A task whose node dies is re-run by Ray on another node (the chunk
    function is pure and commits its shard atomically, so a re-run writes the same bytes and
    nothing is counted twice); the dead node is named on the console once.
    """

    def __init__(self, workers: int, console: Console | None = None) -> None:
        try:
            import ray
            import ray.data
        except ImportError:
            raise ShoestringError("executor 'ray' needs Ray Data: pip install 'shoestring[ray]'") from None
        self.ray = ray
        self.started = ensure_ray(workers)
        self.workers = workers
        if on_cluster():
            self.workers = max(workers, int(sum(n.cpus for n in cluster_nodes())))
        self.watch = NodeWatch(console, "curate")
        self.tasks_by_node: dict[str, int] = {}
        """Node id -> tasks that ran there (chunks, then dedup batches)."""
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
            _run_pickled, concurrency=min(self.workers, len(rows)), num_cpus=1, max_retries=RAY_TASK_RETRIES
        )
        out = {}
        for r in ds.take_all():  # one result per chunk, even if a task re-ran
            if r["index"] not in out:
                self.tasks_by_node[r["node"]] = self.tasks_by_node.get(r["node"], 0) + 1
            out[r["index"]] = r["result"]
        self.watch.check()
        missing = [i for i, _ in tasks if i not in out]
        if missing:
            raise ShoestringError(f"Ray returned no result for {len(missing)} chunks (first: {missing[0]}); "
                                  "re-run to resume from the finished chunks")  # fmt: skip
        return [json.loads(out[i]) for i, _ in tasks]

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


def make_executor(kind: str, workers: int, console: Console | None = None) -> Executor:
    if kind == "ray":
        return RayExecutor(max(1, workers), console)
    if workers <= 1:
        return SerialExecutor()
    return LocalExecutor(workers)
