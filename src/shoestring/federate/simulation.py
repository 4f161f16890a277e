"""Flower's simulation engine on a private Ray head of our own (:class:`~shoestring.core.local_cluster.LocalCluster`).

Flower's Ray backend calls ``ray.init`` with no address, which attaches to the newest Ray
cluster on the machine if there is one - someone else's. So the stage starts its own head
through the project's one way to start a local Ray, ``core.local_cluster.LocalCluster``: a
head-only cluster with ``workers`` CPUs (one client at a time per CPU), every port fixed inside
one free block of 200 in 21000-21999 and its own temp folder; Flower connects to that address.
The head is stopped (its process group) when the run ends, and its log is kept as ``ray.log``.
The head runs in its own session, so a run that is killed (``kill -9``, a test's timeout) would
leave it behind: a small watchdog process stops it (and removes its temp folder) within a second
or two of the run's death, and the next run in the same work folder also stops a head recorded
in ``ray-head.pid`` if both were killed.

Peak memory of the whole run (this process + every Ray process) is sampled while it runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from shoestring.core.errors import ShoestringError
from shoestring.core.local_cluster import BLOCK, LocalCluster
from shoestring.core.processes import port_free

if TYPE_CHECKING:
    from shoestring.federate.tasks import Job

__all__ = ["PeakTreeMemory", "private_ray", "run_simulation_engine"]

RAY_PORT_BLOCKS = range(21000, 22000, BLOCK)
OBJECT_STORE_BYTES = 256 * 2**20


def _free_block() -> int:
    for base in RAY_PORT_BLOCKS:
        if all(port_free(p) for p in range(base, base + BLOCK)):
            return base
    raise ShoestringError("federate: no free block of ports in 21000-21999 for Ray; stop other federate runs")


def _stop_stale_head(pidfile: Path) -> None:
    """A run killed with -9 leaves its Ray head behind; stop that one (by the pid and temp folder it recorded)."""
    if not pidfile.is_file():
        return
    with contextlib.suppress(ValueError, OSError, psutil.Error):
        pid_text, _, temp = pidfile.read_text().strip().partition(" ")
        pid = int(pid_text)
        if temp and temp in " ".join(psutil.Process(pid).cmdline()):
            os.killpg(pid, signal.SIGKILL)
        if temp:
            for p in psutil.process_iter(["pid", "cmdline"]):  # workers that left the head's group
                with contextlib.suppress(psutil.Error):
                    if temp in " ".join(p.info["cmdline"] or []):
                        p.kill()
            shutil.rmtree(temp, ignore_errors=True)
    pidfile.unlink(missing_ok=True)


# Run by a separate interpreter (psutil only): waits for the run (pid + start time) or its head to
# end; if the run died first, SIGKILLs the head's process group and anything using its temp folder.
_WATCHDOG = """
import os, shutil, signal, sys, time
import psutil
run, run_born, head, temp = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def alive(pid, born=None):
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and (born is None or abs(p.create_time() - born) < 1.0)
    except psutil.Error:
        return False
while alive(run, run_born) and alive(head):
    time.sleep(0.5)
if alive(head) and temp in " ".join(psutil.Process(head).cmdline()):
    try:
        os.killpg(head, signal.SIGKILL)
    except OSError:
        pass
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and temp in " ".join(p.info["cmdline"] or []):
                p.kill()
        except psutil.Error:
            pass
    shutil.rmtree(temp, ignore_errors=True)
"""


def _start_watchdog(head_pid: int, temp: Path) -> subprocess.Popen[bytes]:
    me = psutil.Process()
    args = [sys.executable, "-c", _WATCHDOG, str(me.pid), repr(me.create_time()), str(head_pid), str(temp)]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip


@contextlib.contextmanager
def private_ray(num_cpus: int, log: Path) -> Iterator[tuple[str, int]]:
    """Start a head-only local Ray cluster; yields (address, pid of the head's process group).

    A watchdog process stops the head if this process dies without stopping it; the head's pid
    and temp folder are also kept in ``<log folder>/ray-head.pid`` so that the next run in the
    same work folder can stop a head that a killed run (and its watchdog) left behind.
    """
    pidfile = log.parent / "ray-head.pid"
    _stop_stale_head(pidfile)
    log.parent.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(port_base=_free_block(), head_cpus=num_cpus, worker_cpus=[],
                           object_store_bytes=OBJECT_STORE_BYTES, start_timeout=180.0)  # fmt: skip
    try:
        cluster.start()
    except ShoestringError as e:
        raise ShoestringError(f"federate: Ray did not start ({e})") from None
    head = cluster.nodes[0]
    assert cluster.temp_dir is not None
    pidfile.write_text(f"{head.proc.pid} {cluster.temp_dir}")
    watchdog = _start_watchdog(head.proc.pid, cluster.temp_dir)
    try:
        yield cluster.address, head.proc.pid
    finally:
        with contextlib.suppress(OSError):
            log.write_bytes(head.log.read_bytes())
        cluster.stop()
        pidfile.unlink(missing_ok=True)
        watchdog.kill()
        watchdog.wait(timeout=10)


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
        backend: dict[str, Any] = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"address": address, "logging_level": logging.ERROR, "log_to_driver": False}}  # fmt: skip
        try:
            run_simulation(server_app=server, client_app=client, num_supernodes=n_clients, backend_config=backend)
        finally:
            if ray.is_initialized():
                ray.shutdown()
