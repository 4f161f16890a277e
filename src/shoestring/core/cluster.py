"""The one cluster setting, and the one place that connects to Ray.

A recipe's ``cluster: {address: ...}`` (or ``--cluster ADDR`` on the CLI) moves every heavy
stage onto a Ray cluster: curation's per-record phase runs as Ray Data tasks, language-model
training as Ray Train workers. The stages' executors call :func:`ensure_ray`, which joins the
cluster the recipe chose, or starts a private Ray on this machine when a stage asked for
``executor: ray`` without a cluster.

The nodes read and write the workspace directly (chunk shards, checkpoints), so on a cluster of
several machines the workspace must be on a filesystem every node mounts at the same path.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, field_validator
from rich.console import Console

from shoestring.core.errors import ShoestringError

__all__ = [
    "ClusterConfig",
    "Node",
    "NodeWatch",
    "cluster_nodes",
    "ensure_ray",
    "on_cluster",
    "place_on_cluster",
    "using_cluster",
]

C = TypeVar("C", bound=BaseModel)


class ClusterConfig(BaseModel):
    """Where the heavy stages run (recipe key ``cluster:``; ``--cluster`` on the CLI)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    address: str = "local"
    """local = this machine, each stage with its own executor; auto = the Ray cluster this machine
    belongs to ($RAY_ADDRESS, else the newest one started here); host:port = a cluster's head (GCS
    port); ray://host:port = a remote cluster through Ray Client. The workspace must be on a
    filesystem every node mounts."""

    @field_validator("address")
    @classmethod
    def _known_form(cls, v: str) -> str:
        v = v.strip()
        if v in ("local", "auto") or v.startswith("ray://"):
            return v
        host, sep, port = v.rpartition(":")
        if sep and host and port.isdigit():
            return v
        raise ValueError(f"'{v}' is not a cluster address: use local, auto, host:port or ray://host:port")

    @property
    def enabled(self) -> bool:
        return self.address != "local"


_ACTIVE: ClusterConfig | None = None


def place_on_cluster(cfg: C) -> C:
    """A copy of a stage config that runs on Ray: ``executor: ray`` where the stage offers it.

    An executor the user set explicitly (say ``torchrun``) is kept; stages without a Ray
    executor are returned unchanged.
    """
    field = type(cfg).model_fields.get("executor")
    if field is None or "executor" in cfg.model_fields_set or "ray" not in _choices(field.annotation):
        return cfg
    out = cfg.model_copy(deep=True)
    out.executor = "ray"  # type: ignore[attr-defined]
    return out


def _choices(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return tuple(c for a in get_args(annotation) for c in _choices(a))


def on_cluster() -> bool:
    """True while a recipe or verb runs with a cluster address (not ``local``)."""
    return _ACTIVE is not None and _ACTIVE.enabled


@contextlib.contextmanager
def using_cluster(cfg: ClusterConfig | str | None, console: Console | None = None) -> Iterator[list[Node]]:
    """Connect to the cluster for the duration of a run; yields its alive nodes (none when local).

    The connection is closed at exit if this call made it.
    """
    global _ACTIVE
    if isinstance(cfg, str):
        cfg = ClusterConfig(address=cfg)
    if cfg is None or not cfg.enabled:
        yield []
        return
    import ray  # noqa: F401 - checked by _import_ray; keeps the error message in one place

    made = _connect(cfg.address)
    previous, _ACTIVE = _ACTIVE, cfg
    try:
        nodes = cluster_nodes()
        if console is not None:
            cpus = sum(n.cpus for n in nodes)
            console.print(f"cluster {cfg.address}: {len(nodes)} nodes, {cpus:g} CPUs "
                          f"({', '.join(n.label for n in nodes)})")  # fmt: skip
        yield nodes
    finally:
        _ACTIVE = previous
        if made:
            _import_ray().shutdown()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ShoestringError("running on a cluster needs Ray: pip install 'shoestring[ray]'") from None
    return ray


def _connect(address: str) -> bool:
    """``ray.init`` to ``address``; False when this process is already connected."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False, logging_level="ERROR")
    except ConnectionError as err:
        hint = "start one with `ray start --head` or set RAY_ADDRESS" if address == "auto" else "check the address"
        raise ShoestringError(f"cannot reach a Ray cluster at '{address}' ({_first_line(err)}); {hint}") from None
    except (RuntimeError, ValueError) as err:
        raise ShoestringError(f"cannot join the Ray cluster at '{address}': {_first_line(err)}") from None
    return True


def _check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's minute of retries, when nothing listens at host:port."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as err:
        raise ShoestringError(
            f"cannot reach a Ray cluster at '{address}' ({err.strerror or err}); "
            "check the address and that the head is running (`ray start --head`)"
        ) from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def ensure_ray(local_cpus: int) -> bool:
    """Make this process a Ray driver; returns True when it started a private local Ray (caller shuts it down).

    On a cluster run: joins the cluster (or reuses the connection). Otherwise, a Ray that is already
    initialised is reused; failing that, a private instance with ``local_cpus`` CPUs starts here.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if on_cluster():
        assert _ACTIVE is not None
        _connect(_ACTIVE.address)
        return False
    ray.init(num_cpus=max(1, local_cpus), include_dashboard=False, log_to_driver=False, configure_logging=False,
             logging_level="ERROR")  # fmt: skip
    return True


@dataclass(frozen=True)
class Node:
    """One alive node of the cluster (resources are Ray's logical ones)."""

    node_id: str
    name: str
    address: str
    cpus: float
    gpus: float
    memory_bytes: int
    object_store_bytes: int
    is_head: bool
    accelerator: str = ""
    """Ray's ``accelerator_type:`` resource of the node's GPUs (e.g. ``A100``, ``H100``); empty on CPU nodes."""

    @property
    def label(self) -> str:
        gpus = f", {self.gpus:g} GPU" + (f" {self.accelerator}" if self.accelerator else "") if self.gpus else ""
        return f"{self.name}: {self.cpus:g} CPU{gpus}"


def cluster_nodes(alive_only: bool = True) -> list[Node]:
    """The cluster's nodes from ``ray.nodes()`` (head first, then by name)."""
    ray = _import_ray()
    out = []
    for n in ray.nodes():
        if alive_only and not n.get("Alive"):
            continue
        res = n.get("Resources") or {}
        nid = str(n.get("NodeID", ""))
        name = str(n.get("NodeName") or n.get("NodeManagerAddress") or nid[:8])
        is_head = any(k.startswith("node:__internal_head__") for k in res)
        accel = next((k.partition(":")[2] for k in res if k.startswith("accelerator_type:")), "")
        out.append(Node(nid, name, str(n.get("NodeManagerAddress", "")), float(res.get("CPU", 0)),
                        float(res.get("GPU", 0)), int(res.get("memory", 0)), int(res.get("object_store_memory", 0)),
                        is_head, accel))  # fmt: skip
    return sorted(out, key=lambda n: (not n.is_head, n.name, n.node_id))


class NodeWatch:
    """Notices nodes that die while a stage runs, so the user is told which one (one line each)."""

    def __init__(
        self, console: Console | None, stage: str, recovery: str | Callable[[Node], str] = "Ray re-ran its tasks"
    ) -> None:
        self.console = console
        self.stage = stage
        self.recovery = recovery
        """What the stage does about a node's death, as the line goes on: "<recovery> on the N remaining nodes"."""
        self.alive = {n.node_id: n for n in cluster_nodes()} if _import_ray().is_initialized() else {}
        self.dead: list[Node] = []

    def check(self) -> list[Node]:
        """Nodes that were alive at the last check and are not now; each reported once."""
        if not self.alive:
            return []
        now = {n.node_id: n for n in cluster_nodes()}
        gone = [n for nid, n in self.alive.items() if nid not in now]
        for n in gone:
            self.dead.append(n)
            what = self.recovery(n) if callable(self.recovery) else self.recovery
            line = (f"[yellow]cluster:[/] node {n.name} ({n.address}, id {n.node_id[:12]}) died during "
                    f"{self.stage}; {what} on the {len(now)} remaining nodes")  # fmt: skip
            if self.console is not None:
                self.console.print(line, highlight=False)
        self.alive = now
        return gone
