"""The `federate` stage: a dataset split into clients -> a model trained by Flower -> a model artifact.

The artifact is an ordinary ``model`` artifact (``model/`` or ``adapter/`` + manifest ``task`` and
``base_model``), so `evaluate`, `compress` and `serve` take it as they take `train`'s. Beside the
model: ``federation.json`` (partition counts, every round, bytes, privacy, the comparison),
``rounds.jsonl``, ``comparison.json``, ``loss.png`` (held-out quality by round) and ``report.html``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.core.errors import ShoestringError
from shoestring.federate.config import FederateConfig

if TYPE_CHECKING:
    from rich.console import Console

    from shoestring.core.artifact import Artifact
    from shoestring.core.workspace import StageContext
    from shoestring.federate.tasks import FederatedTask, Job

__all__ = ["CONFIG", "KIND", "SCHEMA_VERSION", "SUMMARY", "build", "fix_client_noise", "summarize"]

CONFIG = FederateConfig
KIND = "model"
SCHEMA_VERSION = 1
SUMMARY = "Federated training with Flower: clients keep their data; DP per client, SecAgg+, robust to bad clients."

DEFAULT_MODELS = {"classification": "all-minilm-l6-v2", "sft": "smollm2-135m-instruct"}


def _check(cfg: FederateConfig) -> None:
    if cfg.privacy is not None and cfg.task != "classification":
        raise ShoestringError(f"federate: client-side DP-SGD is supported for classification, not {cfg.task}; "
                              "remove `privacy:` or use task: classification")  # fmt: skip
    if cfg.privacy is not None and cfg.strategy == "fedprox":
        raise ShoestringError("federate: fedprox's proximal term is not privatised by DP-SGD; use fedavg, fedadam "
                              "or fedyogi with privacy")  # fmt: skip
    if cfg.engine == "deployment" and cfg.faults.straggler and cfg.superlink:
        raise ShoestringError("federate: faults are injected by our own ClientApps; use them on loopback only")


def _job(cfg: FederateConfig, ctx: StageContext) -> Job:
    from shoestring.federate.tasks import Job

    ds = ctx.inputs.get("dataset")
    model_art = ctx.inputs.get("model")
    model = str(model_art.path) if model_art is not None else (cfg.model or DEFAULT_MODELS.get(cfg.task))
    return Job(config=cfg.model_dump(mode="json"), dataset=str(ds.path) if ds is not None else None,
               model=model if cfg.task != "sequential-recommendation" else None, work_dir=str(ctx.work_dir))  # fmt: skip


def fix_client_noise(job: Job, task: FederatedTask, cfg: FederateConfig, console: Console) -> Job:
    """Fix every client's DP-SGD noise before round 1 (so its budget holds over all rounds)."""
    from dataclasses import replace

    from shoestring.train.privacy import noise_multiplier_for_budget

    p = cfg.privacy
    if p is None:
        return job
    noise: dict[str, float] = {}
    delta: dict[str, float] = {}
    memo: dict[tuple[int, float], float] = {}
    batch = cfg.local_batch_size or 32
    for c in range(len(task.clients)):
        n = task.client_examples(c)
        d = p.delta or 1.0 / (10.0 * max(n, 1))
        steps_per_epoch = max(1, math.ceil(n / batch))
        if p.noise_multiplier is not None:
            sigma = p.noise_multiplier
        elif (n, d) in memo:
            sigma = memo[(n, d)]
        else:
            steps = cfg.rounds * cfg.local_epochs * steps_per_epoch
            sigma = memo[(n, d)] = noise_multiplier_for_budget(float(p.target_epsilon or 0), d, 1.0 / steps_per_epoch,
                                                               steps, p.accountant)  # fmt: skip
        noise[str(c)], delta[str(c)] = float(sigma), float(d)
    console.print(f"  federate: DP-SGD noise multiplier per client {min(noise.values()):.3f}-{max(noise.values()):.3f}")
    return replace(job, noise=noise, delta=delta)


def _run_engine(job: Job, cfg: FederateConfig, n: int, ctx: StageContext) -> dict[str, Any]:
    from shoestring.federate.simulation import PeakTreeMemory

    path = ctx.work_dir / "job.json"
    job.save(path)
    t0 = time.perf_counter()
    with PeakTreeMemory() as meter:
        if cfg.engine == "simulation":
            from shoestring.federate.simulation import run_simulation_engine

            run_simulation_engine(job, n, cfg.workers, ctx.work_dir / "ray.log", meter)
        else:
            from shoestring.federate.deployment import run_deployment_engine

            timeout = cfg.round_timeout_s * (cfg.rounds + 2) + 300
            started = run_deployment_engine(path, n, cfg.port, cfg.superlink, ctx.work_dir, timeout, meter.groups)
    out: dict[str, Any] = {"wall_seconds": round(time.perf_counter() - t0, 2), "peak_rss_bytes": int(meter.peak)}
    if cfg.engine == "deployment":
        out["processes"] = {"superlink": started[0] if started else None, "supernodes": started[1:],
                            "superlink_address": cfg.superlink or f"127.0.0.1:{cfg.port}"}  # fmt: skip
    return out


def _read_server(work: Path) -> tuple[dict[str, Any], Any]:
    import json

    from safetensors.numpy import load_file

    from shoestring.federate.server import DONE_MARKER

    d = work / "server"
    if not (d / DONE_MARKER).is_file():
        logs = work / "flwr-logs"
        raise ShoestringError(f"federate: the Flower run ended before its last round; see {logs if logs.is_dir() else work}")
    saved = json.loads((d / "state.json").read_text(encoding="utf-8"))
    return saved, dict(sorted(load_file(str(d / "global.safetensors")).items()))


def build(cfg: FederateConfig, ctx: StageContext) -> dict[str, Any]:
    from shoestring.federate.evaluation import compare_systems, train_baselines
    from shoestring.federate.loader import load_task
    from shoestring.federate.summary import federation_summary, write_outputs

    _check(cfg)
    job = _job(cfg, ctx)
    task = load_task(job)
    n = len(task.clients)
    ctx.console.print(f"  federate: {cfg.task}, {n} clients ({cfg.partition}), {cfg.rounds} rounds of {cfg.strategy}"
                      f" on Flower's {cfg.engine} engine" + (" with SecAgg+" if cfg.secure_aggregation else ""))  # fmt: skip
    job = fix_client_noise(job, task, cfg, ctx.console)
    if (ctx.work_dir / "server" / "finished.json").is_file():
        run = {"wall_seconds": None, "peak_rss_bytes": None, "resumed": "finished before"}
    else:
        run = _run_engine(job, cfg, n, ctx)
    saved, state = _read_server(ctx.work_dir)
    baselines = train_baselines(task, cfg, ctx.work_dir, ctx.console)
    comparison = compare_systems(task, cfg, state, baselines)
    extras = task.save(state, ctx.out_dir)
    ctx.extra_manifest.update(extras)
    summary = federation_summary(task, cfg, job, saved, comparison, run)
    ctx.extra_manifest["federation"] = {k: summary[k] for k in ("clients", "rounds", "traffic", "privacy", "robustness")}
    if summary["privacy"]:
        ctx.extra_manifest["privacy"] = summary["privacy"]
    write_outputs(ctx.out_dir, summary, saved["rows"])
    return summary["stats"]


def summarize(artifact: Artifact, console: Console) -> None:
    """Federated vs baselines, bytes, privacy and where the report is."""
    s = artifact.stats
    for line in s.get("headline", []):
        console.print(f"  {line}")
    console.print(f"  report: {artifact.path / 'report.html'}")
