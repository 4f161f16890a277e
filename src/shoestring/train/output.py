"""What the training loop needs around it: progress display, distributed wrapping, saving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.core.artifact import atomic_write_json
from shoestring.train.tracking import MetricsLog, plot_loss

if TYPE_CHECKING:
    import torch
    from rich.console import Console
    from rich.progress import Progress

    from shoestring.train.settings import Settings

__all__ = ["make_progress", "save_outputs", "wrap_distributed"]


def make_progress(console: Console, *, enabled: bool) -> Progress:
    """Rich progress bar: steps, tokens/s of the last step, elapsed and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps · {task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


def wrap_distributed(module: torch.nn.Module, strategy: str, device: str) -> torch.nn.Module:
    """DDP or FSDP around the loss module (process group already initialised)."""
    import torch

    if strategy == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        # use_orig_params keeps parameter names and lets frozen and trainable tensors share
        # a flat buffer (needed for LoRA, where most parameters do not train).
        return FSDP(module, use_orig_params=True, device_id=torch.cuda.current_device() if device == "cuda" else None)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [torch.cuda.current_device()] if device == "cuda" else None
    return DDP(module, device_ids=ids)


def save_outputs(model: Any, tok: Any, s: Settings, data: dict[str, Any], log: MetricsLog, out_dir: Path) -> None:
    """Write the model (adapter/ or model/), tokenizer, metrics.jsonl and loss.png."""
    is_peft = hasattr(model, "peft_config")
    target = out_dir / ("adapter" if is_peft else "model")
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target), safe_serialization=True)
    if is_peft:
        _sort_target_modules(target / "adapter_config.json")
    tok.save_pretrained(str(target))
    if data.get("label_to_id"):
        atomic_write_json(target / "labels.json", data["label_to_id"])
    log.close()
    log.write_jsonl(out_dir / "metrics.jsonl")
    plot_loss(log.rows, out_dir / "loss.png", f"{s.task} · {s.method} · {Path(s.model).name}")
    (out_dir / "train_settings.json").write_text(
        json.dumps({k: v for k, v in vars(s).items()}, indent=2, default=str) + "\n"
    )


def _sort_target_modules(path: Path) -> None:
    """peft writes ``target_modules`` from a set, in the process's string-hash order: two runs of the
    same training wrote the same adapter with its config in different bytes (found by the crash
    harness). Sorted, the artifact is byte-identical run to run."""
    cfg = json.loads(path.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
        atomic_write_json(path, cfg)
