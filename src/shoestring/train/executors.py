"""Where a language-model run executes: this process, torchrun processes, or Ray Train workers.

All three run the same :func:`~shoestring.train.loop.train_language_model`; the multi-process
executors only set up ``torch.distributed`` (gloo on CPU, NCCL on CUDA) around it. The parent
hands the job to the workers as a JSON file in the durable work folder and reads rank 0's
stats back from another, so a killed multi-process run resumes like a local one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.core.artifact import atomic_write_json
from shoestring.core.cluster import Node, NodeWatch, cluster_nodes, ensure_ray, on_cluster
from shoestring.core.errors import ShoestringError
from shoestring.train.config import TrainConfig
from shoestring.train.loop import Paths, train_language_model
from shoestring.train.settings import Settings

if TYPE_CHECKING:
    from shoestring.core.workspace import StageContext

__all__ = ["RAY_PLACEMENTS", "RAY_TRAIN_RESTARTS", "run_training", "worker_main"]

RAY_TRAIN_RESTARTS = 2  # worker-group restarts after a worker or node dies; each resumes from the last checkpoint
RAY_PLACEMENTS = "ray-workers.jsonl"
"""In the work folder: one line per Ray Train rank start, ``{"rank", "node", "node_id", "pid"}``."""


def _paths(ctx: StageContext) -> Paths:
    ds = ctx.inputs.get("dataset")
    return Paths(
        dataset=ds.path if ds is not None else None,
        out_dir=ctx.out_dir,
        work_dir=ctx.work_dir,
        mlflow_default=(ctx.workspace.root / "mlruns").as_uri(),
    )


def run_training(cfg: TrainConfig, s: Settings, ctx: StageContext, meter: Any) -> dict[str, Any]:
    """Run the loop with ``cfg.executor`` and return rank 0's stats."""
    if cfg.executor == "local":
        if cfg.devices > 1:
            raise ShoestringError("devices > 1 needs executor: torchrun or executor: ray")
        return train_language_model(cfg, s, _paths(ctx), ctx.console, meter)
    job = ctx.work_dir / "job.json"
    p = _paths(ctx)
    atomic_write_json(
        job,
        {
            "config": cfg.model_dump(mode="json"),
            "settings": dataclasses.asdict(s),
            "paths": {k: (str(v) if v is not None else None) for k, v in dataclasses.asdict(p).items()},
        },
    )
    result = ctx.work_dir / "rank0-stats.json"
    result.unlink(missing_ok=True)
    if cfg.executor == "torchrun":
        _launch_torchrun(job, cfg.devices, ctx)
    else:
        _launch_ray(job, cfg.devices, s.device == "cuda", ctx)
    if not result.is_file():
        raise ShoestringError(f"the {cfg.executor} workers exited without results; see the log above")
    stats = json.loads(result.read_text())
    digests = [json.loads(f.read_text())["weights_sha256"] for f in sorted(ctx.work_dir.glob("rank*-weights.json"))]
    stats["rank_weight_digests"] = digests
    stats["executor"] = cfg.executor
    ray_train = ctx.extra_manifest.get("ray_train")
    if ray_train is not None:
        ray_train["resumed_from_step"] = stats.get("resumed_from_step")
        if ray_train["attempts"] > 1:
            ctx.console.print(f"Ray Train ran {ray_train['attempts']} attempts ({ray_train['attempts'] - 1} restarts); "
                              f"the last resumed from the checkpoint at step {stats.get('resumed_from_step')} "
                              f"and trained to step {stats.get('steps')}", highlight=False)  # fmt: skip
    return stats


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _launch_torchrun(job: Path, n: int, ctx: StageContext) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--nnodes=1",
           f"--master_port={_free_port()}", "-m", "shoestring.train.executors", str(job)]  # fmt: skip
    ctx.console.print(f"launching {n} processes: torchrun --nproc_per_node={n}")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise ShoestringError(f"torchrun workers failed (exit {proc.returncode}); see their output above")


def _launch_ray(job: Path, n: int, use_gpu: bool, ctx: StageContext) -> None:
    """Ray Train workers on the recipe's cluster (else a private local Ray), one CPU (or GPU) each.

    A worker whose node dies fails the attempt; Ray Train restarts the worker group (up to
    ``RAY_TRAIN_RESTARTS`` times) with the same ``n`` workers on the nodes left - waiting, and
    retrying, until ``n`` fit - and each restarted rank resumes from the newest checkpoint in the
    durable work folder. A dead node is named on the console within about a second of the
    cluster noticing it, and in the manifest with where every attempt's ranks ran.
    """
    try:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError:
        raise ShoestringError("executor ray needs Ray Train; run `pip install 'shoestring[ray]'`") from None
    started = ensure_ray(n)
    placements = job.parent / RAY_PLACEMENTS
    placements.unlink(missing_ok=True)

    def recovery(node: Node) -> str:
        ran = _attempts(placements)
        if ran and node.name not in ran[-1]:
            return "no Ray Train worker ran there; training goes on"
        return f"Ray Train restarts its {n} workers from the last checkpoint"

    watch = NodeWatch(ctx.console, "train", recovery)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"job": str(job)},
        scaling_config=ScalingConfig(num_workers=n, use_gpu=use_gpu, resources_per_worker=None if use_gpu else {"CPU": 1}),
        run_config=RunConfig(storage_path=str(job.parent / "ray"), name="train",
                             failure_config=FailureConfig(max_failures=RAY_TRAIN_RESTARTS)),
    )  # fmt: skip
    ctx.console.print(f"launching {n} Ray Train workers" + (" on the cluster" if on_cluster() else ""))
    try:
        with _watching(watch):
            trainer.fit()
    except Exception as err:  # Ray Train wraps worker errors in its own types, which vary by version
        raise ShoestringError(f"Ray Train failed after {RAY_TRAIN_RESTARTS} restarts: "
                              f"{(str(err).strip().splitlines() or [type(err).__name__])[-1][:300]}") from None  # fmt: skip
    finally:
        watch.check()
        if started:
            ray.shutdown()
    attempts = _attempts(placements)
    ctx.extra_manifest["ray_train"] = {"workers": n, "attempts": len(attempts), "worker_nodes": attempts,
                                       "dead_nodes": [x.name for x in watch.dead]}  # fmt: skip


@contextlib.contextmanager
def _watching(watch: NodeWatch, every_s: float = 1.0) -> Iterator[None]:
    """Check for dead nodes every ``every_s`` seconds while the body runs (Ray Train blocks the caller)."""
    done = threading.Event()

    def poll() -> None:
        while not done.wait(every_s):
            with contextlib.suppress(Exception):  # a GCS hiccup must not end the run; the final check reports
                watch.check()

    t = threading.Thread(target=poll, name="node-watch", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join(timeout=10)


def _attempts(placements: Path) -> list[list[str]]:
    """Node names of each attempt's ranks (``[attempt][rank]``) from the workers' start records.

    A rank's ``k``-th record is its start in attempt ``k`` (attempts never overlap).
    """
    if not placements.is_file():
        return []
    out: list[dict[int, str]] = []
    seen: dict[int, int] = {}
    for line in placements.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError):
            rec = json.loads(line)
            rank, k = int(rec["rank"]), seen.get(int(rec["rank"]), 0)
            seen[rank] = k + 1
            while len(out) <= k:
                out.append({})
            out[k][rank] = str(rec["node"])
    return [[a[r] for r in sorted(a)] for a in out]


def _ray_worker(config: dict[str, Any]) -> None:
    """Ray Train has already initialised torch.distributed in this worker."""
    import ray
    import ray.train

    job = Path(config["job"])
    node_id = ray.get_runtime_context().get_node_id()
    # Named as NodeWatch names nodes, so its recovery line can tell whether a rank ran on the dead one.
    name = next((n.name for n in cluster_nodes(alive_only=False) if n.node_id == node_id), node_id[:12])
    rec = {"rank": ray.train.get_context().get_world_rank(), "node": name, "node_id": node_id, "pid": os.getpid()}
    with open(job.parent / RAY_PLACEMENTS, "a") as f:  # one short O_APPEND write per rank start
        f.write(json.dumps(rec) + "\n")
    worker_main(job)


def worker_main(job: Path) -> None:
    """One rank of a multi-process run: train, then record the rank's weights digest."""
    import torch
    import torch.distributed as dist
    from rich.console import Console

    from shoestring.core.metering import PeakMemoryMeter

    spec = json.loads(job.read_text())
    cfg = TrainConfig.model_validate(spec["config"])
    s = Settings(**spec["settings"])
    raw = spec["paths"]
    paths = Paths(
        dataset=Path(raw["dataset"]) if raw["dataset"] else None,
        out_dir=Path(raw["out_dir"]),
        work_dir=Path(raw["work_dir"]),
        mlflow_default=raw.get("mlflow_default"),
    )
    if not dist.is_initialized():
        dist.init_process_group("nccl" if s.device == "cuda" else "gloo")
    rank = dist.get_rank()
    if s.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    if s.device != "cuda" and cfg.bound_allocator:  # each worker process has its own heap to bound
        from shoestring.core.allocator import bound_cpu_allocator

        bound_cpu_allocator()
    with PeakMemoryMeter("cuda" if s.device == "cuda" else "cpu") as meter:
        stats = train_language_model(cfg, s, paths, Console(stderr=True), meter)
    digest = stats.pop("_weights_sha256", None)
    atomic_write_json(paths.work_dir / f"rank{rank}-weights.json", {"weights_sha256": digest})
    if rank == 0:
        stats["peak_memory_bytes"] = meter.peak_bytes
        atomic_write_json(paths.work_dir / "rank0-stats.json", stats)
    dist.barrier()
    if dist.is_initialized() and "TORCHELASTIC_RUN_ID" in os.environ:
        dist.destroy_process_group()


if __name__ == "__main__":
    worker_main(Path(sys.argv[1]))
