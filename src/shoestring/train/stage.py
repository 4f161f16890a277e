"""The `train` stage: dataset (+ plan) → model artifact (``adapter/`` or ``model/``).

Language-model tasks (sft, causal-lm, masked-lm, classification) run the loop in
:mod:`shoestring.train.loop`, locally or across processes (torchrun / Ray Train);
``sequential-recommendation`` and ``tabular-classification`` go to their own trainers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.core.errors import ShoestringError
from shoestring.train.config import LM_TASKS, LoraOptions, TrainConfig

if TYPE_CHECKING:
    from rich.console import Console

    from shoestring.core.artifact import Artifact
    from shoestring.core.plan_contract import PlanDocument
    from shoestring.core.workspace import StageContext

__all__ = ["CONFIG", "KIND", "SCHEMA_VERSION", "SUMMARY", "build", "summarize"]

CONFIG = TrainConfig
KIND = "model"
SCHEMA_VERSION = 1
SUMMARY = "Train or fine-tune a model (SFT, LoRA/QLoRA, causal/masked LM, classification, recsys, tabular)."


def build(cfg: TrainConfig, ctx: StageContext) -> dict[str, Any]:
    from shoestring.core.metering import PeakMemoryMeter
    from shoestring.core.plan_contract import load_plan
    from shoestring.train.settings import resolve_settings

    plan_art = ctx.inputs.get("plan")
    plan = load_plan(plan_art.path) if plan_art is not None else None
    task = cfg.task or (plan.task if plan is not None else None) or "sft"
    ctx.extra_manifest["task"] = task
    bounded, why = _bound_allocator(cfg, plan.predicted.peak_memory_bytes if plan is not None else None)
    ctx.extra_manifest["cpu_allocator"] = {"bounded": bounded, "why": why}
    cfg = cfg.model_copy(update={"bound_allocator": bounded})  # worker processes decide the same
    if task == "sequential-recommendation":
        from shoestring.train.recsys import train_recommender

        return train_recommender(cfg, ctx)
    if task == "tabular-classification":
        from shoestring.train.tabular import train_tabular

        return train_tabular(cfg, ctx)

    import torch

    from shoestring.core.allocator import trim_heap

    trim_heap()  # what earlier stages of this process freed is not the run's
    # Baseline before anything heavy is loaded, so peak memory covers model + training.
    meter = PeakMemoryMeter("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    meter.__enter__()
    try:
        model_art = ctx.inputs.get("model")
        if model_art is not None:
            cfg = cfg.model_copy(update={"model": str(model_art.path)})
        cfg = _adopt_plan_extras(cfg, plan)
        s = resolve_settings(cfg, plan, torch.cuda.is_available())
        ds = ctx.inputs.get("dataset")
        if cfg.task is None and s.task == "causal-lm" and ds is not None and _has_chats(ds.path, cfg.messages_field):
            s.task = "sft"  # the planner says causal-lm for any decoder run; chat records mean SFT
        if s.task not in LM_TASKS:
            raise AssertionError(s.task)
        ctx.extra_manifest["task"] = s.task
        for line in s.deviations:
            ctx.console.print(f"[yellow]warning:[/] run deviates from the plan - {line}; it may not fit as predicted")
        if cfg.privacy is not None and s.task != "classification":
            raise ShoestringError(
                f"privacy (DP-SGD) is supported for classification and tabular-classification, "
                f"not {s.task}; remove `privacy:` or change the task"
            )
        if cfg.privacy is not None:
            from shoestring.train.dp_classify import train_dp_classifier

            if cfg.executor != "local" or cfg.devices > 1:
                ctx.console.print(
                    "[yellow]warning:[/] DP-SGD classification runs in one process; executor/devices ignored"
                )
            stats = train_dp_classifier(cfg, s, ctx)
            stats["peak_memory_bytes"] = int(meter.peak_bytes)
        else:
            from shoestring.train.executors import run_training

            stats = run_training(cfg, s, ctx, meter)
    finally:
        meter.stop()
    if (ctx.out_dir / "adapter").is_dir():
        ctx.extra_manifest["base_model"] = s.model
    comparison = plan_comparison(plan, stats, s.deviations)
    ctx.extra_manifest["plan_comparison"] = comparison
    stats["plan_errors"] = comparison["errors"]
    _feed_back(plan, comparison, s.deviations, meter.device)
    return stats


def plan_comparison(plan: PlanDocument | None, stats: dict[str, Any], deviations: list[str]) -> dict[str, Any]:
    """The plan's predictions beside what this run measured, with the relative errors.

    Resident peak = the process's peak RSS (what ``top`` shows); step = median wall seconds of
    an optimizer step (collate included); run = the training function's wall time, which the
    plan's per-run terms predict for this run's own cadence (setup + steps x step + evaluation
    passes + checkpoint writes).
    """
    pred = plan.predicted.model_dump(mode="json", exclude_unset=True) if plan is not None else {}
    run = (plan.run if plan is not None else None) or {}
    steps = stats.get("steps") or 0
    if pred.get("step_seconds") and steps:
        parts = [pred["step_seconds"] * (steps - (stats.get("resumed_from_step") or 0))]
        if run.get("setup_seconds") is not None:
            parts.append(run["setup_seconds"])
        if run.get("eval_seconds_per_row") is not None:
            parts.append(run["eval_seconds_per_row"] * (stats.get("val_rows") or 0) * (stats.get("eval_passes") or 0))
        if run.get("checkpoint_seconds") is not None:
            parts.append(run["checkpoint_seconds"] * (stats.get("checkpoints") or 0))
        pred["run_seconds"] = sum(parts)
    measured = {k: stats.get(k) for k in ("resident_peak_bytes", "peak_memory_bytes", "step_seconds", "run_seconds",
                                          "setup_seconds", "eval_seconds", "checkpoint_seconds")}
    pairs = {"resident_peak_bytes": "resident_peak_bytes", "live_peak_bytes": "peak_memory_bytes",
             "step_seconds": "step_seconds", "run_seconds": "run_seconds"}
    errors = {}
    for p_key, m_key in pairs.items():
        p, m = pred.get(p_key), measured.get(m_key)
        if isinstance(p, int | float) and isinstance(m, int | float) and m > 0:
            errors[p_key] = round(p / m - 1.0, 4)
    return {"predicted": pred, "measured": measured, "errors": errors, "deviations": deviations}


def _feed_back(plan: PlanDocument | None, comparison: dict[str, Any], deviations: list[str], device: str) -> None:
    """Append this run to the machine's run log, where later plans read their correction
    (``shoestring.plan.feedback``). Only a CPU run that followed its plan counts."""
    fb = plan.feedback if plan is not None else None
    key = ((plan.calibration if plan is not None else None) or {}).get("fingerprint")
    if not fb or not key or deviations or device != "cpu":
        return
    import time

    from shoestring.core.metering import append_run_record
    from shoestring.models.loading import cache_dir

    measured = comparison["measured"]
    record = {"job": fb.get("job"), "family": fb.get("family"), "predicted": fb.get("model", {}),
              "measured": {"resident_peak_bytes": measured.get("resident_peak_bytes"),
                           "step_seconds": measured.get("step_seconds")},
              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    import contextlib

    with contextlib.suppress(OSError):  # a read-only cache folder must not fail a finished run
        append_run_record(cache_dir() / "runs" / f"{key}.jsonl", record)


def _bound_allocator(cfg: TrainConfig, predicted: int | None) -> tuple[bool, str]:
    """Decide (and apply) glibc's fixed mmap threshold before any model is loaded.

    Bounded, RSS follows live tensors (quickstart shape: 5.2 GiB peak RSS unbounded vs 3.4 GiB
    bounded) but every large allocation page-faults. Auto bounds only when memory is tight:
    ``predicted`` is the plan's peak memory per device (bytes; None without a plan).
    """
    import torch

    from shoestring.core.allocator import UNBOUNDED_HEAP_FACTOR, bound_cpu_allocator, needs_bounded_heap

    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return False, "GPU run"
    if cfg.bound_allocator is False:
        return False, "bound_allocator: false"
    if cfg.bound_allocator is None:
        import psutil

        if not predicted:
            return False, "auto: no plan, glibc's default heap"
        available = psutil.virtual_memory().available
        if not needs_bounded_heap(predicted, available):
            return False, (f"auto: planned peak {predicted / 2**30:.1f} GiB x {UNBOUNDED_HEAP_FACTOR} fits in 80% "
                           f"of {available / 2**30:.1f} GiB available")  # fmt: skip
    applied = bound_cpu_allocator()
    why = (
        "bound_allocator: true"
        if cfg.bound_allocator
        else f"auto: planned peak x {UNBOUNDED_HEAP_FACTOR} would not fit in 80% of free memory"
    )
    return applied, why if applied else "not glibc: allocator unchanged"


def _adopt_plan_extras(cfg: TrainConfig, plan: PlanDocument | None) -> TrainConfig:
    """Take the plan's LoRA shape / trainable depth when the recipe does not set them."""
    if plan is None:
        return cfg
    update: dict[str, Any] = {}
    if plan.lora is not None and "lora" not in cfg.model_fields_set:
        update["lora"] = LoraOptions(
            r=plan.lora.rank,
            alpha=2 * plan.lora.rank,
            dropout=plan.lora.dropout,
            target_modules=list(plan.lora.targets) or "all-linear",
        )
    if plan.method == "frozen" and plan.trainable_layers is not None and "trainable_layers" not in cfg.model_fields_set:
        update["trainable_layers"] = plan.trainable_layers
    return cfg.model_copy(update=update) if update else cfg


def _has_chats(dataset: Path, field: str) -> bool:
    f = dataset / "train.jsonl"
    if not f.is_file():
        return False
    with open(f, encoding="utf-8") as fh:
        first = fh.readline()
    try:
        return isinstance(json.loads(first).get(field), list)
    except (json.JSONDecodeError, AttributeError):
        return False


def _human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def summarize(artifact: Artifact, console: Console) -> None:
    """Print the run's headline numbers beside the plan's predictions."""
    from rich.table import Table

    st = artifact.stats
    if "train_loss_last" not in st:
        console.print({k: v for k, v in st.items() if not isinstance(v, dict | list)})
        return
    t = Table(title=f"train · {st.get('task')} · {st.get('method')} · {st.get('model')}")
    t.add_column("metric")
    t.add_column("measured")
    t.add_column("planned")

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))

    t.add_row("steps", fmt(st.get("steps")), "")
    t.add_row("train loss first → last", f"{fmt(st.get('train_loss_first'))} → {fmt(st.get('train_loss_last'))}", "")
    t.add_row("validation loss", fmt(st.get("val_loss")), "")
    t.add_row("tokens/s (non-pad)", fmt(st.get("tokens_per_second")), "")
    t.add_row("step seconds (median)", fmt(st.get("step_seconds")), fmt(st.get("predicted_step_seconds")))
    t.add_row(
        "resident peak (RSS)", _human_bytes(st.get("resident_peak_bytes")),
        _human_bytes(st.get("predicted_resident_peak_bytes")),
    )
    t.add_row(
        "live peak above start", _human_bytes(st.get("peak_memory_bytes")),
        _human_bytes(st.get("predicted_peak_memory_bytes")),
    )
    console.print(t)
    for line in st.get("deviations") or []:
        console.print(f"[yellow]deviation from plan:[/] {line}")
