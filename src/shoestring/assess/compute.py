"""The compute bottleneck = g(hardware, allocation, algorithmic optimisation).

From the plan (``plan.json``), the trained model's measured stats, an optional schedule
(``schedule.json`` of ``plan --jobs``) and compression reports. The what-if plans that
price each alternative come from the planner itself (:mod:`shoestring.assess.whatif`).
docs/ASSESS.md states each formula.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoestring.assess.scoring import Change, Component, Wall, clip01, wall_from, wall_score

__all__ = ["COMPUTE_PILLARS", "ComputeFacts", "Variant", "assess_compute", "busy_fraction", "hardware_allocation"]

COMPUTE_PILLARS = ("hardware", "allocation", "algorithmic")
GiB = 1024**3
MEMORY_COMFORT = 0.5
"""Memory use below this fraction of the device is no pressure; the score rises linearly to 1 at the limit."""


@dataclass(frozen=True)
class Variant:
    """One what-if plan: what changed and the planner's answer."""

    change: dict[str, Any]
    """The plan keys that differ from the baseline, e.g. ``{"device": "l4-24gb", "method": "qlora"}``."""
    plan: dict[str, Any]
    """The planner's ``plan.json`` for it."""
    algorithmic: bool
    """True when only algorithmic knobs changed (same device and device count)."""


@dataclass
class ComputeFacts:
    plan: dict[str, Any]
    """The plan artifact's ``plan.json``."""
    train: dict[str, Any] | None = None
    """The trained model's stats (step_seconds, steps, train_seconds, peak_memory_bytes)."""
    schedule: dict[str, Any] | None = None
    """``schedule.json`` of a ``plan --jobs`` artifact."""
    compression: list[dict[str, Any]] = field(default_factory=list)
    """``compression_report.json`` of each compressed model given."""
    baseline: dict[str, Any] | None = None
    """The planner's re-plan of ``plan`` with the what-if settings (the variants' reference)."""
    variants: list[Variant] = field(default_factory=list)
    time_budget_hours: float = 8.0
    cost_budget_usd: float = 100.0


def _frac(n: float, d: float) -> float:
    return n / d if d > 0 else 0.0


def _hours(plan: dict[str, Any]) -> float:
    return float(plan["predicted"]["total_seconds"]) / 3600


def _mfu(plan: dict[str, Any], step_seconds: float) -> float:
    """Achieved FLOP/s of a step over the devices' peak at the compute precision."""
    peak = float(plan["device"]["peak_flops"]) * int(plan.get("devices") or 1)
    return _frac(float(plan["predicted"]["flops_per_step"]) / step_seconds, peak) if step_seconds > 0 else 0.0


def busy_fraction(schedule: dict[str, Any]) -> float:
    """Device-time in use / (devices x makespan); jobs sharing a device count once (union of intervals)."""
    span = float(schedule.get("makespan_seconds") or 0)
    devices = schedule.get("devices") or []
    if span <= 0 or not devices:
        return 0.0
    busy = 0.0
    for d in devices:
        spans = sorted((float(j["start_seconds"]), float(j["finish_seconds"]))
                       for j in schedule.get("jobs", []) if j["device"] == d["name"])
        end = float("-inf")
        for s, e in spans:
            if e > end:
                busy += e - max(s, end)
                end = e
    return busy / (len(devices) * span)


def hardware_allocation(plan: dict[str, Any], f: ComputeFacts, *, measured: bool) -> list[Component]:
    """Hardware and allocation components of one plan; ``measured`` uses the trained run's step time."""
    pred = plan["predicted"]
    usable = float(plan["device"]["usable_bytes"]) or 1.0
    # The least memory any candidate needs (micro-batch 1, checkpointing...): the planner's
    # chosen candidate may use more on purpose, to run faster.
    need = min([float(c["peak_memory_bytes"]) for c in plan.get("candidates", [])] or [float(pred["peak_memory_bytes"])])
    m = need / usable
    step_p = float(pred["step_seconds"])
    step = step_p
    src_t = "plan: predicted.total_seconds"
    t = f.train or {}
    if measured and t.get("step_seconds"):
        step = float(t["step_seconds"])
        src_t = "model: stats.step_seconds (measured) x plan: predicted.steps"
    hours = step * float(pred["steps"]) / 3600
    usd = _frac(float(pred["cost_usd"]) * step, step_p) if step_p else float(pred["cost_usd"])
    dev = f"{plan.get('devices', 1)}x {plan['device']['name']}"
    fits = bool(plan.get("fits"))
    out = [
        Component(
            "memory_pressure", "hardware", "memory the run needs", m, "fraction of usable device memory",
            1.0 if not fits else clip01((m - MEMORY_COMFORT) / (1 - MEMORY_COMFORT)),
            f"s = clip((m - {MEMORY_COMFORT:g}) / {1 - MEMORY_COMFORT:g}), m = least candidate peak / usable memory; "
            "1 when nothing fits",
            "plan: candidates[].peak_memory_bytes, device.usable_bytes",
            f"at least {need / GiB:.2f} GiB of {usable / GiB:.2f} GiB on {dev}"
            + ("" if fits else f" - does not fit: {plan.get('reason', '')}"),
        ),
        Component(
            "run_time", "hardware", "time of the wanted run", hours, "hours", clip01(hours / f.time_budget_hours),
            f"s = min(1, hours / {f.time_budget_hours:g} h time budget)", src_t,
            f"{pred['steps']} steps x {step:.3g} s on {dev}" + (f" (planned {step_p:.3g} s)" if step != step_p else ""),
        ),
        Component(
            "run_cost", "hardware", "cost of the wanted run", usd, "US dollars", clip01(usd / f.cost_budget_usd),
            f"s = min(1, dollars / ${f.cost_budget_usd:g} budget)", "plan: predicted.cost_usd, device.usd_per_hour",
            f"{hours:.3g} h x ${plan['device']['usd_per_hour']:g}/h x {plan.get('devices', 1)} device(s)",
        ),
    ]
    mfu = _mfu(plan, step)
    out.append(Component(
        "compute_idle", "allocation", "paid-for compute left idle", 1 - mfu, "fraction of peak FLOP/s",
        clip01(1 - mfu), "s = 1 - MFU, MFU = FLOPs per step / step seconds / (devices x peak FLOP/s)",
        "plan: predicted.flops_per_step, device.peak_flops" + (", model: stats.step_seconds" if step != step_p else ""),
        f"MFU {mfu:.1%} of {float(plan['device']['peak_flops']) / 1e12:.3g} TFLOP/s per device",
    ))
    if f.schedule:
        busy = busy_fraction(f.schedule)
        n = len(f.schedule.get("devices", []))
        out.append(Component(
            "queue_idle", "allocation", "device time idle in the job schedule", 1 - busy, "fraction of device-time",
            clip01(1 - busy), "s = 1 - union of busy intervals / (devices x makespan)", "schedule: jobs, makespan_seconds",
            f"{len(f.schedule.get('jobs', []))} jobs on {n} devices, makespan "
            f"{float(f.schedule['makespan_seconds']) / 3600:.3g} h, {len(f.schedule.get('unschedulable', []))} unschedulable",
        ))
    else:
        out.append(Component("queue_idle", "allocation", "device time idle in the job schedule", None, "fraction", None,
                             "s = 1 - busy / (devices x makespan)", "schedule",
                             missing="no job schedule given (plan --jobs, then assess --schedule)"))
    return out


def _same_device(f: ComputeFacts) -> list[Variant]:
    return [v for v in f.variants if v.algorithmic and v.plan.get("fits")]


def _algorithmic(f: ComputeFacts) -> list[Component]:
    base = f.baseline
    alts = _same_device(f)
    if base is None or not alts:
        miss = "no what-if plans (assess what_if: true with a plan)"
        return [Component("time_left", "algorithmic", "time known optimisations would save", None, "fraction", None,
                          "s = 1 - T_best / T_now", "planner what-if", missing=miss),
                Component("memory_left", "algorithmic", "memory known optimisations would save", None, "fraction", None,
                          "s = 1 - M_best / M_now", "planner what-if", missing=miss)]
    t_now = float(base["predicted"]["total_seconds"])
    m_now = float(base["predicted"]["peak_memory_bytes"])
    fastest = min(alts, key=lambda v: float(v.plan["predicted"]["total_seconds"]))
    smallest = min(alts, key=lambda v: float(v.plan["predicted"]["peak_memory_bytes"]))
    t_best = min(t_now, float(fastest.plan["predicted"]["total_seconds"]))
    m_best = min(m_now, float(smallest.plan["predicted"]["peak_memory_bytes"]))
    return [
        Component("time_left", "algorithmic", "time known optimisations would save", 1 - _frac(t_best, t_now),
                  "fraction of the planned run time", clip01(1 - _frac(t_best, t_now)),
                  "s = 1 - T_best / T_now over the planner's algorithmic variants on this device", "planner what-if",
                  f"best: {_describe(fastest.change)} at {t_best / 3600:.3g} h vs {t_now / 3600:.3g} h now"
                  if t_best < t_now else "no variant is faster than the current settings"),
        Component("memory_left", "algorithmic", "memory known optimisations would save", 1 - _frac(m_best, m_now),
                  "fraction of the planned peak memory", clip01(1 - _frac(m_best, m_now)),
                  "s = 1 - M_best / M_now over the planner's algorithmic variants on this device", "planner what-if",
                  f"smallest: {_describe(smallest.change)} at {m_best / GiB:.2f} GiB vs {m_now / GiB:.2f} GiB now"
                  if m_best < m_now else "no variant needs less memory than the current settings"),
    ]


def _describe(change: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in change.items()) or "current settings"


def _effect(plan: dict[str, Any]) -> str:
    p = plan["predicted"]
    head = "fits" if plan.get("fits") else "does not fit"
    return (f"{head}, {float(p['total_seconds']) / 3600:.3g} h, ${float(p['cost_usd']):.2f}, "
            f"peak {float(p['peak_memory_bytes']) / GiB:.2f} of {float(plan['device']['usable_bytes']) / GiB:.1f} GiB")


def _changes(f: ComputeFacts, algo: list[Component]) -> list[Change]:
    """Each variant priced by the planner; scores on the planned basis for both sides."""
    if f.baseline is None:
        return []
    now_comps = hardware_allocation(f.baseline, f, measured=False) + algo
    now = wall_score(now_comps, COMPUTE_PILLARS) or 0.0
    t_best = min([float(f.baseline["predicted"]["total_seconds"])]
                 + [float(v.plan["predicted"]["total_seconds"]) for v in _same_device(f)])
    m_best = min([float(f.baseline["predicted"]["peak_memory_bytes"])]
                 + [float(v.plan["predicted"]["peak_memory_bytes"]) for v in _same_device(f)])
    # The planner's MFU on another device is its catalogue assumption, not a measurement, so a
    # change is scored on hardware (and algorithmic) terms; allocation is carried over as it is now.
    allocation = [c for c in now_comps if c.pillar == "allocation"]
    out = []
    for v in f.variants:
        comps = [c for c in hardware_allocation(v.plan, f, measured=False) if c.pillar == "hardware"] + allocation
        if v.algorithmic:  # re-score what is left on the table relative to the same best
            t, m = float(v.plan["predicted"]["total_seconds"]), float(v.plan["predicted"]["peak_memory_bytes"])
            comps += [algo[0].rescored(1 - _frac(t_best, t), 1 - _frac(t_best, t)),
                      algo[1].rescored(1 - _frac(m_best, m), 1 - _frac(m_best, m))]
        else:  # a device change leaves the same algorithmic settings on the table
            comps += algo
        after = wall_score(comps, COMPUTE_PILLARS) or 0.0
        if not v.plan.get("fits"):
            after = max(after, now)  # a change that does not fit never helps
        out.append(Change(_describe(v.change), "planner prediction", now, after, _effect(v.plan),
                          {"change": v.change, "fits": bool(v.plan.get("fits")),
                           "hours": float(v.plan["predicted"]["total_seconds"]) / 3600,
                           "usd": float(v.plan["predicted"]["cost_usd"]), "device": v.plan["device"]["name"],
                           "peak_memory_bytes": int(v.plan["predicted"]["peak_memory_bytes"]),
                           "micro_batch_size": v.plan.get("micro_batch_size"),
                           "activation_checkpointing": v.plan.get("activation_checkpointing")}))
    return out


def applied_optimisations(f: ComputeFacts) -> list[dict[str, Any]]:
    """What the run already uses, with the measured (or planned) effect of each."""
    p, t = f.plan, f.train or {}
    rows: list[dict[str, Any]] = []
    params = p.get("parameters", {})
    if p.get("method") in ("lora", "qlora", "frozen") and params.get("total"):
        rows.append({"optimisation": p["method"], "basis": "planned",
                     "effect": f"{params['trainable']:,} of {params['total']:,} parameters train "
                               f"({_frac(params['trainable'], params['total']):.1%}); optimizer states shrink with them"})
    if p.get("packing") and p.get("data", {}).get("mean_tokens"):
        d = p["data"]
        rows.append({"optimisation": "packing", "basis": "measured on the dataset",
                     "effect": f"{d.get('records', 0):,} records in {d.get('sequences_per_epoch', 0):,} rows of "
                               f"{p['seq_len']} tokens (records average {d['mean_tokens']:.0f} tokens)"})
    prec = t.get("precision") or p.get("precision")
    if prec and prec != "fp32":
        rows.append({"optimisation": f"precision {prec}", "basis": "measured" if t else "planned",
                     "effect": "half-width matmuls under autocast"})
    fast = t.get("fast_paths") or {}
    if fast:
        rows.append({"optimisation": "trainer fast paths", "basis": "measured",
                     "effect": ", ".join(f"{k}={v}" for k, v in fast.items())})
    if p.get("activation_checkpointing"):
        rows.append({"optimisation": "activation checkpointing", "basis": "planned",
                     "effect": "saves block activations, recomputes them in backward"})
    for rep in f.compression:
        parts = [f"{k} {rep[k]:.3g}" for k in ("size_ratio", "speedup", "tokens_per_s_ratio", "ppl_increase_pct", "kl_mean")
                 if isinstance(rep.get(k), int | float)]
        gate = rep.get("gate", {})
        rows.append({"optimisation": f"compress {rep.get('method', '?')}", "basis": "measured against its parent",
                     "effect": ", ".join(parts) + f"; gate {'passed' if gate.get('passed', True) else 'failed'}"})
    return rows


def assess_compute(f: ComputeFacts) -> Wall:
    algo = _algorithmic(f)
    comps = hardware_allocation(f.plan, f, measured=True) + algo
    return wall_from("compute bottleneck", comps, COMPUTE_PILLARS, _changes(f, algo))
