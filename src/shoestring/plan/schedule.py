"""`shoestring plan --jobs jobs.yaml`: place several planned jobs on the available devices.

Each job is planned like a single run (its own model, data size, method ...;
``shoestring.plan.stage.schedule_jobs_file`` reads the file and plans each job); the scheduler then assigns jobs to devices by memory (a job runs on a device whose usable
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
"""

from __future__ import annotations

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


@dataclass
class Slot:
    """A device's timeline: free memory and the jobs running on it."""

    name: str
    device: str
    memory_bytes: int
    placed: list[tuple[float, float, int]] = field(default_factory=list)
    """(start s, finish s, bytes) of every job placed on this device."""

    def used_at(self, t: float) -> int:
        return sum(b for s, f, b in self.placed if s <= t < f)

    def earliest_start(self, need: int, seconds: float) -> float:
        """Earliest time from which ``need`` bytes stay free for ``seconds``."""
        for t in sorted({0.0, *(f for _, f, _ in self.placed)}):
            events = [t] + [s for s, _, _ in self.placed if t < s < t + seconds]
            if all(self.used_at(e) + need <= self.memory_bytes for e in events):
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
        best: tuple[float, int] | None = None
        for i, s in enumerate(slots):
            if job.memory_bytes > s.memory_bytes:
                continue
            start = s.earliest_start(job.memory_bytes, job.seconds)
            # earliest start first; on a tie, the smallest device that holds it (best fit),
            # which keeps the big devices free for the jobs only they can run
            if best is None or (start, s.memory_bytes) < (best[0], slots[best[1]].memory_bytes):
                best = (start, i)
        assert best is not None
        start, i = best
        s = slots[i]
        s.placed.append((start, start + job.seconds, job.memory_bytes))
        placed.append({"name": job.name, "device": s.name, "device_kind": s.device, "start_seconds": start,
                       "finish_seconds": start + job.seconds, "memory_bytes": job.memory_bytes,
                       "priority": job.priority})
    makespan = max((p["finish_seconds"] for p in placed), default=0.0)
    placed.sort(key=lambda p: (p["start_seconds"], p["device"]))
    return {"jobs": placed, "unschedulable": unschedulable, "makespan_seconds": makespan,
            "devices": [{"name": s.name, "device": s.device, "memory_bytes": s.memory_bytes} for s in slots]}


def print_schedule(sched: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    t = Table(title=f"Schedule - makespan {sched['makespan_seconds'] / 60:.1f} min")
    for col in ("job", "device", "priority", "memory", "start", "finish"):
        t.add_column(col, justify="right" if col in ("priority", "memory", "start", "finish") else "left")
    for p in sched["jobs"]:
        t.add_row(p["name"], p["device"], str(p["priority"]), f"{p['memory_bytes'] / 1024**3:.2f} GiB",
                  f"{p['start_seconds'] / 60:.1f} min", f"{p['finish_seconds'] / 60:.1f} min")
    console.print(t)
    for u in sched["unschedulable"]:
        console.print(f"[red]cannot schedule[/] {u['name']}: {u['reason']}")
