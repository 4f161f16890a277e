"""What-if plans: the planner re-run with one change at a time, to price each alternative.

The baseline is the plan artifact's own config re-planned (so both sides of every
comparison come from the same model of the machine); each variant changes algorithmic
knobs on the same device (method, precision, packing) or moves to a catalogue GPU
(with the current method, and with QLoRA where the current method does not fit there).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from shoestring.assess.compute import Variant
from shoestring.core.artifact import Artifact
from shoestring.core.errors import ShoestringError

__all__ = ["WhatIf", "plan_variants"]

# Keys of a plan config that re-planning drops: inputs handled separately, and run-once settings.
_DROP = ("dataset", "jobs", "calibrate", "model")


@dataclass
class WhatIf:
    baseline: dict[str, Any]
    variants: list[Variant]
    seconds: float


def _algorithmic_changes(base: dict[str, Any], plan: dict[str, Any]) -> list[dict[str, Any]]:
    cuda = plan["device"]["kind"] == "cuda"
    out: list[dict[str, Any]] = []
    for method in ("lora", "full", *(("qlora",) if cuda else ())):  # QLoRA's 4-bit kernels need CUDA
        if method != base.get("method"):
            out.append({"method": method})
    if plan.get("precision") == "fp32" and (cuda or _cpu_bf16()):
        out.append({"precision": "bf16-mixed"})
    if not base.get("packing", True) and base.get("task") in ("causal-lm", "sft", "masked-lm"):
        out.append({"packing": True})
    return out


def _cpu_bf16() -> bool:
    from shoestring.core.metering import cpu_bf16_native

    return cpu_bf16_native()


def plan_variants(plan_art: Artifact, dataset: Artifact | None, devices: list[str]) -> WhatIf:
    """The baseline re-plan and every variant; a variant the planner refuses is left out."""
    import json
    import time

    from shoestring.core.config import parse_config
    from shoestring.plan.planner import PlanConfig, make_plan

    t0 = time.perf_counter()
    plan = json.loads(plan_art.file("plan.json").read_text())
    base = {k: v for k, v in plan_art.config.items() if k not in _DROP}
    base["model"] = plan["model"]
    ctx = SimpleNamespace(inputs={"dataset": dataset}) if dataset is not None else None
    if dataset is None and not base.get("dataset_tokens"):
        base["dataset_tokens"] = int(plan["data"]["sequences_per_epoch"]) * int(plan["data"]["tokens_per_sequence"])

    def run(change: dict[str, Any]) -> dict[str, Any] | None:
        cfg = parse_config(PlanConfig, {**base, **change}, "assess what-if")
        try:
            return make_plan(cfg, ctx)  # type: ignore[arg-type]
        except ShoestringError:
            return None

    baseline = run({})
    if baseline is None:
        raise ShoestringError(f"assess: the planner cannot re-plan {plan_art.path}; re-run its plan stage")
    variants: list[Variant] = []
    for change in _algorithmic_changes(base, baseline):
        got = run(change)
        if got is not None:
            variants.append(Variant(change, got, algorithmic=True))
    for dev in devices:
        if dev == baseline["device"]["name"]:
            continue
        got = run({"device": dev, "devices": 1, "parallelism": "auto"})
        if got is None:
            continue
        variants.append(Variant({"device": dev}, got, algorithmic=False))
        if not got["fits"] and base.get("method") != "qlora":
            q = run({"device": dev, "devices": 1, "parallelism": "auto", "method": "qlora"})
            if q is not None:
                variants.append(Variant({"device": dev, "method": "qlora"}, q, algorithmic=False))
    return WhatIf(baseline, variants, time.perf_counter() - t0)
