"""Scheduling several planned jobs onto devices by memory and priority."""

from __future__ import annotations

from pathlib import Path

import yaml

from shoestring.plan.schedule import Job, Slot, schedule

GiB = 1024**3


def test_jobs_share_a_device_when_memory_allows_and_queue_otherwise() -> None:
    slots = [Slot("gpu0", "a100-80gb", 70 * GiB), Slot("gpu1", "l4-24gb", 20 * GiB)]
    jobs = [Job("big", 60 * GiB, 100.0, priority=0), Job("small-a", 8 * GiB, 50.0, priority=1),
            Job("small-b", 8 * GiB, 30.0, priority=1), Job("huge", 90 * GiB, 10.0), Job("mid", 15 * GiB, 40.0)]
    out = schedule(jobs, slots)
    by = {p["name"]: p for p in out["jobs"]}
    assert [u["name"] for u in out["unschedulable"]] == ["huge"]
    assert "largest device has 70.0 GiB" in out["unschedulable"][0]["reason"]
    # Priority 1 jobs go first and start at 0, best fit: both small ones share the L4.
    assert (by["small-a"]["device"], by["small-a"]["start_seconds"]) == ("gpu1", 0)
    assert (by["small-b"]["device"], by["small-b"]["start_seconds"]) == ("gpu1", 0)
    # 'big' takes the A100 at once; 'mid' (15 GiB) fits neither beside 'big' (60+15 > 70)
    # nor beside a small job on the L4 (8+15 > 20): it waits for the L4 to empty at t=50.
    assert (by["big"]["device"], by["big"]["start_seconds"]) == ("gpu0", 0)
    assert (by["mid"]["device"], by["mid"]["start_seconds"]) == ("gpu1", 50.0)
    assert out["makespan_seconds"] == 100.0
    # Never more memory in use on a device than it has, at any start time.
    for s in slots:
        for _, f, _ in s.placed:
            assert s.used_at(f - 1e-9) <= s.memory_bytes


def test_jobs_file_plans_each_job_then_schedules(tmp_path: Path, tiny_llama: Path) -> None:
    from shoestring.plan.jobs import schedule_jobs_file

    f = tmp_path / "jobs.yaml"
    f.write_text(yaml.safe_dump({
        "devices": [{"name": "gpu0", "device": "l4-24gb"}],
        "jobs": [
            {"name": "a", "model": str(tiny_llama), "dataset_tokens": 1_000_000, "method": "full", "priority": 1},
            {"name": "b", "model": str(tiny_llama), "dataset_tokens": 500_000, "method": "lora"},
        ],
    }))
    out = schedule_jobs_file(f, device="l4-24gb", devices=1)
    assert [p["name"] for p in out["jobs"]] == ["a", "b"]  # both fit together: start together, a listed first
    assert all(p["start_seconds"] == 0 for p in out["jobs"])
    assert out["jobs"][0]["plan"]["fits"]
