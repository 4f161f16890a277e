"""Resolve a run's knobs from the config, the plan artifact and defaults; list deviations.

The planner promised that a given (model, method, seq_len, micro-batch, precision,
checkpointing) fits the hardware. If the user overrides one of those, the run may not fit:
we keep the user's value (they may know better) and warn, naming each deviation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

from shoestring.core.errors import ShoestringError
from shoestring.models.tasks import training_task
from shoestring.train.config import Task, TrainConfig

if TYPE_CHECKING:
    from shoestring.core.plan_contract import PlanDocument

__all__ = ["Settings", "resolve_settings"]

_DEFAULTS: dict[str, Any] = {
    "task": "sft",
    "method": "lora",
    "seq_len": 512,
    "micro_batch_size": 8,
    "grad_accum": 1,
    "activation_checkpointing": False,
}
_PLANNED = (
    "model",
    "task",
    "method",
    "seq_len",
    "micro_batch_size",
    "grad_accum",
    "precision",
    "activation_checkpointing",
)
_PRECISION_ALIASES = {
    "float32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "bf16-mixed": "bf16",
    "fp16-mixed": "fp16",
}
# SFT and causal-LM pretraining cost the same memory and time: the planner calls both causal-lm.
_EQUIVALENT = {("task", "causal-lm", "sft")}


@dataclass
class Settings:
    """The values a run actually uses."""

    model: str
    task: str
    method: str
    seq_len: int
    micro_batch_size: int
    grad_accum: int
    precision: str
    activation_checkpointing: bool
    device: str
    lr: float
    deviations: list[str] = field(default_factory=list)
    """One line per knob set differently from the plan."""
    predicted: dict[str, Any] = field(default_factory=dict)
    """The plan's predictions (peak_memory_bytes, step_seconds, total_seconds, cost_usd)."""


def _plan_value(plan: PlanDocument | None, key: str) -> Any:
    val = getattr(plan, key, None)
    if key == "task" and isinstance(val, str):
        val = training_task(val)
    if key == "precision" and isinstance(val, str):
        val = _PRECISION_ALIASES.get(val, val)
        if val not in ("fp32", "bf16", "fp16"):
            return None  # int8/int4 weight formats are the method's business (qlora), not autocast's
    return val


def resolve_settings(cfg: TrainConfig, plan: PlanDocument | None, cuda_available: bool) -> Settings:
    """Explicit config value > plan value > default; record every explicit-vs-plan mismatch."""
    chosen: dict[str, Any] = {}
    deviations: list[str] = []
    for key in _PLANNED:
        mine = getattr(cfg, key)
        if key == "precision" and mine == "auto":
            mine = None
        planned = _plan_value(plan, key)
        if mine is not None:
            chosen[key] = mine
            if planned is not None and str(planned) != str(mine) and (key, str(planned), str(mine)) not in _EQUIVALENT:
                deviations.append(f"{key}: planned {planned}, running {mine}")
        elif planned is not None:
            chosen[key] = planned
        else:
            chosen[key] = _DEFAULTS.get(key)
    if chosen["model"] is None:
        raise ShoestringError(
            "train: no model; set `model:` (e.g. smollm2-135m-instruct) or pass a plan that names one"
        )
    if chosen["task"] not in get_args(Task):
        raise ShoestringError(f"train: unknown task '{chosen['task']}' (from the plan); set `task:` explicitly")
    device = cfg.device
    if device == "auto":
        device = "cuda" if cuda_available else "cpu"
    elif device == "cuda" and not cuda_available:
        raise ShoestringError("device cuda requested but no CUDA GPU is visible; use device: cpu (or auto)")
    if chosen["method"] == "qlora" and device != "cuda":
        raise ShoestringError(
            "method qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); on CPU use method: lora "
            "(same adapter, full-precision base)"
        )
    if cfg.strategy == "fsdp" and cfg.devices > 1 and device != "cuda":
        raise ShoestringError(
            "strategy fsdp needs CUDA GPUs (torch's FSDP has no CPU backend); on CPU use strategy: ddp"
        )
    precision = chosen["precision"]
    if precision is None:
        from shoestring.core.metering import cpu_bf16_native

        # bf16 autocast (fp32 master weights) where the hardware multiplies bf16 natively.
        precision = "bf16" if device == "cuda" or cpu_bf16_native() else "fp32"
    if precision == "fp16" and device == "cpu":
        deviations.append("precision: fp16 needs CUDA; running bf16 autocast on CPU instead")
        precision = "bf16"
    pdev = plan.device if plan is not None else None
    plan_device = (pdev.kind or pdev.name) if pdev is not None else ""
    if plan_device and not _same_device_kind(plan_device, device):
        deviations.append(f"device: planned {plan_device}, running {device}")
    lr = cfg.lr
    if lr is None:
        lr = 1e-3 if cfg.from_scratch else (2e-4 if chosen["method"] in ("lora", "qlora") else 5e-5)
    predicted = plan.predicted.model_dump(mode="json", exclude_unset=True) if plan is not None else {}
    return Settings(
        model=str(chosen["model"]),
        task=str(chosen["task"]),
        method=str(chosen["method"]),
        seq_len=int(chosen["seq_len"]),
        micro_batch_size=int(chosen["micro_batch_size"]),
        grad_accum=int(chosen["grad_accum"]),
        precision=str(precision),
        activation_checkpointing=bool(chosen["activation_checkpointing"]),
        device=device,
        lr=float(lr),
        deviations=deviations,
        predicted=predicted,
    )


def _same_device_kind(planned: str, running: str) -> bool:
    p = planned.lower()
    if running == "cpu":
        return "cpu" in p or not any(w in p for w in ("cuda", "gpu", "nvidia", "h100", "a100", "l4", "t4"))
    return not ("cpu" in p and not any(w in p for w in ("cuda", "gpu", "nvidia")))
