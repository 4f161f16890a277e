"""Search: enumerate training strategies, keep what fits, rank by time or cost, explain the rest.

A candidate is a :class:`~shoestring.plan.memory.TrainingSetup` (micro-batch, activation
checkpointing, parallelism) plus the gradient accumulation that reaches the requested
batch size. Each is costed with the memory model and the FLOP model; a candidate is
rejected with a one-line reason (too much memory, over the time or money budget). When
nothing fits, :func:`smallest_change` names the least disruptive change that would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from shoestring.plan.catalogue import DeviceSpec
from shoestring.plan.flops import (
    OPTIMIZER_STREAM_BYTES,
    RunEstimate,
    estimate_run,
    streamed_bytes,
    training_flops_per_token,
)
from shoestring.plan.memory import MemoryBreakdown, TrainingSetup, estimate_training_memory

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from shoestring.plan.arch import ModelShape

__all__ = ["Candidate", "SearchSpace", "Workload", "search", "smallest_change"]

HEADROOM = 0.90
"""Plan to use at most this fraction of device memory (allocator fragmentation, spikes)."""


@dataclass(frozen=True)
class Workload:
    """How much training the plan must pay for."""

    sequences: int
    """Training sequences per epoch (packed sequences, or records when not packing)."""
    tokens_per_sequence: int
    """Tokens a sequence costs in compute (seq_len when packing, else the typical length)."""
    epochs: float = 1.0
    batch_size: int = 8
    """Sequences per optimizer step (micro-batch × accumulation × devices)."""


@dataclass(frozen=True)
class SearchSpace:
    micro_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    checkpointing: tuple[bool, ...] = (False, True)
    parallelisms: tuple[str, ...] = ("single",)


@dataclass(frozen=True)
class Candidate:
    setup: TrainingSetup
    grad_accum: int
    memory: MemoryBreakdown
    run: RunEstimate
    fits: bool
    reason: str
    """Why it was rejected ('' when it fits)."""

    def row(self) -> dict[str, Any]:
        s = self.setup
        return {
            "micro_batch_size": s.micro_batch_size,
            "grad_accum": self.grad_accum,
            "activation_checkpointing": s.activation_checkpointing,
            "parallelism": s.parallelism,
            "devices": s.devices,
            "bounded_heap": s.bounded_heap,
            "peak_memory_bytes": self.memory.peak_bytes,
            "required_bytes": self.memory.required_bytes,
            "step_seconds": self.run.step_seconds,
            "total_seconds": self.run.total_seconds,
            "cost_usd": self.run.cost_usd,
            "fits": self.fits,
            "reason": self.reason,
        }


def _gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB"


def evaluate(config: PretrainedConfig, shape: ModelShape, setup: TrainingSetup, work: Workload, device: DeviceSpec, *,
             memory_limit: int, budget_hours: float | None = None, budget_usd: float | None = None,
             framework_overhead: int | None = None, grad_accum: int | None = None) -> Candidate:
    """Cost one setup: memory, time, money; decide whether it fits and why not."""
    per_step = setup.micro_batch_size * max(setup.devices, 1)
    accum = grad_accum or max(1, math.ceil(work.batch_size / per_step))
    setup = replace(setup, grad_accum=accum)
    mem = estimate_training_memory(config, shape, setup, framework_overhead=framework_overhead)
    if setup.device_kind == "cpu" and setup.bounded_heap is None:
        # The trainer's auto rule, against the memory this plan may use (HEADROOM of what is free).
        from shoestring.core.allocator import needs_bounded_heap

        setup = replace(setup, bounded_heap=needs_bounded_heap(mem.peak_bytes, memory_limit / HEADROOM))
    tokens_per_micro = setup.micro_batch_size * min(work.tokens_per_sequence, setup.seq_len)
    seqs_per_step = per_step * accum
    steps = max(1, math.ceil(work.sequences * work.epochs / seqs_per_step))
    fpt = training_flops_per_token(shape, setup.seq_len, mem.trainable_params,
                                   checkpointing=setup.activation_checkpointing,
                                   lora=setup.method in ("lora", "qlora"),
                                   backward_layers=setup.trainable_layers if setup.method == "frozen" else None)
    comm = _comm_seconds(setup, shape, mem, device) + _offload_seconds(setup, mem)
    # Every device runs `accum` micro-batches per step in parallel with the others, so the
    # step time is one device's work; the bill is for all devices.
    per_micro, per_opt_step = streamed_bytes(mem, setup, shape)
    stream_rate = device.stream_rate_for(setup.compute_dtype)
    parts = measured_step_parts(config, setup, device)
    measured = None
    if parts is not None:  # this machine timed the model's own shapes: the whole step from them
        micro_s, opt_s = parts
        measured = micro_s * accum + (opt_s or 0.0)
        per_micro = 0.0
        per_opt_step = 0.0 if opt_s is not None else float(OPTIMIZER_STREAM_BYTES.get(setup.optimizer, 92)
                                                           * mem.trainable_params)
    run = estimate_run(flops_per_token=fpt, tokens_per_step=tokens_per_micro * accum, steps=steps,
                       peak_flops=device.flops_for(setup.compute_dtype),
                       utilisation=device.utilisation_for(setup.compute_dtype), devices=1,
                       usd_per_hour=device.usd_per_hour * max(setup.devices, 1), comm_seconds=comm,
                       stream_bytes_per_step=per_micro * accum + per_opt_step,
                       stream_rate=stream_rate, matmul_seconds=measured)
    reason = ""
    if mem.required_bytes > memory_limit:
        reason = f"needs {_gib(mem.required_bytes)} per device > {_gib(memory_limit)} usable"
    elif budget_hours is not None and run.total_seconds > budget_hours * 3600:
        reason = f"takes {run.total_seconds / 3600:.2f} h > budget {budget_hours} h"
    elif budget_usd is not None and run.cost_usd > budget_usd:
        reason = f"costs ${run.cost_usd:.2f} > budget ${budget_usd}"
    return Candidate(setup, accum, mem, run, not reason, reason)


UNTIMED_RECOMPUTE = 4.0 / 3.0
"""Activation checkpointing runs the forward's operators once more: forward 1 + backward ~2 + recompute 1."""


def step_terms(config: PretrainedConfig, setup: TrainingSetup, device: DeviceSpec) -> dict[str, float] | None:
    """One micro-batch's shape-timed terms (seconds; None unless this model's shapes were timed
    and k was fitted for its precision): ``calls`` = k × Σ timed calls (+ the blocks' forward
    again under checkpointing), ``faults`` = k × [bounded heap] allocated bytes / F,
    ``operators`` = c × forward operators (×4/3 under checkpointing), ``forward`` = k × Σ the
    calls' forward-only times + c × operators / 3 (an evaluation micro-batch under no_grad),
    ``optimizer`` = k × the optimizer step (absent when not timed)."""
    dtype = setup.compute_dtype
    if not device.shape_times or dtype not in device.matmul_factor_by_dtype:
        return None
    from shoestring.plan.shapes import forward_seconds, optimizer_seconds, shape_seconds, step_shapes_cached

    width = setup.expected_width()  # padded batches are as wide as their longest record
    shapes = step_shapes_cached(config, replace(setup, seq_len=width, record_lengths=()))
    seconds = shape_seconds(shapes, dtype, device.shape_times, checkpointing=setup.activation_checkpointing)
    if seconds is None:
        return None
    opt = optimizer_seconds(shapes, device.shape_times)
    k = device.matmul_factor_by_dtype[dtype]
    c = device.op_seconds_by_dtype.get(dtype, 0.0)
    recompute = UNTIMED_RECOMPUTE if setup.activation_checkpointing else 1.0
    faults = 0.0
    if setup.bounded_heap and device.fault_rate_by_dtype.get(dtype):
        # Every fresh block is a new mapping: its pages fault in (forward + backward allocations).
        faults = shapes.allocated_bytes * recompute / device.fault_rate_by_dtype[dtype]
    out = {"calls": k * seconds, "faults": faults, "operators": shapes.ops * recompute * c,
           "forward": k * (forward_seconds(shapes, dtype, device.shape_times) or 0.0) + shapes.ops * c / 3,
           "k": k, "c": c, "ops": shapes.ops}
    if opt is not None:
        out["optimizer"] = k * opt
    return out


def measured_step_parts(config: PretrainedConfig, setup: TrainingSetup,
                        device: DeviceSpec) -> tuple[float, float | None] | None:
    """(one micro-batch's seconds, the optimizer step's seconds or None when not timed) from
    this machine's timed shapes (:func:`step_terms`), or None."""
    t = step_terms(config, setup, device)
    if t is None:
        return None
    return t["calls"] + t["faults"] + t["operators"], t.get("optimizer")


def measured_matmul_seconds(config: PretrainedConfig, setup: TrainingSetup, device: DeviceSpec) -> float | None:
    """One optimizer step's timed seconds (micro-batch parts + optimizer) at grad_accum 1, or None."""
    parts = measured_step_parts(config, setup, device)
    return None if parts is None else parts[0] + (parts[1] or 0.0)


OFFLOAD_PCIE_BYTES_S = 25e9
"""Host <-> GPU bandwidth of one GPU for offloaded state, bytes/s (PCIe 4.0 x16 in practice; not measured here)."""
HOST_OPTIMIZER_BYTES_S = 20e9
"""Host memory bandwidth one GPU's offloaded optimizer step gets, bytes/s (a two-socket server's
~160 GB/s shared by 8 GPUs; not measured here)."""


def _offload_seconds(setup: TrainingSetup, mem: MemoryBreakdown) -> float:
    """Per-step cost of ``zero3-offload`` (0 otherwise): each GPU sends its gradient shard to the
    host and gets its updated weight shard back over PCIe, and the host runs the optimizer over
    that shard (:data:`OPTIMIZER_STREAM_BYTES` per parameter) at its share of host memory bandwidth.
    Without this term offloading looks free and wins every tie against ZeRO-3 on the GPU."""
    if setup.parallelism != "zero3-offload":
        return 0.0
    shard = mem.trainable_params / max(setup.devices, 1)
    item = 2 if setup.compute_dtype != "fp32" else 4
    pcie = 2 * item * shard / OFFLOAD_PCIE_BYTES_S
    host = OPTIMIZER_STREAM_BYTES.get(setup.optimizer, 92) * shard / HOST_OPTIMIZER_BYTES_S
    return pcie + host


def _comm_seconds(setup: TrainingSetup, shape: ModelShape, mem: MemoryBreakdown, device: DeviceSpec) -> float:
    """Per-step gradient/parameter traffic between devices (ring all-reduce ≈ 2× the payload)."""
    if setup.devices <= 1:
        return 0.0
    grad_bytes = mem.trainable_params * (2 if setup.compute_dtype != "fp32" else 4)
    factor = {"ddp": 2.0, "zero1": 2.0, "zero2": 2.0, "zero3": 3.0, "fsdp": 3.0, "zero3-offload": 3.0}.get(
        setup.parallelism, 2.0)
    return factor * grad_bytes * (setup.devices - 1) / setup.devices / device.interconnect_bytes_s


def search(config: PretrainedConfig, shape: ModelShape, base: TrainingSetup, work: Workload, device: DeviceSpec, *,
           space: SearchSpace, memory_limit: int, rank_by: str = "time", budget_hours: float | None = None,
           budget_usd: float | None = None, framework_overhead: int | None = None,
           grad_accum: int | None = None) -> list[Candidate]:
    """Every candidate of the space, feasible ones first, best first by ``rank_by``."""
    out: list[Candidate] = []
    for par in space.parallelisms:
        for ckpt in space.checkpointing:
            for mbs in space.micro_batch_sizes:
                if mbs > max(work.batch_size, 1) and mbs != space.micro_batch_sizes[0]:
                    continue
                s = replace(base, micro_batch_size=mbs, activation_checkpointing=ckpt, parallelism=par)  # type: ignore[arg-type]
                out.append(evaluate(config, shape, s, work, device, memory_limit=memory_limit,
                                    budget_hours=budget_hours, budget_usd=budget_usd,
                                    framework_overhead=framework_overhead, grad_accum=grad_accum))
    # The FLOP model gives equal times to every micro-batch size; break the tie the way the
    # hardware does: GPUs run large micro-batches closer to peak (fewer, bigger kernels), so
    # prefer the largest that fits; on CPU, where it makes no difference, the least memory.
    def tie(c: Candidate) -> tuple[int, ...]:
        return (-c.setup.micro_batch_size, c.memory.peak_bytes) if device.kind == "cuda" else (c.memory.peak_bytes,)

    key = (lambda c: (round(c.run.cost_usd, 6), *tie(c))) if rank_by == "cost" else (
        lambda c: (round(c.run.total_seconds, 3), *tie(c)))
    return sorted(out, key=lambda c: (not c.fits, *key(c)))


def smallest_change(config: PretrainedConfig, shape: ModelShape, base: TrainingSetup, work: Workload,
                    device: DeviceSpec, *, memory_limit: int, framework_overhead: int | None = None) -> str:
    """The least disruptive change that makes the smallest setup fit, as one sentence."""
    tiny = replace(base, micro_batch_size=1, activation_checkpointing=True)

    def fits(s: TrainingSetup) -> bool:
        return estimate_training_memory(config, shape, s, framework_overhead=framework_overhead).required_bytes <= memory_limit

    seq = base.seq_len // 2
    while seq >= 64:
        if fits(replace(tiny, seq_len=seq)):
            return f"use a shorter sequence: --seq-len {seq} fits (micro-batch 1, activation checkpointing)"
        seq //= 2
    if base.method == "full" and fits(replace(tiny, method="lora")):
        return "train LoRA adapters instead of all weights: --method lora"
    if base.method in ("full", "lora") and fits(replace(tiny, method="qlora", precision="int4")):
        return "use QLoRA (4-bit base weights): --method qlora"
    for n in (2, 4, 8, 16, 32, 64):
        if device.kind == "cuda" and fits(replace(tiny, devices=n, parallelism="zero3")):
            return f"shard over more GPUs: --devices {n} --parallelism zero3"
    for par in ("zero3-offload",):
        if device.kind == "cuda" and fits(replace(tiny, parallelism=par)):
            return "offload optimizer states and gradients to CPU: --parallelism zero3-offload"
    mem = estimate_training_memory(config, shape, tiny, framework_overhead=framework_overhead)
    ratio = memory_limit / max(mem.required_bytes, 1)
    target = shape.n_params * ratio * 0.8
    return f"use a smaller model: about {target / 1e6:.0f}M parameters or fewer would fit in {_gib(memory_limit)}"
