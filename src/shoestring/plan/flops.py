"""FLOPs, time and cost of a training run.

Per token, a forward pass costs ``2·N`` (every non-embedding weight multiplies once) plus
the attention scores ``2·n_layer·n_ctx·d_attn`` (Kaplan et al. 2020, Table 1); backward costs
twice the forward when every weight is trained (``6·N·D`` in total, the Chinchilla/Kaplan
rule). When the base weights are frozen (LoRA, QLoRA, frozen layers) backward still
propagates through them but skips their weight gradients: ``4·N`` per token instead of
``6·N``. Activation checkpointing recomputes the forward once more (+``2·N``).

Time = FLOPs / (device peak × achievable utilisation); cost = hours × devices × price.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoestring.plan.arch import ModelShape

__all__ = ["RunEstimate", "chinchilla_flops", "training_flops_per_token", "estimate_run"]


def chinchilla_flops(n_params: float, n_tokens: float) -> float:
    """The ``6·N·D`` training-compute rule (FLOPs)."""
    return 6.0 * n_params * n_tokens


def training_flops_per_token(shape: ModelShape, seq_len: int, trainable: int, *, checkpointing: bool = False) -> float:
    """Training FLOPs per token: forward, backward and (optional) recompute, with attention."""
    n = shape.non_embedding_params
    attn = 2.0 * shape.n_layers * seq_len * shape.n_heads * shape.head_dim
    if shape.task in ("causal-lm",):
        attn /= 2  # causal: each position attends to half the context on average (fused kernels skip the rest)
    forward = 2.0 * n + attn
    # backward: activation gradients through every weight (2N) and through attention
    # (dQ, dK, dV: twice its forward), plus weight gradients for the trainable weights only.
    backward = 2.0 * n + 2.0 * attn + 2.0 * min(trainable, n)
    recompute = forward if checkpointing else 0.0
    return forward + backward + recompute


@dataclass(frozen=True)
class RunEstimate:
    flops_per_step: float
    step_seconds: float
    steps: int
    total_seconds: float
    cost_usd: float
    tokens_per_second: float


def estimate_run(*, flops_per_token: float, tokens_per_step: int, steps: int, peak_flops: float, utilisation: float,
                 devices: int, usd_per_hour: float, comm_seconds: float = 0.0) -> RunEstimate:
    """Step time from FLOPs at ``peak × utilisation`` over all devices; cost in dollars."""
    per_step = flops_per_token * tokens_per_step
    step_s = per_step / (peak_flops * utilisation * max(devices, 1)) + comm_seconds
    total = step_s * steps
    return RunEstimate(
        flops_per_step=per_step,
        step_seconds=step_s,
        steps=steps,
        total_seconds=total,
        cost_usd=total / 3600.0 * usd_per_hour * max(devices, 1),
        tokens_per_second=tokens_per_step / step_s if step_s > 0 else 0.0,
    )
