"""`shoestring plan --cluster ADDR`: plan one training job for a Ray cluster's real nodes.

The nodes' CPUs, GPUs (and their type) and memory are read from Ray. The job is planned on one
node first (all of its GPUs, or one worker on a CPU node with the node's memory); when it does
not fit there (memory, or the time / money budget), on 2, 3, ... nodes, where the planner's
search adds the layouts that shard model state across workers (ZeRO stages, FSDP). Traffic
between nodes is costed at the network's bandwidth (``interconnect_gbps``, default
:data:`NETWORK_GBPS`), not at the GPUs' NVLink: with a hierarchical all-reduce each node's NIC
carries the gradient payload about once per step. The answer names the fewest nodes that fit
and the data / tensor / ZeRO layout on them. CPU nodes are planned with the memory model
(live tensors) unless ``--calibrate true``: this machine's calibration measures this machine,
not the cluster's nodes.

:func:`plan_for_cluster` reads the nodes from Ray and hands them to :func:`plan_for_nodes`, a
pure function of the config and a list of :class:`~shoestring.core.cluster.Node` (no Ray), which
also projects a job onto clusters one does not have (``benchmarks/cluster_projection.py``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    from shoestring.core.cluster import Node
    from shoestring.core.workspace import StageContext
    from shoestring.plan.planner import PlanConfig

__all__ = ["NETWORK_GBPS", "ZERO_STAGE", "cluster_signature", "describe", "plan_for_cluster", "plan_for_nodes",
           "read_cluster"]

NETWORK_GBPS = 25.0
"""Bandwidth between two nodes when the plan does not say (25 Gbit/s Ethernet), Gbit/s."""

ZERO_STAGE = {"single": 0, "ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3, "zero3-offload": 3}
TENSOR_PARALLEL_WHY = ("1: the trainer shards weights, gradients and optimizer states with ZeRO/FSDP "
                       "instead of splitting layers across devices")  # fmt: skip


def read_cluster(address: str) -> list[Node]:
    """The alive nodes of the cluster at ``address`` (joins it for the call unless already joined)."""
    from shoestring.core.cluster import using_cluster

    with using_cluster(address) as nodes:
        if not nodes:
            raise ShoestringError(f"--cluster {address}: the cluster reports no alive nodes")
        return nodes


def cluster_signature(nodes: list[Node]) -> list[list[Any]]:
    """What a cluster plan depends on: each node's CPUs, GPUs, GPU type and memory, sorted."""
    return sorted([[n.cpus, n.gpus, n.accelerator, n.memory_bytes] for n in nodes])


def _device_and_nodes(nodes: list[Node], requested: str) -> tuple[str, list[Node], int]:
    """(planner device name, the nodes that can take a worker, workers per node)."""
    from shoestring.plan.catalogue import CATALOGUE
    from shoestring.plan.hardware import _catalogue_match

    gpu_nodes = sorted((n for n in nodes if n.gpus >= 1), key=lambda n: -n.gpus)
    if gpu_nodes and requested.lower() != "cpu":
        if requested.lower() not in ("auto", "cuda"):
            name = requested
        else:
            match = _catalogue_match(f" {gpu_nodes[0].accelerator}")
            if match is None:
                raise ShoestringError(
                    f"the cluster's GPUs ({gpu_nodes[0].accelerator or 'type not reported'}) are not in the planner's "
                    f"catalogue; pass --device with the closest of: {', '.join(CATALOGUE)}")  # fmt: skip
            name = match
        # The smallest GPU count of the nodes used, so every node holds the same number of workers.
        return name, gpu_nodes, int(min(n.gpus for n in gpu_nodes))
    cpu_nodes = sorted((n for n in nodes if n.cpus >= 1), key=lambda n: (-n.memory_bytes, n.name))
    if not cpu_nodes:
        raise ShoestringError("the cluster has no node with a whole CPU or GPU to run a training worker")
    return "cpu", cpu_nodes, 1


def plan_for_cluster(cfg: PlanConfig, ctx: StageContext | None) -> dict[str, Any]:
    """The ``plan.json`` document for the fewest cluster nodes that hold the job, plus a ``cluster`` section."""
    assert cfg.cluster is not None
    return plan_for_nodes(cfg, read_cluster(cfg.cluster), ctx)


def plan_for_nodes(cfg: PlanConfig, nodes: list[Node], ctx: StageContext | None = None, *,
                   fewest: bool = True) -> dict[str, Any]:
    """The ``plan.json`` document for ``nodes`` (no cluster is contacted), plus a ``cluster`` section.

    ``fewest``: plan on 1, 2, ... of the usable nodes and stop at the first count that fits (what
    ``plan --cluster`` answers); otherwise plan on all of them (a projection for a given cluster size).
    ``cluster.address`` is ``cfg.cluster`` (None when the nodes were not read from a cluster).
    """
    from shoestring.plan.planner import make_plan

    if not nodes:
        raise ShoestringError("no nodes to plan for: give at least one node with a CPU or GPU")
    device, usable, per_node = _device_and_nodes(nodes, cfg.device)
    # CPU nodes: the smallest memory among the nodes used is what each worker may hold.
    tried: list[dict[str, Any]] = []
    plan: dict[str, Any] = {}
    for k in range(1 if fewest else len(usable), len(usable) + 1):
        used = usable[:k]
        update: dict[str, Any] = {"device": device, "devices": k * per_node}
        if cfg.calibrate is None:  # this machine's calibration and twins measure this machine, not the nodes
            update["calibrate"] = False
        if device == "cpu":
            update["memory_limit_gib"] = cfg.memory_limit_gib or min(n.memory_bytes for n in used) / 1024**3
        if k > 1 and cfg.interconnect_gbps is None:
            update["interconnect_gbps"] = NETWORK_GBPS
        plan = make_plan(cfg.model_copy(update=update), ctx, on_nodes=True)
        tried.append({"nodes": k, "workers": k * per_node, "fits": plan["fits"], "parallelism": plan["parallelism"],
                      "peak_memory_bytes": plan["predicted"]["peak_memory_bytes"],
                      "usable_bytes": plan["device"]["usable_bytes"], "total_seconds": plan["predicted"]["total_seconds"],
                      "reason": plan["reason"]})  # fmt: skip
        if plan["fits"]:
            break
    k = tried[-1]["nodes"]
    par = plan["parallelism"]
    if not plan["fits"]:
        why = (f"does not fit even on all {k} usable nodes ({plan['reason']})"
               + (f"; smallest change that fits: {plan['suggestion']}" if plan.get("suggestion") else ""))  # fmt: skip
    elif k == 1:
        why = f"fits on one node ({_gib(tried[0]['peak_memory_bytes'])} peak of {_gib(tried[0]['usable_bytes'])} usable)"
    elif tried[0]["nodes"] == k:
        why = f"planned on all {k} nodes with {par} ({_gib(tried[-1]['peak_memory_bytes'])} per worker)"
    else:
        why = (f"one node cannot hold it ({tried[0]['reason']}); {k} nodes with {par} "
               f"({_gib(tried[-1]['peak_memory_bytes'])} per worker) can")  # fmt: skip
    plan["cluster"] = {
        "address": cfg.cluster,
        "nodes": [asdict(n) for n in nodes],
        "signature": cluster_signature(nodes),
        "device": device,
        "nodes_needed": k if plan["fits"] else None,
        "needs_more_than_one_node": k > 1 or not plan["fits"],
        "use_nodes": [n.name for n in usable[:k]],
        "layout": {"workers": k * per_node, "workers_per_node": per_node, "data_parallel": k * per_node,
                   "tensor_parallel": 1, "tensor_parallel_why": TENSOR_PARALLEL_WHY, "zero_stage": ZERO_STAGE[par],
                   "parallelism": par, "offload": par == "zero3-offload"},
        "interconnect_gbps": cfg.interconnect_gbps or (NETWORK_GBPS if k > 1 else None),
        "why": why,
        "tried": tried,
    }
    return plan


def _gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB"


def describe(cluster: dict[str, Any]) -> list[str]:
    """The cluster section of ``plan.json`` as console lines."""
    lay = cluster["layout"]
    nodes = cluster["nodes"]
    head = (f"cluster {cluster['address'] or '(given nodes)'}: {len(nodes)} nodes, {sum(n['cpus'] for n in nodes):g} CPUs, "
            f"{sum(n['gpus'] for n in nodes):g} GPUs; planned for {cluster['device']}")  # fmt: skip
    if cluster["nodes_needed"] is None:
        return [head, f"[red]no layout fits[/]: {cluster['why']}"]
    verdict = "needs more than one node" if cluster["needs_more_than_one_node"] else "runs on one node"
    return [head,
            f"the job {verdict}: {cluster['why']}",
            f"layout: {cluster['nodes_needed']} node(s) ({', '.join(cluster['use_nodes'])}) x {lay['workers_per_node']} "
            f"worker(s); data parallel {lay['data_parallel']}, tensor parallel {lay['tensor_parallel']}, "
            f"ZeRO stage {lay['zero_stage']} ({lay['parallelism']}{', offloaded' if lay['offload'] else ''})"]  # fmt: skip
