"""The memory model: bytes per device for training and inference, term by term.

Training memory on one device is the sum of

* **weights** - every parameter at its storage precision (4-bit/8-bit for QLoRA bases);
* **gradients** - trainable parameters at the gradient precision;
* **optimizer states** - AdamW keeps two fp32 moments (8 B/param), 8-bit AdamW two int8
  (2 B), SGD with momentum one (4 B), Adafactor factored row+column moments; mixed
  precision with low-precision weights adds an fp32 master copy (4 B);
* **activations** - bytes autograd saves for backward, traced on the meta device for the
  real architecture (:func:`shoestring.plan.arch.trace_activations`); with activation
  checkpointing only each block's input is kept plus one block being recomputed;
* **loss/logits buffers** - the vocabulary-sized logits and their gradients at the start
  of backward, usually the largest transient of a small LM;
* **temporary buffers** - optimizer-step scratch and autocast weight copies;
* **framework overhead** - on CPU, resident memory the process gains beyond tensors
  (imports after the baseline, thread pools, kernels' scratch); measured by ``--calibrate``.

Not every term is live at once: the peak is the larger of the start of backward
(activations + logits gradients) and the optimizer step (gradients + states + scratch),
on top of weights, optimizer states and overhead.

ZeRO stages shard optimizer states (1), gradients (2) and weights (3) over the data-parallel
devices; FSDP full-shard equals ZeRO-3; CPU offload moves optimizer states and gradients to
host memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from shoestring.core.errors import ShoestringError
from shoestring.plan.arch import ModelShape, lora_trainable_parameters, trace_activations

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = [
    "MemoryBreakdown",
    "TrainingSetup",
    "estimate_inference_memory",
    "estimate_training_memory",
    "deepspeed_zero2_model_states",
    "deepspeed_zero3_model_states",
    "kv_cache_bytes",
    "model_state_bytes",
    "trainable_parameters",
    "zero_model_states_bytes",
]

Method = Literal["full", "lora", "qlora", "frozen"]
Precision = Literal["fp32", "bf16-mixed", "fp16-mixed", "bf16", "fp16", "int8", "int4"]
Optimizer = Literal["adamw", "adamw-8bit", "sgd", "adafactor"]
Parallelism = Literal["single", "ddp", "zero1", "zero2", "zero3", "fsdp", "zero3-offload"]

CPU_FRAMEWORK_OVERHEAD_BYTES = 256 * 1024**2
"""Default CPU overhead until ``--calibrate`` measures it: RSS a training process gains
beyond its tensors after the meter's baseline (model-code and peft imports, OpenMP thread
stacks, oneDNN scratch, small-object heap). Measured on the reference machine; see RESULTS.md."""
CUDA_CONTEXT_BYTES = 600 * 1024**2
"""CUDA context + cuBLAS workspace: real device memory outside ``max_memory_allocated``."""
CUDA_RESERVED_FACTOR = 1.15
"""``max_memory_reserved`` / ``max_memory_allocated`` assumed for a GPU plan's headline: the
caching allocator rounds blocks up and keeps freed segments. Not measured here (no GPU)."""


@dataclass(frozen=True)
class TrainingSetup:
    """One candidate training configuration (what the search enumerates)."""

    task: str = "causal-lm"
    method: Method = "lora"
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = ("all-linear",)
    lora_dropout: float = 0.05
    trainable_layers: int = 2
    """method=frozen: top transformer blocks that train (the head trains too)."""
    precision: Precision = "fp32"
    optimizer: Optimizer = "adamw"
    activation_checkpointing: bool = False
    micro_batch_size: int = 1
    grad_accum: int = 1
    """Micro-batches per optimizer step: above 1, gradients stay allocated through the next forward."""
    seq_len: int = 256
    devices: int = 1
    parallelism: Parallelism = "single"
    device_kind: str = "cpu"
    attn_implementation: str = "sdpa"
    mlm_probability: float = 0.15
    """masked-lm: fraction of tokens the loss is computed on (the trainer's ``mlm_probability``)."""
    fast_paths: bool = True
    """The trainer's ``fast_paths`` (:mod:`shoestring.train.fastpath`, on by default): causal
    attention per packed document, LoRA dropout keeping a 1-byte mask (CPU), frozen LoRA base
    weights stored at the autocast precision."""
    doc_segments: tuple[tuple[int, float], ...] = ()
    """causal-lm, packed: the documents one row holds, as ``(length, mean count per row)`` on the
    timing grid (:func:`shoestring.plan.tokens.packed_segments`); empty = one ``seq_len`` document."""
    bounded_heap: bool | None = None
    """CPU: glibc's heap bounded (``train.bound_allocator``); None = decide as the trainer does."""
    record_lengths: tuple[int, ...] = ()
    """Padded batches (classification, unpacked data): quantiles of the records' lengths after
    truncation at ``seq_len``. A micro-batch is as wide as its longest record, so time is costed
    at the expected width (:func:`expected_width`); memory at ``seq_len`` (the widest batch)."""

    def expected_width(self) -> int:
        """Expected width of a padded micro-batch: E[max of ``micro_batch_size`` record lengths]
        over the length quantiles (``seq_len`` when they are unknown or batches are packed)."""
        q = sorted(self.record_lengths)
        if not q:
            return self.seq_len
        n, b = len(q), self.micro_batch_size
        width = sum(x * ((i / n) ** b - ((i - 1) / n) ** b) for i, x in enumerate(q, start=1))
        return max(1, min(self.seq_len, round(width)))

    @property
    def compute_dtype(self) -> str:
        return {"fp32": "fp32", "bf16-mixed": "bf16", "fp16-mixed": "fp16", "bf16": "bf16", "fp16": "fp16",
                "int8": "bf16", "int4": "bf16"}[self.precision]


@dataclass(frozen=True)
class MemoryBreakdown:
    """Predicted bytes per device, by term; ``peak_bytes`` is what the meter will read."""

    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    logits_buffers: int
    temporary_buffers: int
    framework_overhead: int
    peak_bytes: int
    """Peak of the memory meter (CPU: RSS above the pre-model baseline; CUDA: max allocated)."""
    required_bytes: int
    """What the device must hold: ``peak_bytes`` plus the CUDA context on GPUs."""
    trainable_params: int
    total_params: int
    peak_phase: str = "backward"
    """When the peak happens: ``backward`` (activations + logits gradients) or ``optimizer step``."""
    traced_activations: int = 0
    """Bytes one forward saves for backward without checkpointing (what the step streams through)."""

    def terms(self) -> dict[str, int]:
        d = asdict(self)
        for k in ("peak_bytes", "required_bytes", "trainable_params", "total_params", "peak_phase",
                  "traced_activations"):
            d.pop(k)
        return d


def _weight_bytes_per_param(precision: str) -> float:
    return {"fp32": 4, "bf16-mixed": 4, "fp16-mixed": 4, "bf16": 2, "fp16": 2, "int8": 1, "int4": 0.5}[precision]


def trainable_parameters(shape: ModelShape, s: TrainingSetup) -> int:
    """Parameters that receive gradients under the setup's method."""
    if s.method == "full":
        return shape.n_params
    if s.method in ("lora", "qlora"):
        return lora_trainable_parameters(shape, list(s.lora_targets), s.lora_rank)[0]
    if s.method == "frozen":
        if s.trainable_layers > shape.n_layers:
            raise ShoestringError(f"--trainable-layers {s.trainable_layers} exceeds the model's {shape.n_layers} layers")
        top = sum(shape.layer_param_counts[shape.n_layers - s.trainable_layers:]) if s.trainable_layers else 0
        outside = shape.n_params - sum(shape.layer_param_counts) - shape.input_embedding_params
        return top + max(outside, 0)
    raise ShoestringError(f"unknown method '{s.method}'; choose full, lora, qlora or frozen")


def _weights_bytes(shape: ModelShape, s: TrainingSetup, trainable: int) -> int:
    if s.method == "qlora" or s.precision in ("int8", "int4"):
        # Quantised: the Linear weights inside the blocks; embeddings, norms, head stay bf16.
        bits = 4 if (s.method == "qlora" and s.precision not in ("int8",)) or s.precision == "int4" else 8
        q_params = sum(a * b for name, (a, b) in shape.linear_shapes.items()
                       if not name.endswith(("lm_head", "classifier", "score")))
        # NF4 with double quantisation: 4 bits + ~0.127 bits of block constants per weight.
        per = 0.5 + 0.127 / 8 if bits == 4 else 1 + 4 / 64
        base = int(q_params * per + (shape.n_params - q_params) * 2)
        adapters = trainable * 4 if s.method in ("lora", "qlora") else 0
        return base + adapters
    base = int(shape.n_params * _weight_bytes_per_param(s.precision))
    base -= hoisted_lora_weights(shape, s) * 2  # stored in bf16/fp16 instead of fp32
    if s.method in ("lora", "qlora"):
        base += trainable * 4  # adapters are fp32 even on a bf16 base (peft default)
    return base


def _optimizer_bytes(shape: ModelShape, s: TrainingSetup, trainable: int) -> int:
    master = 4 * trainable if s.precision in ("bf16", "fp16") and s.method == "full" else 0
    if s.optimizer == "adamw":
        return 8 * trainable + master
    if s.optimizer == "adamw-8bit":
        return 2 * trainable + trainable * 8 // 2048 + master  # int8 moments + one fp32 scale per 2048-block
    if s.optimizer == "sgd":
        return 4 * trainable + master  # momentum buffer
    if s.optimizer == "adafactor":
        if s.method in ("lora", "qlora"):
            _, chosen = lora_trainable_parameters(shape, list(s.lora_targets), s.lora_rank)
            rc = sum(2 * s.lora_rank + shape.linear_shapes[n][0] + shape.linear_shapes[n][1] for n in chosen)
        else:
            rc = sum(a + b for a, b in shape.linear_shapes.values())
            rc = int(rc * trainable / max(shape.n_params, 1))
        return 4 * rc + master
    raise ShoestringError(f"unknown optimizer '{s.optimizer}'; choose adamw, adamw-8bit, sgd or adafactor")


def hoisted_lora_weights(shape: ModelShape, s: TrainingSetup) -> int:
    """Frozen base weights the trainer stores at the autocast precision (LoRA + mixed
    precision + fast paths: :func:`shoestring.train.fastpath.hoist_frozen_casts`)."""
    if not (s.fast_paths and s.method == "lora" and s.precision in ("bf16-mixed", "fp16-mixed")):
        return 0
    _, chosen = lora_trainable_parameters(shape, list(s.lora_targets), s.lora_rank)
    return sum(shape.linear_shapes[n][0] * shape.linear_shapes[n][1] for n in chosen)


def _fast_kinds(s: TrainingSetup) -> str:
    """Which fast paths change what the trace must save (the trace cache key)."""
    if not s.fast_paths:
        return ""
    kinds = []
    if s.task == "causal-lm":
        kinds.append("docs")
    if s.method == "lora" and s.device_kind == "cpu":
        kinds.append("dropout")
    if s.method == "lora" and s.precision in ("bf16-mixed", "fp16-mixed"):
        kinds.append("hoist")
    return ",".join(kinds)


def _trainable_spec(s: TrainingSetup) -> str:
    if s.method == "full":
        return "all"
    if s.method in ("lora", "qlora"):
        return f"lora:{s.lora_rank}:{s.lora_dropout}:{','.join(s.lora_targets)}"
    return f"frozen:{s.trainable_layers}"


_SHARDED_BY = {"weights": ("zero3", "fsdp", "zero3-offload"), "gradients": ("zero2", "zero3", "fsdp"),
              "optimizer": ("zero1", "zero2", "zero3", "fsdp")}
"""Which layouts split each kind of model state across the data-parallel devices."""


def _on_device(s: TrainingSetup, kind: str, nbytes: int) -> int:
    """The bytes of one kind of model state (``weights``, ``gradients``, ``optimizer``; the optimizer
    step's temporaries count as ``optimizer``) one device holds: its 1/N share where the layout
    shards that kind, none but the weight shard under ZeRO-3 offload (the rest lives on the host)."""
    if s.parallelism == "zero3-offload" and kind != "weights":
        return 0
    return math.ceil(nbytes / max(s.devices, 1)) if s.parallelism in _SHARDED_BY[kind] else nbytes


def model_state_bytes(shape: ModelShape, s: TrainingSetup) -> tuple[int, int, int]:
    """(weights, gradients, optimizer states) bytes one device holds: the ZeRO paper's "model
    states", after the setup's sharding over ``s.devices`` data-parallel devices.

    Stage 1 shards the optimizer states, stage 2 also the gradients, stage 3 / FSDP also the
    weights; offload keeps only the weight shard on the device (:data:`_SHARDED_BY`).
    """
    trainable = trainable_parameters(shape, s)
    grad_per = 2 if s.precision in ("bf16", "fp16") and s.method == "full" else 4
    return (_on_device(s, "weights", _weights_bytes(shape, s, trainable)),
            _on_device(s, "gradients", trainable * grad_per),
            _on_device(s, "optimizer", _optimizer_bytes(shape, s, trainable)))  # fmt: skip


def estimate_training_memory(
    config: PretrainedConfig,
    shape: ModelShape,
    s: TrainingSetup,
    *,
    framework_overhead: int | None = None,
) -> MemoryBreakdown:
    """Predicted per-device memory of one training configuration, by term (bytes)."""
    trainable = trainable_parameters(shape, s)
    weights, grads, opt = model_state_bytes(shape, s)

    act_dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[s.compute_dtype]
    tr = trace_activations(config, s.task, s.micro_batch_size, s.seq_len, trainable=_trainable_spec(s),
                           dtype=act_dtype, attn_implementation=s.attn_implementation, device_kind=s.device_kind,
                           autocast=s.precision in ("bf16-mixed", "fp16-mixed"), fast=_fast_kinds(s))
    if s.activation_checkpointing and shape.n_layers > 0:
        # Each block keeps only its input; one block's activations exist during its recompute.
        activations = tr.layer_input_bytes * shape.n_layers + tr.per_layer_bytes + tr.head_bytes
    else:
        activations = tr.saved_bytes
    # Causal LM: the trace already holds the loss's saved fp32 log-softmax (B, T, V); backward
    # of log-softmax adds two more vocabulary-sized fp32 buffers (the incoming gradient and
    # its own output), the loss runs in fp32 under autocast too.
    fp32_logits = tr.logits_bytes * 4 // _itemsize(act_dtype)
    logits = 2 * fp32_logits
    if s.task == "masked-lm":
        # The trainer's masked-LM loss (train/modeling.py) is not the one the trace runs: it
        # runs the encoder once and the MLM head only on the masked rows (N = p·B·T), so the
        # loss saves an (N, V) log-softmax instead of the traced (B, T, V) one, and backward
        # adds two (N, V) buffers, as in the causal case.
        activations += int(s.mlm_probability * fp32_logits) - tr.logits_bytes
        logits = int(2 * s.mlm_probability * fp32_logits)
    # The optimizer step: torch's foreach AdamW (what the trainer uses) keeps one temporary
    # per trainable parameter it steps: under ZeRO / FSDP each device steps only its shard
    # (its 1/N of the states), and an offloaded optimizer steps on the host.
    # (Autocast's low-precision weight copies are in the traced activations: the matmuls
    # save them for backward.)
    temps = _on_device(s, "optimizer", 4 * trainable)
    overhead = framework_overhead if framework_overhead is not None else (
        CPU_FRAMEWORK_OVERHEAD_BYTES if s.device_kind == "cpu" else 0)
    # Two moments bound the peak: the start of backward (everything saved plus the logits'
    # gradients; earlier micro-batches' gradients too when accumulating) and the optimizer
    # step (gradients + states + the step's temporaries, activations already freed).
    backward_peak = activations + logits + (grads if s.grad_accum > 1 else 0)
    step_peak = grads + temps
    peak = overhead + weights + opt + max(backward_peak, step_peak)
    phase = "backward" if backward_peak >= step_peak else "optimizer step"
    required = peak + (CUDA_CONTEXT_BYTES if s.device_kind == "cuda" else 0)
    return MemoryBreakdown(
        weights=weights, gradients=grads, optimizer_states=opt, activations=activations, logits_buffers=logits,
        temporary_buffers=temps, framework_overhead=overhead, peak_bytes=peak, required_bytes=required,
        trainable_params=trainable, total_params=shape.n_params, peak_phase=phase,
        traced_activations=tr.saved_bytes + (int(s.mlm_probability * fp32_logits) - tr.logits_bytes
                                             if s.task == "masked-lm" else 0),
    )


def _itemsize(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def zero_model_states_bytes(n_params: float, n_devices: int, stage: int, *, k: float = 12.0,
                            weight_bytes: float = 2.0, grad_bytes: float = 2.0) -> float:
    """Model-state bytes per device from the ZeRO paper (Rajbhandari et al. 2019, §3/Fig.1).

    Mixed-precision Adam keeps fp16 weights (2Ψ), fp16 gradients (2Ψ) and K=12 bytes of
    optimizer state (fp32 master, momentum, variance). Stage 1 (P_os) shards the K·Ψ,
    stage 2 (P_os+g) also the gradients, stage 3 (P_os+g+p) everything.
    """
    psi, nd = float(n_params), float(n_devices)
    w, g, o = weight_bytes * psi, grad_bytes * psi, k * psi
    if stage == 0:
        return w + g + o
    if stage == 1:
        return w + g + o / nd
    if stage == 2:
        return w + (g + o) / nd
    if stage == 3:
        return (w + g + o) / nd
    raise ValueError(f"ZeRO stage must be 0-3, got {stage}")


def deepspeed_zero2_model_states(total_params: int, *, gpus_per_node: int = 1, nodes: int = 1,
                                 cpu_offload: bool = False, buffer_factor: float = 1.5) -> tuple[int, int]:
    """(CPU bytes, GPU bytes) of DeepSpeed's documented ZeRO-2 model-state estimate.

    Mirrors ``estimate_zero2_model_states_mem_needs``: without offload a GPU holds fp16
    weights + fp16 gradients (4Ψ) and its 1/N share of 16Ψ of fp32 states; with offload
    only the fp16 weights (2Ψ) stay on the GPU.
    """
    gpus = gpus_per_node * nodes
    if cpu_offload:
        return int(total_params * max(4 * gpus, 16) * buffer_factor), int(2 * total_params)
    return int(total_params * 4 * gpus_per_node * buffer_factor), int(4 * total_params + int(16 * total_params / gpus))


def deepspeed_zero3_model_states(total_params: int, largest_layer_params: int, *, gpus_per_node: int = 1,
                                 nodes: int = 1, offload_optimizer: bool = False, offload_params: bool = False,
                                 zero_init: bool = True, buffer_factor: float = 1.5) -> tuple[int, int]:
    """(CPU bytes, GPU bytes) of DeepSpeed's documented ZeRO-3 model-state estimate.

    Mirrors ``estimate_zero3_model_states_mem_needs``: a GPU always holds the largest
    layer gathered in fp32-sized buffers (4 B/param) plus its shard of 18Ψ (or 2Ψ of
    fp16 weights when the optimizer is offloaded).
    """
    gpus = gpus_per_node * nodes
    per_node = 1 / nodes
    largest = 4 * largest_layer_params
    if offload_optimizer:
        if offload_params:
            gpu = largest
            cpu = total_params * (18 * per_node if zero_init else max(4 * gpus_per_node, 18 * per_node))
        else:
            gpu = largest + int(2 * total_params / gpus)
            cpu = total_params * (16 * per_node if zero_init else max(4 * gpus_per_node, 16 * per_node))
    else:
        gpu = largest + int(18 * total_params / gpus)
        cpu = (largest_layer_params if zero_init else total_params) * 4 * gpus_per_node
    return int(cpu * buffer_factor), int(gpu)


def kv_cache_bytes(shape: ModelShape, batch: int, context: int, bytes_per_element: float = 2) -> int:
    """KV cache for ``batch`` sequences of ``context`` tokens: 2·L·kv_heads·head_dim per token (GQA aware)."""
    return int(shape.kv_bytes_per_token * batch * context * bytes_per_element)


def estimate_inference_memory(shape: ModelShape, *, batch: int, context: int, weight_bytes: float = 2,
                              kv_bytes: float = 2) -> dict[str, int]:
    """Inference memory: weights + KV cache + the live activations of one forward (bytes)."""
    weights = int(shape.n_params * weight_bytes)
    kv = kv_cache_bytes(shape, batch, context, kv_bytes)
    # Prefill peak: hidden states, the MLP's up/gate outputs and one chunk of logits.
    act = int(batch * context * (4 * shape.hidden_size + 2 * shape.intermediate_size) * kv_bytes)
    logits = int(batch * shape.vocab_size * 4)  # logits of the last position only, fp32
    total = weights + kv + act + logits
    return {"weights": weights, "kv_cache": kv, "activations": act, "logits": logits, "total": total}
