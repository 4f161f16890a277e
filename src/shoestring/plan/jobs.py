"""`shoestring plan --jobs jobs.yaml [--cluster ADDR]`: plan every job of a file, place them, and on a cluster run them.

Without a cluster the devices are the file's ``devices:`` (or ``--device`` × ``--devices``) and
the result is a simulated timeline (:mod:`shoestring.plan.schedule`). With ``--cluster`` the
devices are the cluster's alive nodes, with the memory and CPUs Ray reports for each; every
job is planned for the largest node, placed by its predicted need, and a job that carries a
``train:`` config (the keys of ``shoestring train``) then runs as a Ray task that asks Ray
for exactly what was planned: ``num_cpus`` = the job's ``cpus`` (default 1) and ``memory`` =
the planner's required bytes, on the node the schedule chose (soft affinity: if that node
dies, Ray's retry runs it elsewhere). Ray then enforces what the plan assumed: no node holds
more planned memory or CPUs at once than it has. A job that fits no node is refused with the
reason before any job starts, and nothing is submitted for it.

jobs.yaml on a cluster::

    jobs:
      - name: chat-small
        model: ./tiny-llama            # plan keys: what the job costs
        dataset_tokens: 20000
        method: full
        cpus: 1
        train: {dataset: ./.shoestring/curate/ab12..., model: ./tiny-llama, method: full, max_steps: 20}
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.core.errors import ShoestringError
from shoestring.plan.schedule import Job, Slot, print_schedule, schedule

if TYPE_CHECKING:
    from shoestring.core.cluster import Node
    from shoestring.core.workspace import StageContext

__all__ = ["run_jobs_on_cluster", "schedule_jobs_file"]


def _read_jobs_file(path: Path) -> dict[str, Any]:
    from shoestring.core.config import load_yaml

    raw = load_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("jobs"), list) or not raw["jobs"]:
        raise ShoestringError(f"{path}: needs a non-empty 'jobs:' list (see `shoestring plan --help`)")
    return raw


def _plan_jobs(path: Path, bodies: list[Any], default_device: str,
               memory_limit_gib: float | None = None) -> tuple[list[Job], dict[str, Any], dict[str, Any]]:  # fmt: skip
    """(jobs to schedule, plan details by name, ``train:`` configs by name) of the file's jobs."""
    from shoestring.core.config import parse_config
    from shoestring.plan.planner import PlanConfig, make_plan

    jobs: list[Job] = []
    details: dict[str, Any] = {}
    trains: dict[str, Any] = {}
    for i, body in enumerate(bodies):
        if not isinstance(body, dict):
            raise ShoestringError(f"{path}: jobs[{i}] must be a mapping of plan keys")
        body = dict(body)
        name = str(body.pop("name", f"job{i}"))
        if name in details:
            raise ShoestringError(f"{path}: jobs[{i}]: the name '{name}' is used twice")
        prio = int(body.pop("priority", 0))
        cpus = float(body.pop("cpus", 1 if memory_limit_gib is not None else 0))
        train = body.pop("train", None)
        if train is not None:
            if memory_limit_gib is None:
                raise ShoestringError(f"{path}: jobs[{i}] ({name}): a `train:` job runs only on a cluster (--cluster)")
            if not isinstance(train, dict):
                raise ShoestringError(f"{path}: jobs[{i}] ({name}).train must be a mapping of train keys")
            trains[name] = train
        body.setdefault("device", default_device)
        if memory_limit_gib is not None:
            body.setdefault("memory_limit_gib", memory_limit_gib)
        cfg = parse_config(PlanConfig, body, f"{path}: jobs[{i}] ({name})")
        plan = make_plan(cfg)
        need = int(plan["predicted"]["required_bytes"])
        jobs.append(Job(name, need, float(plan["predicted"]["total_seconds"]), prio, cpus))
        details[name] = {"micro_batch_size": plan["micro_batch_size"], "grad_accum": plan["grad_accum"],
                         "activation_checkpointing": plan["activation_checkpointing"], "fits": plan["fits"],
                         "reason": plan["reason"]}  # fmt: skip
    return jobs, details, trains


def schedule_jobs_file(path: Path, *, device: str, devices: int) -> dict[str, Any]:
    """Plan every job of ``path`` and schedule them on the file's devices (file format in
    :mod:`shoestring.plan.schedule`)."""
    from shoestring.plan.hardware import resolve_device
    from shoestring.plan.search import HEADROOM

    raw = _read_jobs_file(path)
    slots: list[Slot] = []
    for i, d in enumerate(raw.get("devices") or [{"name": f"{device}-{k}", "device": device}
                                                 for k in range(devices)]):  # fmt: skip
        if not isinstance(d, dict) or "device" not in d:
            raise ShoestringError(f"{path}: devices[{i}] needs a 'device:' (cpu or a catalogue name)")
        spec = resolve_device(str(d["device"]))
        usable = int(d["memory_gib"] * 1024**3) if "memory_gib" in d else int(spec.memory_bytes * HEADROOM)
        slots.append(Slot(str(d.get("name", f"{spec.name}-{i}")), spec.name, usable))
    jobs, details, _ = _plan_jobs(path, raw["jobs"], slots[0].device)
    out = schedule(jobs, slots)
    for p in out["jobs"]:
        p["plan"] = details[p["name"]]
    return out


def cluster_slots(nodes: list[Node]) -> list[Slot]:
    """One slot per alive node: Ray's memory resource and CPUs (GPU nodes are planned as CPU memory here)."""
    return [Slot(n.name, "cpu", n.memory_bytes, cpus=n.cpus) for n in nodes if n.cpus > 0 and n.memory_bytes > 0]


def run_jobs_on_cluster(path: Path, address: str, ctx: StageContext) -> dict[str, Any]:
    """Plan, place and run the file's jobs on the cluster at ``address``; returns ``schedule.json``."""
    from shoestring.core.cluster import NodeWatch, using_cluster

    raw = _read_jobs_file(path)
    if raw.get("devices"):
        raise ShoestringError(f"{path}: 'devices:' and --cluster exclude each other: the cluster's nodes are the devices")
    with using_cluster(address, ctx.console) as nodes:
        if not nodes:
            raise ShoestringError(f"--cluster {address}: the cluster reports no alive nodes")
        slots = cluster_slots(nodes)
        biggest = max(s.memory_bytes for s in slots) / 1024**3
        jobs, details, trains = _plan_jobs(path, raw["jobs"], "cpu", memory_limit_gib=biggest)
        checked = {name: _check_train(path, name, body, ctx) for name, body in trains.items()}
        out = schedule(jobs, slots)
        for p in out["jobs"]:
            p["plan"] = details[p["name"]]
        print_schedule(out, ctx.console)
        by_name = {n.name: n for n in nodes}
        watch = NodeWatch(ctx.console, "plan --jobs")
        t0 = time.perf_counter()
        _run_placed(out, checked, by_name, ctx)
        out["wall_seconds"] = time.perf_counter() - t0
        watch.check()
        out["dead_nodes"] = [n.name for n in watch.dead]
    out["cluster"] = {"address": address, "nodes": [{"name": n.name, "cpus": n.cpus, "gpus": n.gpus,
                                                     "memory_bytes": n.memory_bytes} for n in nodes]}  # fmt: skip
    failed = [p for p in out["jobs"] if p.get("error")]
    if failed:
        raise ShoestringError("; ".join(f"job {p['name']} failed on {p.get('ran_on') or '?'}: {p['error']}"
                                        for p in failed))  # fmt: skip
    return out


def _check_train(path: Path, name: str, body: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    """Validate a job's train config and its inputs on the driver, so a typo fails before any job starts."""
    from shoestring.core.config import parse_config
    from shoestring.core.registry import get_stage
    from shoestring.core.workspace import input_fields

    stage = get_stage("train")
    where = f"{path}: {name}.train"
    cfg = parse_config(stage.config, body, where)
    for fname, marker in input_fields(stage.config).items():
        ref = getattr(cfg, fname)
        if ref is not None:
            ctx.workspace.resolve_input(str(ref), marker, {}, f"{where}.{fname}")
    return body


def _run_placed(sched: dict[str, Any], trains: dict[str, dict[str, Any]], nodes: dict[str, Node],
                ctx: StageContext) -> None:  # fmt: skip
    """Submit every placed job with a ``train:`` config as a Ray task with its planned resources; wait for all."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(_run_train_job)
    pending = {}
    for p in sched["jobs"]:
        body = trains.get(p["name"])
        if body is None:
            continue
        cpus = p["cpus"] or 1
        body = {"threads": max(1, int(cpus)), **body}
        p["request"] = {"num_cpus": cpus, "memory": p["memory_bytes"]}
        ref = task.options(num_cpus=cpus, memory=p["memory_bytes"], name=f"job:{p['name']}",
                           scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[p["device"]].node_id, soft=True),
                           ).remote(body, str(ctx.workspace.root), p["name"])  # fmt: skip
        pending[ref] = p
    ids = {n.node_id: n.name for n in nodes.values()}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        p = pending.pop(done[0])
        try:
            res = ray.get(done[0])
        except Exception as err:  # a job's own error (or its node's loss after Ray's retries)
            p["error"] = (str(err).strip().splitlines() or [type(err).__name__])[-1][:300]
            continue
        p.update({"ran_on": ids.get(res["node_id"], res["node_id"][:12]), "artifact": res["artifact"],
                  "cached": res["cached"], "run_seconds": res["seconds"]})  # fmt: skip
        ctx.console.print(f"job {p['name']} ran on {p['ran_on']} in {res['seconds']:.1f} s "
                          f"({'cached' if res['cached'] else 'trained'}): {res['artifact']}")  # fmt: skip


def _run_train_job(body: dict[str, Any], ws_root: str, name: str) -> dict[str, Any]:
    """One job on a cluster node: the train stage in the shared workspace (cached like any stage run)."""
    import ray
    from rich.console import Console

    from shoestring.core.config import parse_config
    from shoestring.core.registry import get_stage
    from shoestring.core.workspace import Workspace, input_fields

    stage = get_stage("train")
    ws = Workspace(ws_root, console=Console(stderr=True, quiet=True))
    cfg = parse_config(stage.config, body, f"{name}.train")
    inputs = {}
    for fname, marker in input_fields(stage.config).items():
        ref = getattr(cfg, fname)
        art = ws.resolve_input(str(ref), marker, {}, f"{name}.train.{fname}") if ref is not None else None
        if art is not None:
            inputs[fname] = art
    res = ws.run(stage, cfg, inputs, label=name)
    return {"node_id": ray.get_runtime_context().get_node_id(), "artifact": str(res.artifact.path),
            "cached": res.cached, "seconds": res.seconds}  # fmt: skip
