"""Model-to-model transforms used by the compress stage: LoRA merge, shrink + distil."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from shoestring.compress.config import CompressConfig

__all__ = ["merge_adapter", "shrink_and_distill", "student_layer_indices"]


def merge_adapter(peft_model: nn.Module, probe: torch.Tensor) -> tuple[nn.Module, float]:
    """``merge_and_unload`` a copy of a PEFT model; return it and max |logit diff| on ``probe``."""
    import torch

    merged = copy.deepcopy(peft_model).merge_and_unload()  # type: ignore[operator]
    merged.eval()
    peft_model.eval()
    with torch.inference_mode():
        mask = torch.ones_like(probe)
        a = peft_model(input_ids=probe, attention_mask=mask)
        b = merged(input_ids=probe, attention_mask=mask)
        la = a.logits if hasattr(a, "logits") else a[0]
        lb = b.logits if hasattr(b, "logits") else b[0]
        diff = float((la.float() - lb.float()).abs().max())
    return merged, diff


def student_layer_indices(n_layers: int, n_keep: int) -> list[int]:
    """``n_keep`` evenly spaced block indices that always include the first and last block."""
    if not 1 <= n_keep <= n_layers:
        raise ShoestringError(f"student_layers must be between 1 and {n_layers}, got {n_keep}")
    if n_keep == 1:
        return [n_layers - 1]
    return sorted({round(i * (n_layers - 1) / (n_keep - 1)) for i in range(n_keep)})


def shrink_and_distill(
    base: nn.Module,
    cfg: CompressConfig,
    task: str,
    train_blocks: torch.Tensor,
    work_dir: Path,
    say: Callable[[str], Any],
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune a copy of ``base`` (layers, heads, MLP width), then optionally distil it from ``base``."""
    from shoestring.compress import prune
    from shoestring.compress.distill import DistillSettings, distill

    student = copy.deepcopy(base)
    layers, _ = prune.layer_list(student)
    n0 = len(layers)
    info: dict[str, Any] = {"parent_layers": n0}
    calib = train_blocks[: cfg.calibration_blocks]
    steps = cfg.distill_steps
    if cfg.method == "distill":
        n_keep = cfg.student_layers or max(1, n0 // 2)
        keep = student_layer_indices(n0, n_keep)
        prune.keep_layers(student, keep)
        info["kept_layers"] = keep
        steps = steps or 100
    elif cfg.drop_layers:
        info["dropped_layers"] = prune.drop_layers(student, cfg.drop_layers, calib)
    if cfg.head_keep_ratio < 1.0:
        info["attention_heads"] = prune.prune_heads(student, cfg.head_keep_ratio, calib)
    if cfg.mlp_keep_ratio < 1.0:
        info["intermediate_size"] = prune.prune_mlp(student, cfg.mlp_keep_ratio, calib)
    info["student_layers"] = len(prune.layer_list(student)[0])
    if (
        cfg.method == "prune"
        and info["student_layers"] == n0
        and "attention_heads" not in info
        and ("intermediate_size" not in info)
    ):
        raise ShoestringError("prune: nothing to cut; set drop_layers, head_keep_ratio < 1 or mlp_keep_ratio < 1")
    if steps > 0:
        say(f"distilling the student for {steps} steps")
        settings = DistillSettings(
            steps=steps,
            learning_rate=cfg.learning_rate,
            temperature=cfg.temperature,
            alpha=cfg.alpha,
            batch_size=cfg.train_batch_size,
        )
        info["distill"] = distill(base, student, train_blocks, settings, task=task, work_dir=work_dir, log=say)
    return student, info
