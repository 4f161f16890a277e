"""`shoestring plan --jobs jobs.yaml`: place several planned jobs on the available devices.

Each job is planned like a single run (its own model, data size, method ...;
``shoestring.plan.jobs.schedule_jobs_file`` reads the file and plans each job); the scheduler then assigns jobs to devices by memory (a job runs on a device whose usable
memory holds its predicted peak; several small jobs share a device when their peaks fit
together) in priority order (higher first, then longest first), and simulates the
timeline: a job starts when a device has room for it, finishes ``total_seconds`` later.

jobs.yaml::

    devices:                      # optional; default: --device × --devices
      - {name: gpu0, device: a100-80gb}
      - {name: gpu1, device: l4-24gb}
    jobs:
      - {name: chat-lora, model: smollm2-135m-instruct, dataset_tokens: 2000000, method: lora, priority: 2}
      - {name: big-full, model: ./my-model, dataset_tokens: 50000000, method: full, seq_len: 1024}

Every job key is a ``shoestring plan`` key; ``name`` and ``priority`` are the scheduler's.
On a Ray cluster (``--cluster``) the devices are the cluster's nodes (memory and CPUs as Ray
reports them), a job may also ask for ``cpus:`` and carry a ``train:`` config, which then runs
as a Ray task on its node (:mod:`shoestring.plan.jobs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Job", "Slot", "print_schedule", "schedule"]


@dataclass(frozen=True)
class Job:
    name: str
    memory_bytes: int
    seconds: float
    priority: int = 0
    cpus: float = 0.0
    """CPUs the job holds while it runs (a cluster node's CPUs bound how many run at once)."""


@dataclass
class Slot:
    """A device's (or a cluster node's) timeline: free memory and CPUs and the jobs running on it."""

    name: str
    device: str
    memory_bytes: int
    placed: list[tuple[float, float, int]] = field(default_factory=list)
    """(start s, finish s, bytes) of every job placed on this device."""
    cpus: float = math.inf
    """CPUs of a cluster node (unbounded for a GPU of a single machine)."""
    placed_cpus: list[float] = field(default_factory=list)
    """CPUs of each job in ``placed``, in the same order."""

    def used_at(self, t: float) -> int:
        return sum(b for s, f, b in self.placed if s <= t < f)

    def cpus_used_at(self, t: float) -> float:
        return sum(c for (s, f, _), c in zip(self.placed, self.placed_cpus, strict=True) if s <= t < f)

    def earliest_start(self, need: int, seconds: float, cpus: float = 0.0) -> float:
        """Earliest time from which ``need`` bytes (and ``cpus`` CPUs) stay free for ``seconds``."""
        for t in sorted({0.0, *(f for _, f, _ in self.placed)}):
            events = [t] + [s for s, _, _ in self.placed if t < s < t + seconds]
            if all(self.used_at(e) + need <= self.memory_bytes and self.cpus_used_at(e) + cpus <= self.cpus
                   for e in events):  # fmt: skip
                return t
        return max((f for _, f, _ in self.placed), default=0.0)


def schedule(jobs: list[Job], slots: list[Slot]) -> dict[str, Any]:
    """Greedy list scheduling: highest priority (then longest) job first, onto the device where it can start soonest.

    A job that fits no device even when alone is reported unschedulable with its need.
    """
    order = sorted(jobs, key=lambda j: (-j.priority, -j.seconds, j.name))
    placed: list[dict[str, Any]] = []
    unschedulable = []
    biggest = max((s.memory_bytes for s in slots), default=0)
    for job in order:
        if job.memory_bytes > biggest:
            unschedulable.append({"name": job.name, "needs_bytes": job.memory_bytes,
                                  "reason": f"needs {job.memory_bytes / 1024**3:.1f} GiB, largest device has "
                                            f"{biggest / 1024**3:.1f} GiB"})
            continue
        if not any(job.memory_bytes <= s.memory_bytes and job.cpus <= s.cpus for s in slots):
            most = max(s.cpus for s in slots if job.memory_bytes <= s.memory_bytes)
            unschedulable.append({"name": job.name, "needs_bytes": job.memory_bytes,
                                  "reason": f"needs {job.cpus:g} CPUs, the nodes with room for its "
                                            f"{job.memory_bytes / 1024**3:.1f} GiB have at most {most:g}"})
            continue
        best: tuple[float, int] | None = None
        for i, s in enumerate(slots):
            if job.memory_bytes > s.memory_bytes or job.cpus > s.cpus:
                continue
            start = s.earliest_start(job.memory_bytes, job.seconds, job.cpus)
            # earliest start first; on a tie, the smallest device that holds it (best fit),
            # which keeps the big devices free for the jobs only they can run
            if best is None or (start, s.memory_bytes) < (best[0], slots[best[1]].memory_bytes):
                best = (start, i)
        assert best is not None
        start, i = best
        s = slots[i]
        s.placed.append((start, start + job.seconds, job.memory_bytes))
        s.placed_cpus.append(job.cpus)
        placed.append({"name": job.name, "device": s.name, "device_kind": s.device, "start_seconds": start,
                       "finish_seconds": start + job.seconds, "memory_bytes": job.memory_bytes,
                       "priority": job.priority, "cpus": job.cpus})
    makespan = max((p["finish_seconds"] for p in placed), default=0.0)
    placed.sort(key=lambda p: (p["start_seconds"], p["device"]))
    return {"jobs": placed, "unschedulable": unschedulable, "makespan_seconds": makespan,
            "devices": [{"name": s.name, "device": s.device, "memory_bytes": s.memory_bytes,
                         "cpus": None if math.isinf(s.cpus) else s.cpus} for s in slots]}


def print_schedule(sched: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    ran = any("ran_on" in p for p in sched["jobs"])
    t = Table(title=f"Schedule - makespan {sched['makespan_seconds'] / 60:.1f} min")
    for col in ("job", "device", "priority", "memory", "start", "finish", *(("ran on", "run") if ran else ())):
        t.add_column(col, justify="left" if col in ("job", "device", "ran on") else "right")
    for p in sched["jobs"]:
        extra = (p.get("ran_on", "-"), f"{p['run_seconds']:.1f} s" if "run_seconds" in p else "-") if ran else ()
        t.add_row(p["name"], p["device"], str(p["priority"]), f"{p['memory_bytes'] / 1024**3:.2f} GiB",
                  f"{p['start_seconds'] / 60:.1f} min", f"{p['finish_seconds'] / 60:.1f} min", *extra)
    console.print(t)
    for u in sched["unschedulable"]:
        console.print(f"[red]cannot schedule[/] {u['name']}: {u['reason']}")
