"""FLOPs, time and cost of a training run.

Per token, a forward pass costs ``2·N`` (every non-embedding weight multiplies once) plus
the attention scores ``2·n_layer·n_ctx·d_attn`` (Kaplan et al. 2020, Table 1); backward costs
twice the forward when every weight is trained (``6·N·D`` in total, the Chinchilla/Kaplan
rule). When the base weights are frozen (LoRA, QLoRA, frozen layers) backward still
propagates through them but skips their weight gradients: ``4·N`` per token instead of
``6·N``. Activation checkpointing recomputes the forward once more (+``2·N``).

Time = FLOPs / (device peak × achievable utilisation) + streamed bytes / streaming rate;
cost = hours × devices × price. The second term is the memory-bound work that is not a
matmul: every saved activation is written, read back and has its gradient written and read;
log-softmax over the vocabulary and its gradient; the optimizer's passes over its states.
On a CPU this is a large share of a small model's step (a profile of the 4-layer/49k-vocab
row of RESULTS.md spent ~45% outside ``mm``), and its share differs from model to model, so
one utilisation calibrated on one probe cannot predict the others. ``--calibrate`` measures
both rates with two probe shapes (see :mod:`shoestring.plan.calibrate`); without a
calibrated streaming rate (catalogue GPUs) the first term alone is used, with a catalogue
utilisation that already folds the rest in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shoestring.plan.arch import ModelShape

if TYPE_CHECKING:
    from shoestring.plan.memory import MemoryBreakdown, TrainingSetup

__all__ = ["OPTIMIZER_STREAM_BYTES", "RunEstimate", "chinchilla_flops", "estimate_run", "matmul_params_per_token",
           "streamed_bytes", "training_flops_per_token"]

OPTIMIZER_STREAM_BYTES = {"adamw": 92, "adamw-8bit": 44, "sgd": 28, "adafactor": 48}
"""Bytes read + written per trainable parameter by one optimizer step, gradient clipping included.

torch's foreach AdamW: decay p (r/w 8), lerp m (r m,g, w m: 12), v·β2 (8), addcmul v (12),
sqrt v -> d (8), d /= c (8), d += eps (8), p.addcdiv(m, d) (16) = 80; clip_grad_norm_ reads
the gradients and scales them (12). The others by the same count of their passes."""


def chinchilla_flops(n_params: float, n_tokens: float) -> float:
    """The ``6·N·D`` training-compute rule (FLOPs)."""
    return 6.0 * n_params * n_tokens


def matmul_params_per_token(shape: ModelShape, mlm_probability: float = 0.15) -> int:
    """Weights one token multiplies by: every ``nn.Linear`` the model runs per position.

    This counts a *tied* output head (its weight is the embedding matrix, so ``6·N`` rules
    that drop embedding parameters leave the ``hidden × vocab`` logits matmul out, which is
    most of the work of a small model with a 49k vocabulary) and leaves out what runs once
    per sequence (a classifier's pooler and head). Falls back to the non-embedding
    parameter count when the Linear layers are unknown.
    """
    if not shape.linear_shapes:
        return shape.non_embedding_params
    per_sequence = ("pooler", "classifier") if shape.task == "classification" else ()
    total = 0.0
    for name, (a, b) in shape.linear_shapes.items():
        if any(part in per_sequence for part in name.split(".")):
            continue
        # The trainer runs a masked-LM head (transform + vocabulary decoder) only on the
        # masked positions (train/modeling.py), a fraction mlm_probability of the tokens.
        share = mlm_probability if shape.task == "masked-lm" and name.split(".")[0] in _MLM_HEADS else 1.0
        total += share * a * b
    return int(total)


_MLM_HEADS = ("cls", "lm_head", "vocab_transform", "vocab_projector", "head", "decoder", "generator_lm_head",
              "generator_predictions", "predictions")
"""First name component of the masked-LM heads of BERT, RoBERTa, DistilBERT, ModernBERT, ELECTRA."""


def training_flops_per_token(shape: ModelShape, seq_len: int, trainable: int, *, checkpointing: bool = False,
                             lora: bool = False, backward_layers: int | None = None) -> float:
    """Training FLOPs per token: forward, backward and (optional) recompute, with attention.

    ``trainable`` parameters get weight gradients (capped at the matmul weights); with
    ``lora`` they are adapters, which add their own small matmuls to the forward (2 FLOPs
    per parameter) and to the backward (input and weight gradients: 4).
    """
    n = matmul_params_per_token(shape)
    attn = 2.0 * shape.n_layers * seq_len * shape.n_heads * shape.head_dim
    if shape.task in ("causal-lm",):
        attn /= 2  # causal: each position attends to half the context on average (fused kernels skip the rest)
    adapters = float(trainable) if lora else 0.0
    forward = 2.0 * n + attn + 2.0 * adapters
    # backward: activation gradients through every weight (2N) and through attention
    # (dQ, dK, dV: twice its forward), plus weight gradients for the trainable weights only.
    # With only the top ``backward_layers`` blocks trainable (method=frozen) autograd stops
    # below the lowest of them: the frozen blocks' matmuls and attention get no backward.
    n_back, attn_back = float(n), attn
    if backward_layers is not None and shape.n_layers and shape.layer_param_counts:
        frozen = shape.n_layers - min(backward_layers, shape.n_layers)
        n_back = max(0.0, n - float(sum(shape.layer_param_counts[:frozen])))
        attn_back = attn * (shape.n_layers - frozen) / shape.n_layers
    weight_grads = 2.0 * adapters if lora else 2.0 * min(trainable, n)
    backward = 2.0 * n_back + 2.0 * attn_back + 2.0 * adapters + weight_grads
    recompute = forward if checkpointing else 0.0
    return forward + backward + recompute


def streamed_bytes(mem: MemoryBreakdown, setup: TrainingSetup, shape: ModelShape) -> tuple[float, float]:
    """(bytes per micro-batch, bytes per optimizer step) of the memory-bound, non-matmul work.

    Per micro-batch: every byte the forward saves for backward is written, read back, and
    its gradient written and read (4×; activation checkpointing runs the forward twice:
    6×); the vocabulary buffers (log-softmax output and its gradients) about 3× their size;
    under autocast every matmul weight is cast to 16 bits each forward (read 4 + write 2
    bytes); LoRA adapters stream their layers' inputs and outputs about 10 more times.
    Per optimizer step: the optimizer's passes over its states
    (:data:`OPTIMIZER_STREAM_BYTES`). (The shape-timed model of :mod:`shoestring.plan.shapes`
    replaces this count where ``--calibrate`` timed the model's calls.)
    """
    act = mem.traced_activations or mem.activations
    per_micro = 4.0 * act * (1.5 if setup.activation_checkpointing else 1.0) + 3.0 * mem.logits_buffers
    if setup.precision in ("bf16-mixed", "fp16-mixed", "bf16", "fp16"):
        per_micro += 6.0 * matmul_params_per_token(shape)
    if setup.method in ("lora", "qlora"):
        # Each adapted Linear runs two rank-r matmuls that are memory-bound (they read the
        # whole input to produce r columns), a dropout, a scale and an add, forward and
        # backward: about 9 passes over its input and 10 over its output per token
        # (counted op by op for peft's Linear.forward and its autograd graph).
        from shoestring.plan.arch import match_lora_targets

        width = sum(sum(shape.linear_shapes[n]) for n in match_lora_targets(shape, list(setup.lora_targets)))
        itemsize = 4 if setup.precision == "fp32" else 2
        per_micro += 10.0 * width * itemsize * setup.micro_batch_size * setup.seq_len
    per_step = float(OPTIMIZER_STREAM_BYTES.get(setup.optimizer, 92) * mem.trainable_params)
    return per_micro, per_step


@dataclass(frozen=True)
class RunEstimate:
    flops_per_step: float
    step_seconds: float
    steps: int
    total_seconds: float
    cost_usd: float
    tokens_per_second: float


def estimate_run(*, flops_per_token: float, tokens_per_step: int, steps: int, peak_flops: float, utilisation: float,
                 devices: int, usd_per_hour: float, comm_seconds: float = 0.0, stream_bytes_per_step: float = 0.0,
                 stream_rate: float | None = None, matmul_seconds: float | None = None) -> RunEstimate:
    """Step time from FLOPs at ``peak × utilisation`` (+ streamed bytes at ``stream_rate``
    when calibrated) over all devices; cost in dollars.

    ``matmul_seconds`` (the step's measured-shape matmul and attention time, see
    :mod:`shoestring.plan.shapes`) replaces the FLOPs term when given."""
    per_step = flops_per_token * tokens_per_step
    if matmul_seconds is not None:
        step_s = matmul_seconds / max(devices, 1) + comm_seconds
    else:
        step_s = per_step / (peak_flops * utilisation * max(devices, 1)) + comm_seconds
    if stream_rate:
        step_s += stream_bytes_per_step / (stream_rate * max(devices, 1))
    total = step_s * steps
    return RunEstimate(
        flops_per_step=per_step,
        step_seconds=step_s,
        steps=steps,
        total_seconds=total,
        cost_usd=total / 3600.0 * usd_per_hour * max(devices, 1),
        tokens_per_second=tokens_per_step / step_s if step_s > 0 else 0.0,
    )
