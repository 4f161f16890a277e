"""A real multi-node Ray cluster on one machine: a head and worker nodes as separate ``ray start`` processes.

Used by the cluster tests and the Ray benchmarks, and by anyone who wants to try ``--cluster``
without a second machine. ``num_cpus`` is Ray's logical count, so one 2-core machine can host
several 1-CPU nodes. Every port is fixed inside one block of ``BLOCK`` ports (node ``i`` uses
``base + 40 i`` .. ``+ 11`` for its services and ``+ 12`` .. ``+ 39`` for its workers), and the
cluster has its own temp folder, so it never collides with another Ray on the machine and
``ray.init()`` elsewhere never finds it. Each node runs in its own process group: killing a
node (:meth:`LocalCluster.kill_node`) is ``SIGKILL`` to that group, the way a machine dies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from shoestring.core.errors import ShoestringError
from shoestring.core.processes import port_free, stop_group, wait_listening

__all__ = ["BLOCK", "LocalCluster", "NodeProcess"]

BLOCK = 200  # ports per cluster: up to 5 nodes of 40 ports
_PER_NODE = 40
# Services of a node at fixed offsets in its 40 ports (the head also gets the GCS and client ports).
_SERVICES = {"--node-manager-port": 0, "--object-manager-port": 1, "--runtime-env-agent-port": 2,
             "--dashboard-agent-grpc-port": 3, "--dashboard-agent-listen-port": 4, "--metrics-export-port": 5}  # fmt: skip
_HEAD_ONLY = {"--port": 6, "--ray-client-server-port": 7, "--dashboard-port": 8}
# The head's autoscaler monitor and dashboard export metrics on ports that only an environment variable moves.
_HEAD_ENV_PORTS = {"AUTOSCALER_METRIC_PORT": 9, "DASHBOARD_METRIC_PORT": 10}
_FIRST_WORKER_PORT = 12


@dataclass
class NodeProcess:
    name: str
    index: int
    num_cpus: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class LocalCluster:
    """Head + workers on loopback ports ``[port_base, port_base + BLOCK)``; use as a context manager.

    ``memory_bytes`` is each node's logical memory resource (what the planner reads as the
    node's memory); ``object_store_bytes`` its shared-memory object store (Ray's minimum is 75 MiB).
    """

    port_base: int
    head_cpus: int = 1
    worker_cpus: list[int] = field(default_factory=lambda: [1, 1])
    object_store_bytes: int = 100 * 2**20
    memory_bytes: int = 2 * 2**30
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 120.0
    nodes: list[NodeProcess] = field(default_factory=list)
    temp_dir: Path | None = None
    startup_seconds: float = 0.0
    """Wall seconds from the first `ray start` until every node was alive in the cluster's view."""

    @property
    def address(self) -> str:
        """The GCS address drivers pass to ``ray.init`` (and ``--cluster``)."""
        return f"127.0.0.1:{self.port_base + _HEAD_ONLY['--port']}"

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if len(self.worker_cpus) + 1 > BLOCK // _PER_NODE:
            raise ShoestringError(f"a local cluster holds at most {BLOCK // _PER_NODE} nodes")
        busy = [p for p in range(self.port_base, self.port_base + BLOCK) if not port_free(p)]
        if busy:
            raise ShoestringError(f"ports {busy[:3]}... in {self.port_base}-{self.port_base + BLOCK - 1} are taken; "
                                  "stop the other cluster or pick another port base")  # fmt: skip
        # A short path: Ray's unix sockets live under it and must stay under 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix=f"ss-ray-{self.port_base}-", dir="/tmp"))
        t0 = time.perf_counter()
        try:
            self._start_node(0, "head", self.head_cpus)
            _wait_node(self.port_base + _HEAD_ONLY["--port"], self.nodes[0], self.start_timeout)
            for i, cpus in enumerate(self.worker_cpus, start=1):
                self.add_node(cpus, index=i)
            self.wait_for_nodes(len(self.nodes), self.start_timeout)
            self.startup_seconds = time.perf_counter() - t0
        except BaseException:
            self.stop()
            raise

    def add_node(self, num_cpus: int, index: int | None = None) -> NodeProcess:
        """Start one more worker node and wait for its raylet to listen."""
        i = index if index is not None else max(n.index for n in self.nodes) + 1
        if i >= BLOCK // _PER_NODE:
            raise ShoestringError(f"a local cluster has port room for {BLOCK // _PER_NODE} nodes in all")
        node = self._start_node(i, f"worker-{i}", num_cpus)
        _wait_node(self.port_base + _PER_NODE * i + _SERVICES["--node-manager-port"], node, self.start_timeout)
        return node

    def _start_node(self, i: int, name: str, num_cpus: int) -> NodeProcess:
        assert self.temp_dir is not None
        exe = Path(sys.executable).with_name("ray")
        ray = str(exe) if exe.is_file() else shutil.which("ray")
        if ray is None:
            raise ShoestringError("the `ray` command is missing: pip install 'shoestring[ray]'")
        base = self.port_base + _PER_NODE * i
        cmd = [ray, "start", "--block", "--disable-usage-stats", "--node-name", name, "--num-cpus", str(num_cpus), "--num-gpus", "0",
               "--memory", str(self.memory_bytes), "--object-store-memory", str(self.object_store_bytes),
               "--min-worker-port", str(base + _FIRST_WORKER_PORT), "--max-worker-port", str(base + _PER_NODE - 1),
               "--temp-dir", str(self.temp_dir)]  # fmt: skip
        for flag, off in _SERVICES.items():
            cmd += [flag, str(base + off)]
        if i == 0:
            cmd += ["--head", "--include-dashboard", "false"]
            for flag, off in _HEAD_ONLY.items():
                cmd += [flag, str(self.port_base + off)]
        else:
            cmd += ["--address", self.address]
        log = self.temp_dir / f"{name}.log"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **self.env,
               **{k: str(self.port_base + off) for k, off in _HEAD_ENV_PORTS.items()}}  # fmt: skip
        env.pop("RAY_ADDRESS", None)
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        node = NodeProcess(name, i, num_cpus, proc, log)
        self.nodes.append(node)
        return node

    def wait_for_nodes(self, n: int, timeout: float) -> None:
        """Block until ``n`` nodes are alive in the cluster's own view (a short-lived driver asks it)."""
        probe = ("import ray,sys,time\nray.init(address=sys.argv[1],logging_level='ERROR',log_to_driver=False)\n"
                 "end=time.time()+float(sys.argv[3])\n"
                 "while sum(x['Alive'] for x in ray.nodes())<int(sys.argv[2]) and time.time()<end: time.sleep(0.2)\n"
                 "sys.exit(0 if sum(x['Alive'] for x in ray.nodes())>=int(sys.argv[2]) else 1)\n")  # fmt: skip
        env = {**os.environ, **self.env}
        env.pop("RAY_ADDRESS", None)
        rc = subprocess.run([sys.executable, "-c", probe, self.address, str(n), str(timeout)], env=env,
                            capture_output=True, timeout=timeout + 60, check=False)  # fmt: skip
        if rc.returncode != 0:
            raise ShoestringError(f"local Ray cluster: {n} nodes did not come up within {timeout:.0f} s "
                                  f"({rc.stderr.decode(errors='replace').strip()[-300:]})")  # fmt: skip

    def node(self, name: str) -> NodeProcess:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def kill_node(self, name: str) -> None:
        """SIGKILL a node's whole process group (its raylet, object store and workers)."""
        stop_group(self.node(name).proc, grace_s=0)

    def replace_node(self, name: str) -> NodeProcess:
        """Kill ``name`` if it still runs and start a fresh worker node (new name, new ports) with its CPUs."""
        old = self.node(name)
        stop_group(old.proc, grace_s=0)
        self.nodes.remove(old)
        new = self.add_node(old.num_cpus, index=max([old.index, *(n.index for n in self.nodes)]) + 1)
        self.wait_for_nodes(len(self.nodes), self.start_timeout)
        return new

    def stop(self) -> None:
        """Stop workers first, then the head; sweep any process still using the cluster's temp folder."""
        for node in sorted(self.nodes, key=lambda n: -n.index):
            stop_group(node.proc, grace_s=15)
        if self.temp_dir is not None:
            for p in self.leftover_processes():
                with contextlib.suppress(psutil.Error):
                    p.kill()
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def leftover_processes(self) -> list[psutil.Process]:
        """Processes of this cluster still running: its nodes' process groups, or its temp folder in their command line."""
        groups = {n.proc.pid for n in self.nodes}
        out = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if p.pid == os.getpid():
                    continue
                cmd = " ".join(p.info["cmdline"] or [])
                ours = (self.temp_dir is not None and str(self.temp_dir) in cmd) or os.getpgid(p.pid) in groups
                if ours and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
        return out


def _wait_node(port: int, node: NodeProcess, timeout: float) -> None:
    wait_listening(port, [node.proc], timeout, what=f"Ray node {node.name}", log=node.log, poll_s=0.2)
