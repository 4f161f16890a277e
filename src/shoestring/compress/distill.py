"""Knowledge distillation of a smaller student from its parent (the teacher).

Loss per token: ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
+ (1 - alpha) * CE(student, next token)`` (Hinton et al., 2015; the T^2 keeps the soft
term's gradient scale independent of T). For encoders without an LM head the soft term
is replaced by the mean squared error between last hidden states, and there is no CE.

The student is a pruned copy of the teacher (fewer layers / heads / MLP channels), so it
starts from the teacher's own weights and needs few steps to recover. Progress is saved
to the stage's durable work folder every ``ckpt_every`` steps (one folder, renamed into place
whole: student weights and AdamW moments as safetensors, the step counter as JSON), so a killed
run resumes where it was, with weights, moments and step from the same moment.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["DistillSettings", "distill"]

CHECKPOINT = "distill-checkpoint"
"""The resume folder in the work folder: student.safetensors, optim.safetensors, progress.json."""


@dataclass(frozen=True)
class DistillSettings:
    """Hyper-parameters of one distillation run (plain values, units in the names)."""

    steps: int
    learning_rate: float = 1e-4
    temperature: float = 2.0
    alpha: float = 0.5
    batch_size: int = 4
    ckpt_every: int = 25
    seed: int = 0


def _save_ckpt(work: Path, student: nn.Module, opt: torch.optim.Optimizer, step: int, losses: list[float]) -> None:
    import shutil

    from safetensors.torch import save_file, save_model

    from shoestring.core.artifact import atomic_path, atomic_write_json

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, float] = {}
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            if hasattr(v, "dim") and v.dim() > 0:
                tensors[f"{pid}.{k}"] = v.contiguous()
            else:
                scalars[f"{pid}.{k}"] = float(v)
    # One folder, so a kill between files never pairs one step's weights with another's moments.
    with atomic_path(work / CHECKPOINT, folder=True) as tmp:
        save_model(student, str(tmp / "student.safetensors"))
        save_file(tensors, str(tmp / "optim.safetensors"))
        atomic_write_json(tmp / "progress.json", {"step": step, "losses": losses, "scalars": scalars})
        shutil.rmtree(work / CHECKPOINT, ignore_errors=True)


def _load_ckpt(work: Path, student: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, list[float]]:
    import torch
    from safetensors.torch import load_file, load_model

    from shoestring.core.artifact import sweep_dead_temps

    ckpt = work / CHECKPOINT
    sweep_dead_temps(work, CHECKPOINT)  # a killed run's half-written folder
    if not (ckpt / "progress.json").is_file():
        return 0, []
    meta = json.loads((ckpt / "progress.json").read_text())
    load_model(student, str(ckpt / "student.safetensors"), strict=False)
    tensors = load_file(str(ckpt / "optim.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = torch.tensor(v)
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)
    return int(meta["step"]), list(meta["losses"])


def _student_outputs(model: nn.Module, ids: torch.Tensor, task: str) -> torch.Tensor:
    import torch

    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    if task == "embedding":
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return out.logits


def distill(
    teacher: nn.Module,
    student: nn.Module,
    blocks: torch.Tensor,
    settings: DistillSettings,
    *,
    task: str,
    work_dir: Path | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Train ``student`` in place to imitate ``teacher`` on token ``blocks`` (n, T).

    Returns stats: steps run, first/last loss (mean of 5 steps), seconds, resumed step.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(settings.seed)
    teacher.eval()
    student.train()
    # The teacher runs under no_grad; the student is trained in full (a copy of the
    # teacher may carry requires_grad=False flags from an earlier run).
    params = list(student.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    start, losses = 0, list[float]()
    if work_dir is not None:
        start, losses = _load_ckpt(work_dir, student, opt)
    g = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(blocks.shape[0], generator=g)
    t_start = time.perf_counter()
    T, a = settings.temperature, settings.alpha
    for step in range(start, settings.steps):
        lr = settings.learning_rate * 0.5 * (1 + math.cos(math.pi * step / max(settings.steps, 1)))
        for group in opt.param_groups:
            group["lr"] = lr  # cosine decay; a function of the step, so resuming reproduces it
        pick = [int(order[(step * settings.batch_size + k) % len(order)]) for k in range(settings.batch_size)]
        ids = blocks[pick]  # (B, T)
        with torch.no_grad():
            t_out = _student_outputs(teacher, ids, task).float()
        s_out = _student_outputs(student, ids, task).float()
        if task == "embedding":
            loss = F.mse_loss(s_out, t_out)
        else:
            soft = F.kl_div(
                F.log_softmax(s_out / T, dim=-1).flatten(0, -2),
                F.log_softmax(t_out / T, dim=-1).flatten(0, -2),
                log_target=True,
                reduction="batchmean",
            ) * (T * T)
            if task == "causal-lm":
                hard = F.cross_entropy(s_out[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
                loss = a * soft + (1 - a) * hard
            else:
                loss = soft
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (step + 1) % max(1, settings.steps // 10) == 0:
            log(f"distill step {step + 1}/{settings.steps} loss {float(loss.detach()):.4f}")
        if work_dir is not None and (step + 1) % settings.ckpt_every == 0 and step + 1 < settings.steps:
            _save_ckpt(work_dir, student, opt, step + 1, losses)
    student.eval()
    head = losses[:5] or [float("nan")]
    tail = losses[-5:] or [float("nan")]
    return {
        "steps": settings.steps,
        "resumed_from_step": start,
        "first_loss": sum(head) / len(head),
        "last_loss": sum(tail) / len(tail),
        "seconds": time.perf_counter() - t_start,
        "temperature": T,
        "alpha": a,
        "learning_rate": settings.learning_rate,
    }
