"""Flower's simulation engine on a private Ray instance of our own.

Flower's Ray backend calls ``ray.init`` with no address, which attaches to the newest Ray
cluster on the machine if there is one - someone else's. So the stage starts its own head
(``ray start --head --block``) with every port fixed inside one block of 100 in 21000-21999
(the block's first ten for Ray's services, the rest for its workers), its own temp folder
under ``/tmp/federate-ray``, and ``workers`` CPUs (one client at a time per CPU); Flower
connects to that address. The head is stopped (its process group, by pid) when the run ends.

Peak memory of the whole run (this process + every Ray process) is sampled while it runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from shoestring.core.errors import ShoestringError
from shoestring.core.processes import port_free, stop_group, stop_recorded, wait_listening

if TYPE_CHECKING:
    from shoestring.federate.tasks import Job

__all__ = ["PeakTreeMemory", "private_ray", "run_simulation_engine"]

RAY_PORT_BLOCKS = range(21000, 22000, 100)
RAY_TEMP_ROOT = Path("/tmp/federate-ray")


def _free_block() -> int:
    for base in RAY_PORT_BLOCKS:
        if all(port_free(base + i) for i in range(10)):
            return base
    raise ShoestringError("federate: no free block of ports in 21000-21999 for Ray; stop other federate runs")


@contextlib.contextmanager
def private_ray(num_cpus: int, log: Path) -> Iterator[tuple[str, int]]:
    """Start a Ray head on fixed loopback ports; yields (address, pid of the head's process group).

    The head's pid is kept in ``<log folder>/ray-head.pid`` so that the next run in the same
    work folder can stop a head that a killed run left behind.
    """
    pidfile = log.parent / "ray-head.pid"
    # A run killed with -9 leaves its Ray head behind: stop that one (ours: a head under our temp root).
    stop_recorded(pidfile, lambda cmd: "start" in cmd and "--head" in cmd and str(RAY_TEMP_ROOT) in cmd)
    ray_bin = Path(sys.executable).with_name("ray")
    exe = str(ray_bin) if ray_bin.is_file() else shutil.which("ray")
    if exe is None:
        raise ShoestringError("federate: the `ray` command is missing; install shoestring[federate]")
    base = _free_block()
    temp = RAY_TEMP_ROOT / f"{os.getpid()}-{base}"
    temp.mkdir(parents=True, exist_ok=True)
    ports = {"--port": 0, "--node-manager-port": 1, "--object-manager-port": 2, "--runtime-env-agent-port": 3,
             "--dashboard-agent-grpc-port": 4, "--dashboard-agent-listen-port": 5, "--metrics-export-port": 6,
             "--ray-client-server-port": 7}  # fmt: skip
    cmd = [exe, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
           "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp),
           "--min-worker-port", str(base + 10), "--max-worker-port", str(base + 99),
           "--object-store-memory", str(256 * 2**20)]  # fmt: skip
    for flag, off in ports.items():
        cmd += [flag, str(base + off)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    pidfile.write_text(str(proc.pid))
    try:
        wait_listening(base, [proc], 180.0, what="federate: the Ray head", log=log)
        yield f"127.0.0.1:{base}", proc.pid
    finally:
        stop_group(proc)  # the head and every worker it started share its process group
        pidfile.unlink(missing_ok=True)
        shutil.rmtree(temp, ignore_errors=True)


class PeakTreeMemory:
    """Samples the summed RSS of this process and the process groups it was given (bytes)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.groups: list[int] = []
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        seen = {p.pid for p in procs}
        if self.groups:
            for p in psutil.process_iter(["pid"]):
                with contextlib.suppress(psutil.Error, ProcessLookupError):
                    if p.pid not in seen and os.getpgid(p.pid) in self.groups:
                        procs.append(p)
                        seen.add(p.pid)
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> PeakTreeMemory:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_simulation_engine(job: Job, n_clients: int, workers: int, log: Path, meter: PeakTreeMemory,
                          on_reply: Any = None, extra_client_mods: list[Any] | None = None) -> None:  # fmt: skip
    """Run the whole federation of ``job`` in Flower's simulation engine."""
    import logging

    import ray
    from flwr.simulation import run_simulation

    from shoestring.federate.client import make_client_app
    from shoestring.federate.server import make_server_app

    cfg = job.cfg()
    server = make_server_app(lambda _ctx: job, on_reply)
    client = make_client_app(lambda _ctx: job, cfg.secure_aggregation, extra_client_mods)
    with private_ray(max(1, workers), log) as (address, group):
        meter.groups.append(group)
        backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                   "init_args": {"address": address, "logging_level": logging.ERROR, "log_to_driver": False}}  # fmt: skip
        try:
            run_simulation(server_app=server, client_app=client, num_supernodes=n_clients, backend_config=backend)
        finally:
            if ray.is_initialized():
                ray.shutdown()
