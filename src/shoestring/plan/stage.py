"""`shoestring plan`: what fits on this hardware, how long it takes and what it costs.

Writes ``plan.json``: the chosen strategy (the keys ``shoestring train`` reads), the
predicted peak memory by term, step and total time, cost, every candidate considered
and why each rejected one was rejected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoestring.core.errors import ShoestringError
from shoestring.plan.planner import PlanConfig, make_plan
from shoestring.plan.schedule import print_schedule

if TYPE_CHECKING:
    from rich.console import Console

    from shoestring.core.artifact import Artifact
    from shoestring.core.workspace import StageContext

__all__ = ["CONFIG", "KIND", "SCHEMA_VERSION", "SUMMARY", "PlanConfig", "build", "make_plan", "stale", "summarize"]

KIND = "plan"
SCHEMA_VERSION = 1
SUMMARY = "Plan a training run: memory by term, micro-batch and accumulation, time and cost; reject what does not fit."



CONFIG = PlanConfig


def build(cfg: PlanConfig, ctx: StageContext) -> dict[str, Any]:
    from shoestring.core.artifact import atomic_write_json
    from shoestring.core.plan_contract import write_plan

    if cfg.jobs is not None and cfg.cluster is not None:
        from shoestring.plan.jobs import run_jobs_on_cluster

        sched = run_jobs_on_cluster(cfg.jobs, cfg.cluster, ctx)
        atomic_write_json(ctx.out_dir / "schedule.json", sched)
        return {"jobs": len(sched["jobs"]), "refused": len(sched["unschedulable"]),
                "makespan_seconds": sched["makespan_seconds"], "wall_seconds": sched["wall_seconds"]}
    if cfg.jobs is not None:
        from shoestring.plan.jobs import schedule_jobs_file

        sched = schedule_jobs_file(cfg.jobs, device=cfg.device, devices=cfg.devices)
        atomic_write_json(ctx.out_dir / "schedule.json", sched)
        return {"jobs": len(sched["jobs"]), "makespan_seconds": sched["makespan_seconds"]}
    if cfg.cluster is not None:
        from shoestring.plan.cluster_plan import plan_for_cluster

        plan = plan_for_cluster(cfg, ctx)
        ctx.extra_manifest["cluster"] = {k: plan["cluster"][k] for k in ("address", "nodes_needed", "layout")}
    else:
        plan = make_plan(cfg, ctx)
    write_plan(ctx.out_dir, plan)  # validated: a document train could not read fails here
    ctx.extra_manifest["predicted"] = plan["predicted"]
    return {
        "fits": plan["fits"],
        "micro_batch_size": plan["micro_batch_size"],
        "grad_accum": plan["grad_accum"],
        "peak_memory_bytes": plan["predicted"]["peak_memory_bytes"],
        "resident_peak_bytes": plan["predicted"].get("resident_peak_bytes"),
        "step_seconds": plan["predicted"]["step_seconds"],
        "total_seconds": plan["predicted"]["total_seconds"],
        "cost_usd": plan["predicted"]["cost_usd"],
        "candidates": len(plan["candidates"]),
    }


def stale(artifact: Artifact) -> str | None:
    """Why a cached CPU plan no longer holds (None: reuse it). A CPU plan stands on this machine's
    calibration: after ``--calibrate`` (or under another fingerprint: other libraries) the same
    config and dataset are planned again. What was built on the old plan is kept (it was trained)."""
    import json

    from shoestring.plan.hardware import calibration_id

    if (artifact.path / "schedule.json").is_file() and not (artifact.path / "plan.json").is_file():
        return None
    try:
        plan = json.loads((artifact.path / "plan.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "its plan.json is unreadable"
    if plan.get("cluster"):
        from shoestring.plan.cluster_plan import cluster_signature, read_cluster

        try:
            now_nodes = cluster_signature(read_cluster(plan["cluster"]["address"]))
        except ShoestringError as err:
            return f"its cluster cannot be read ({err})"
        if now_nodes != plan["cluster"]["signature"]:
            return "the cluster's nodes changed since it was planned"
    used = plan.get("calibration") or {}
    if (plan.get("device") or {}).get("kind") != "cpu" or "measured_at" not in used:
        return None
    now = calibration_id()
    if now["fingerprint"] != used.get("fingerprint"):
        return "planned under another machine or library fingerprint"
    if now["measured_at"] != used["measured_at"]:
        return f"this machine's calibration changed (measured {now['measured_at'] or '-'}, plan used {used['measured_at'] or 'none'})"
    return None



def _human_bytes(n: float) -> str:
    for unit, div in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"


def _human_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def summarize(artifact: Artifact, console: Console) -> None:
    """Print the plan: memory by term, the chosen strategy, and the candidates."""
    import json

    from rich.table import Table

    from shoestring.plan.cluster_plan import describe

    if (artifact.path / "schedule.json").is_file():
        print_schedule(json.loads((artifact.path / "schedule.json").read_text()), console)
        return
    plan = json.loads(artifact.file("plan.json").read_text())
    pred = plan["predicted"]
    mem = Table(title=f"Memory per device - {plan['model']} ({plan['method']}, {plan['precision']})")
    mem.add_column("term")
    mem.add_column("bytes", justify="right")
    for term, n in pred["memory_terms"].items():
        mem.add_row(term.replace("_", " "), _human_bytes(n))
    mem.add_row("[bold]predicted peak[/]", f"[bold]{_human_bytes(pred['peak_memory_bytes'])}[/]")
    mem.add_row("usable on device", _human_bytes(plan["device"]["usable_bytes"]))
    console.print(mem)
    cands = Table(title="Candidates (best first)")
    for col in ("micro-batch", "accum", "ckpt", "parallel", "peak", "step", "total", "cost", "verdict"):
        cands.add_column(col, justify="right" if col not in ("verdict", "parallel") else "left")
    for c in plan["candidates"][:12]:
        verdict = "[green]fits[/]" if c["fits"] else f"[red]{c['reason']}[/]"
        cands.add_row(str(c["micro_batch_size"]), str(c["grad_accum"]), "on" if c["activation_checkpointing"] else "off",
                      c["parallelism"], _human_bytes(c["peak_memory_bytes"]), _human_seconds(c["step_seconds"]),
                      _human_seconds(c["total_seconds"]), f"${c['cost_usd']:.2f}", verdict)
    console.print(cands)
    p = plan["parameters"]
    head = "[green]plan[/]" if plan["fits"] else "[red]nothing fits[/]"
    for line in describe(plan["cluster"]) if plan.get("cluster") else ():
        console.print(line)
    console.print(
        f"{head}: micro-batch {plan['micro_batch_size']} × accum {plan['grad_accum']} on {plan['devices']}× "
        f"{plan['device']['name']} ({plan['parallelism']}), checkpointing "
        f"{'on' if plan['activation_checkpointing'] else 'off'}; {p['trainable']:,} of {p['total']:,} parameters train; "
        f"{pred['steps']} steps × {_human_seconds(pred['step_seconds'])} = {_human_seconds(pred['total_seconds'])}, "
        f"${pred['cost_usd']:.4f}"
    )
    if pred.get("resident_peak_bytes"):
        console.print(f"[bold]resident peak {_human_bytes(pred['resident_peak_bytes'])}[/] (what top will show; "
                      f"live tensors {_human_bytes(pred['live_peak_bytes'])}), step "
                      f"{pred['step_seconds']:.2f} s wall")
    elif pred.get("reserved_peak_bytes"):
        console.print(f"GPU memory {_human_bytes(pred['reserved_peak_bytes'])} reserved ({pred['reserved_how']})")
    cal = plan.get("calibration") or {}
    if cal:
        console.print(f"calibration: {cal.get('state')} - {cal.get('why')}")
    if artifact.manifest.get("config", {}).get("explain"):
        _print_explain(plan, console)
    heap = plan.get("cpu_heap")
    if heap:
        line = "bounded (memory is tight: resident = live tensors, steps slower)" if heap["bounded"] else (
            "glibc default (fast)")
        if heap.get("resident_peak_upper_bytes"):
            line += f"; resident memory up to {_human_bytes(heap['resident_peak_upper_bytes'])} (its arenas keep freed blocks)"
        console.print(f"CPU heap: {line}")
    if plan["suggestion"]:
        console.print(f"[yellow]smallest change that fits:[/] {plan['suggestion']}")


def _print_explain(plan: dict[str, Any], console: Console) -> None:
    """Every term of the predicted step and memory, with how it was obtained."""
    from rich.table import Table

    table = Table(title="How the plan was obtained")
    for col in ("figure", "term", "value", "how it was obtained"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for row in plan.get("explain") or []:
        v = row["value"]
        value = _human_bytes(v) if row["unit"] == "B" else f"{v:+.3f} s" if "feedback" in row["term"] else f"{v:.3f} s"
        table.add_row(row["figure"], row["term"], value, row["how"])
    console.print(table)
