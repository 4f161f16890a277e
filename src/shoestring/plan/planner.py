"""The planning computation behind `shoestring plan`: its typed config and :func:`make_plan`.

``make_plan`` turns a :class:`PlanConfig` (and the dataset it plans for) into the ``plan.json``
document: the chosen strategy (the keys ``shoestring train`` reads), the predicted peak memory by
term, step and total time, cost, every candidate considered and why each rejected one was
rejected. The stage façade (:mod:`shoestring.plan.stage`) writes it; the cluster planner
(:mod:`shoestring.plan.cluster_plan`) and the job queue (:mod:`shoestring.plan.jobs`) call it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from shoestring.core.config import ArtifactInput, HashedPath, StageConfig
from shoestring.core.errors import ShoestringError
from shoestring.plan.federated import FederatedPlanOptions

if TYPE_CHECKING:
    from shoestring.core.workspace import StageContext

__all__ = ["PlanConfig", "make_plan"]


class PlanConfig(StageConfig):
    """Inputs of the compute planner (YAML keys = CLI flags)."""

    model: Annotated[str, ArtifactInput("model", external_ok=True)] = "smollm2-135m-instruct"
    """Model to plan for: packaged name, hub id (config only), local folder, .gguf, model artifact or a config.json path."""
    task: Literal["causal-lm", "sft", "masked-lm", "classification"] = "causal-lm"
    """What the model is trained for (decides the head and the loss); sft costs the same as causal-lm."""
    dataset: Annotated[str | None, ArtifactInput("dataset")] = None
    """Curated dataset artifact (recipe stage id or folder); its train.jsonl is tokenised with the model's tokenizer."""
    dataset_tokens: int | None = Field(default=None, ge=1)
    """Training tokens per epoch when no dataset artifact is given."""
    epochs: float = Field(default=1.0, gt=0)
    """Passes over the training data."""
    seq_len: int = Field(default=256, ge=8)
    """Sequence length in tokens (longer records are truncated; packed sequences have exactly this length)."""
    packing: bool = True
    """Pack several records into each sequence (no padding); otherwise one record per sequence."""
    method: Literal["full", "lora", "qlora", "frozen"] = "lora"
    """full = every weight trains; lora = low-rank adapters; qlora = adapters on a 4-bit base; frozen = only the top layers and head train."""
    lora_rank: int = Field(default=16, ge=1)
    """LoRA rank r (trainable parameters per adapted Linear = r·(in + out)); the trainer's default is 16."""
    lora_targets: list[str] = Field(default_factory=lambda: ["all-linear"])
    """Linear layer names that get adapters (e.g. q_proj v_proj), or all-linear (every Linear but the head; the trainer's default)."""
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the adapter input (it saves a mask and a copy for backward)."""
    trainable_layers: int = Field(default=2, ge=0)
    """method=frozen: number of top transformer blocks that train (final norm and head train too)."""
    precision: Literal["auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16", "fp16", "int8", "int4"] = "auto"
    """Weights/compute precision; auto = bf16-mixed on GPUs with bf16 and on CPUs with native bf16
    (AVX512-BF16/AMX), fp32 on other CPUs, fp16-mixed on other GPUs."""
    optimizer: Literal["adamw", "adamw-8bit", "sgd", "adafactor"] = "adamw"
    """Optimizer (decides the optimizer-state bytes per trainable parameter: 8, 2, 4, ~0)."""
    activation_checkpointing: bool | None = None
    """Force activation checkpointing on or off; unset = search both."""
    micro_batch_size: int | None = Field(default=None, ge=1)
    """Sequences per forward pass per device; unset = the fastest that fits."""
    grad_accum: int | None = Field(default=None, ge=1)
    """Micro-batches per optimizer step; unset = batch_size / (micro-batch × devices)."""
    batch_size: int = Field(default=8, ge=1)
    """Sequences per optimizer step over all devices (the effective batch)."""
    device: str = "auto"
    """Device to plan for: auto (a local GPU, else this CPU), cpu, or a catalogue GPU (a100-80gb, h100-80gb, l4-24gb, t4-16gb, ...)."""
    devices: int = Field(default=1, ge=1)
    """Number of devices (data parallel)."""
    parallelism: Literal["auto", "single", "ddp", "zero1", "zero2", "zero3", "fsdp", "zero3-offload"] = "auto"
    """How several devices share the model; auto = search ddp and ZeRO stages."""
    memory_limit_gib: float | None = Field(default=None, gt=0)
    """Usable memory per device in GiB (default: the device's memory; on CPU, the RAM available now)."""
    price_per_hour: float | None = Field(default=None, ge=0)
    """Override the device price in dollars per device-hour."""
    budget_hours: float | None = Field(default=None, gt=0)
    """Reject plans that take longer than this many hours."""
    budget_usd: float | None = Field(default=None, gt=0)
    """Reject plans that cost more than this many dollars."""
    rank_by: Literal["time", "cost"] = "time"
    """Order feasible plans by total time or by cost."""
    calibrate: bool | None = None
    """CPU: unset = calibrate on first use (this machine's probe steps, under a minute, cached under its
    hardware + library fingerprint; the model's own shapes and its two shallow twins, b+2 blocks and up to
    40% of the model (b = a frozen run's trainable top blocks), the first time it is planned); true =
    refresh all of it now; false = plan from uncalibrated
    defaults (live tensors only)."""
    explain: bool = False
    """Print every term of the predicted memory and time and how it was obtained."""
    jobs: Annotated[Path | None, HashedPath()] = None
    """YAML file of several jobs to schedule on the available devices (see docs); replaces the single-job plan.
    With --cluster the devices are the cluster's nodes and each job's `train:` config runs there as a Ray task."""
    cluster: str | None = None
    """Plan for a Ray cluster's nodes: auto, host:port or ray://host:port; says whether the job needs more
    than one node and the data/tensor/ZeRO layout it would use (devices and memory come from the cluster)."""
    interconnect_gbps: float | None = Field(default=None, gt=0)
    """Bandwidth between devices in Gbit/s per device (default: the catalogue's NVLink/PCIe figure; across
    cluster nodes 25, Ethernet)."""
    inference_batch: int = Field(default=1, ge=1)
    """For the inference estimate in plan.json: concurrent sequences (KV cache at seq_len tokens each)."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Attention implementation the trainer will use (eager materialises seq×seq scores)."""
    fast_paths: bool = True
    """Plan for the trainer's fast paths (its default ``fast_paths: true``): per-document attention on
    packed rows, LoRA's 1-byte dropout mask (CPU), frozen LoRA weights stored in bf16/fp16 under autocast."""
    federated: FederatedPlanOptions | None = None
    """Also predict the bytes a federated run of this model sends per round and in total (YAML / --config only)."""




def _precision(cfg: PlanConfig, device_kind: str, bf16: bool) -> str:
    if cfg.method == "qlora":
        return "int4"
    if cfg.precision != "auto":
        return cfg.precision
    if device_kind == "cpu":
        from shoestring.core.metering import cpu_bf16_native

        # Same rule as the trainer's default: bf16 autocast where the CPU multiplies bf16 natively.
        return "bf16-mixed" if cpu_bf16_native() else "fp32"
    return "bf16-mixed" if bf16 else "fp16-mixed"


def _workload(cfg: PlanConfig, ctx: StageContext | None, model_spec: str) -> tuple[Any, dict[str, Any]]:
    from shoestring.plan.search import Workload

    info: dict[str, Any] = {}
    if ctx is not None and "dataset" in ctx.inputs:
        import time

        from shoestring.models.loading import load_tokenizer
        from shoestring.plan.tokens import count_dataset_tokens

        art = ctx.inputs["dataset"]
        tok = load_tokenizer(model_spec)  # a first use converts the packaged model once: not the trainer's setup
        t0 = time.perf_counter()
        counted, lengths = count_dataset_tokens(art.file("train.jsonl"), tok)
        tokenize_seconds = time.perf_counter() - t0
        if counted.records == 0:
            raise ShoestringError(f"dataset {art.path} has no usable train records (need 'text' or 'messages')")
        truncated = [min(n, cfg.seq_len) for n in lengths]
        info = {"records": counted.records, "tokens": counted.tokens, "max_tokens": counted.max_tokens,
                "mean_tokens": round(counted.mean_tokens, 1), "p95_tokens": counted.p95_tokens,
                "skipped": counted.skipped, "tokens_after_truncation": sum(truncated),
                "records_truncated": sum(1 for n in lengths if n > cfg.seq_len),
                "tokenize_seconds": round(tokenize_seconds, 3)}
        if cfg.packing and cfg.task in ("causal-lm", "sft"):
            from shoestring.plan.tokens import packed_segments

            # Pack as the trainer will: the rows and the documents each row holds.
            segments, seqs = packed_segments(lengths, cfg.seq_len, chunk=cfg.task == "causal-lm")
            info["doc_segments_per_row"] = [list(x) for x in segments]
            per_seq = cfg.seq_len
        elif cfg.packing and cfg.task == "masked-lm":  # the trainer concatenates records into full rows
            seqs = math.ceil(counted.tokens / cfg.seq_len)
            per_seq = cfg.seq_len
        else:  # padded batches (classification, packing off): as wide as their longest record
            from shoestring.plan.tokens import length_quantiles

            seqs = counted.records
            per_seq = max(1, math.ceil(sum(truncated) / len(truncated)))
            info["record_length_quantiles"] = list(length_quantiles(lengths, cfg.seq_len))
    elif cfg.dataset_tokens is not None:
        info = {"tokens": cfg.dataset_tokens}
        seqs = math.ceil(cfg.dataset_tokens / cfg.seq_len)
        per_seq = cfg.seq_len
    else:
        raise ShoestringError("plan needs the amount of data: pass --dataset <curated artifact> or --dataset-tokens N")
    return Workload(sequences=seqs, tokens_per_sequence=per_seq, epochs=cfg.epochs, batch_size=cfg.batch_size), info


def _model_spec(cfg: PlanConfig, ctx: StageContext | None) -> str:
    if ctx is not None and "model" in ctx.inputs:
        return str(ctx.inputs["model"].path)
    return cfg.model



def make_plan(cfg: PlanConfig, ctx: StageContext | None = None, *, on_nodes: bool = False) -> dict[str, Any]:
    """The whole planning computation; returns the ``plan.json`` document.

    ``on_nodes``: the devices are cluster nodes (:mod:`shoestring.plan.cluster_plan`), so
    ``devices > 1`` may be CPU nodes, one worker each.
    """
    from dataclasses import asdict, replace

    import psutil

    from shoestring.plan.arch import describe_model, load_model_config
    from shoestring.plan.federated import plan_traffic
    from shoestring.plan.hardware import load_hardware, resolve_device
    from shoestring.plan.memory import TrainingSetup
    from shoestring.plan.search import SearchSpace, search, smallest_change

    spec = _model_spec(cfg, ctx)
    # A stage run measures what it lacks (calibration, shapes, twins); a programmatic re-plan
    # (assess's what-ifs, a jobs file) uses this machine's cached measurements only.
    console = getattr(ctx, "console", None)
    measure = console is not None
    task = "causal-lm" if cfg.task == "sft" else cfg.task
    config = load_model_config(spec)
    shape = describe_model(config, task)
    device = resolve_device(cfg.device)
    calibration: dict[str, Any] = {}
    if device.kind == "cpu":
        from shoestring.plan.headline import ensure_calibration

        calibration = ensure_calibration(cfg.calibrate if measure else False, console)
        device = resolve_device(cfg.device)
    if cfg.price_per_hour is not None:
        device = replace(device, usd_per_hour=cfg.price_per_hour)
    if cfg.interconnect_gbps is not None:
        device = replace(device, interconnect_bytes_s=cfg.interconnect_gbps * 1e9 / 8)
    if cfg.memory_limit_gib is not None:
        limit = int(cfg.memory_limit_gib * 1024**3)
    elif device.kind == "cpu":
        limit = int(psutil.virtual_memory().available * 0.9)
    else:
        from shoestring.plan.search import HEADROOM

        limit = int(device.memory_bytes * HEADROOM)
    if device.kind == "cpu" and cfg.devices > 1 and cfg.cluster is None and not on_nodes:
        raise ShoestringError("--devices > 1 needs GPUs or --cluster (CPU nodes); plan for a catalogue GPU with "
                              "--device (e.g. a100-80gb)")
    hw = load_hardware() if device.kind == "cpu" else {}
    overhead = hw.get("calibration", {}).get("framework_overhead_bytes") if device.kind == "cpu" else None
    precision = _precision(cfg, device.kind, device.bf16)
    work, data_info = _workload(cfg, ctx, spec)
    base = TrainingSetup(
        task=task, method=cfg.method, lora_rank=cfg.lora_rank, lora_targets=tuple(cfg.lora_targets),
        lora_dropout=cfg.lora_dropout, trainable_layers=cfg.trainable_layers, precision=precision,  # type: ignore[arg-type]
        optimizer=cfg.optimizer, seq_len=cfg.seq_len, devices=cfg.devices, device_kind=device.kind,
        attn_implementation=cfg.attn_implementation, micro_batch_size=cfg.micro_batch_size or 1,
        fast_paths=cfg.fast_paths,
        doc_segments=tuple((int(n), float(w)) for n, w in data_info.get("doc_segments_per_row", ())),
        record_lengths=tuple(int(n) for n in data_info.get("record_length_quantiles", ())),
    )
    timed = replace(base, micro_batch_size=cfg.micro_batch_size or min(4, cfg.batch_size))
    if device.kind == "cpu" and calibration.get("state") == "fresh" and cfg.calibrate is not False and measure:
        from shoestring.plan.search import measured_step_parts

        if cfg.calibrate or measured_step_parts(config, timed, device) is None:
            # Time this model's own Linear, attention, loss and optimizer shapes at the planned
            # micro-batch (others are scaled from it), then re-read the device with them.
            from shoestring.plan.calibrate import calibrate_shapes

            if console is not None:
                console.print("timing this model's matmul, attention, loss and optimizer shapes (once; cached)")
            calibrate_shapes(config, timed)
            device = replace(resolve_device(cfg.device), usd_per_hour=device.usd_per_hour)
    if cfg.parallelism != "auto":
        pars: tuple[str, ...] = (cfg.parallelism,)
    elif cfg.devices > 1:  # offloading to the CPU frees nothing when the device is the CPU (cluster CPU nodes)
        pars = ("ddp", "zero1", "zero2", "zero3") + (("zero3-offload",) if device.kind == "cuda" else ())
    else:
        pars = ("single",)
    mbs = (cfg.micro_batch_size,) if cfg.micro_batch_size else tuple(
        b for b in (1, 2, 4, 8, 16, 32, 64) if b <= max(1, cfg.batch_size // cfg.devices))
    ckpt = (cfg.activation_checkpointing,) if cfg.activation_checkpointing is not None else (False, True)
    cands = search(config, shape, base, work, device, space=SearchSpace(mbs, ckpt, pars), memory_limit=limit,
                   rank_by=cfg.rank_by, budget_hours=cfg.budget_hours, budget_usd=cfg.budget_usd,
                   framework_overhead=overhead, grad_accum=cfg.grad_accum)
    best = cands[0]
    suggestion = "" if best.fits else smallest_change(config, shape, base, work, device, memory_limit=limit,
                                                      framework_overhead=overhead)
    s = best.setup
    mem = best.memory
    local: dict[str, Any] = {}
    if device.kind == "cpu" and calibration.get("state") == "fresh":
        from shoestring.plan.headline import cpu_headline

        dataset = ctx.inputs["dataset"].file("train.jsonl") if ctx is not None and "dataset" in ctx.inputs else None
        local = cpu_headline(cfg=cfg, config=config, shape=shape, best=best, device=device, spec=spec,
                             dataset=dataset, data_info=data_info, calibration=calibration, console=console,
                             measure=measure)
    elif device.kind == "cpu":
        local = {"calibration": calibration}
    if device.kind == "cpu":  # what the cache check (`stale`) compares with this machine's calibration
        from shoestring.plan.hardware import calibration_id

        local["calibration"] = {**local["calibration"], **calibration_id()}
    headline = dict(local.get("predicted", {}))
    if device.kind == "cuda":
        from shoestring.plan.memory import CUDA_CONTEXT_BYTES, CUDA_RESERVED_FACTOR

        headline["reserved_peak_bytes"] = int(mem.peak_bytes * CUDA_RESERVED_FACTOR) + CUDA_CONTEXT_BYTES
        headline["reserved_how"] = (f"modelled, not measured: allocated peak x {CUDA_RESERVED_FACTOR} (caching "
                                    f"allocator segments) + {CUDA_CONTEXT_BYTES >> 20} MiB CUDA context")
    step_seconds = headline.get("step_seconds", best.run.step_seconds)
    steps = best.run.steps
    return {
        "model": spec,
        "task": cfg.task,
        "method": cfg.method,
        "lora": {"rank": cfg.lora_rank, "targets": list(cfg.lora_targets), "dropout": cfg.lora_dropout}
        if cfg.method in ("lora", "qlora") else None,
        "trainable_layers": cfg.trainable_layers if cfg.method == "frozen" else None,
        "seq_len": cfg.seq_len,
        "packing": cfg.packing,
        "micro_batch_size": s.micro_batch_size,
        "grad_accum": best.grad_accum,
        "batch_size": s.micro_batch_size * best.grad_accum * s.devices,
        "precision": precision,
        "optimizer": cfg.optimizer,
        "activation_checkpointing": s.activation_checkpointing,
        "parallelism": s.parallelism,
        "devices": s.devices,
        "device": {"name": device.name, "kind": device.kind, "memory_bytes": device.memory_bytes,
                   "usable_bytes": limit, "usd_per_hour": device.usd_per_hour, "utilisation": device.utilisation_for(s.compute_dtype),
                   "peak_flops": device.flops_for(s.compute_dtype), "calibrated": device.measured},
        "fits": best.fits,
        "reason": best.reason,
        "suggestion": suggestion,
        "parameters": {"total": shape.n_params, "trainable": mem.trainable_params,
                       "embedding": shape.n_embedding_params},
        "architecture": {k: v for k, v in asdict(shape).items() if k not in ("linear_shapes", "layer_param_counts")},
        "data": {**data_info, "sequences_per_epoch": work.sequences, "tokens_per_sequence": work.tokens_per_sequence,
                 "epochs": cfg.epochs},
        "predicted": {
            "peak_memory_bytes": mem.peak_bytes,
            "live_peak_bytes": mem.peak_bytes - mem.framework_overhead,
            "required_bytes": mem.required_bytes,
            "memory_terms": mem.terms(),
            **headline,
            "step_seconds": step_seconds,
            "steps": steps,
            "total_seconds": step_seconds * steps,
            "cost_usd": best.run.cost_usd * step_seconds / max(best.run.step_seconds, 1e-9),
            "flops_per_step": best.run.flops_per_step,
            "tokens_per_second": best.run.tokens_per_second * best.run.step_seconds / max(step_seconds, 1e-9),
        },
        "run": local.get("run"),
        "explain": local.get("explain", []),
        "calibration": local.get("calibration"),
        "feedback": local.get("feedback"),
        "twins": local.get("twins"),
        "cpu_heap": _heap(s, mem.peak_bytes, hw) if device.kind == "cpu" else None,
        "inference": _inference(shape, cfg, device.kind),
        "federated": None if cfg.federated is None else plan_traffic(
            shape, cfg.method, list(cfg.lora_targets), cfg.lora_rank, mem.trainable_params, cfg.federated),
        "candidates": [c.row() for c in cands],
    }


def _heap(s: Any, peak: int, hw: dict[str, Any]) -> dict[str, Any]:
    """Which glibc heap the trainer will pick (its auto rule) and, for the default heap, the most
    resident memory to expect: the live peak × ``UNBOUNDED_HEAP_FACTOR`` (the retention
    ``--calibrate`` measured on its probes is reported beside it)."""
    from shoestring.core.allocator import UNBOUNDED_HEAP_FACTOR

    retention = (hw.get("calibration", {}).get("heap_retention") or {}).get("median")
    out: dict[str, Any] = {"bounded": bool(s.bounded_heap), "retention_probes": retention}
    if not s.bounded_heap:
        out["resident_peak_upper_bytes"] = int(peak * UNBOUNDED_HEAP_FACTOR)
    return out


def _inference(shape: Any, cfg: PlanConfig, kind: str) -> dict[str, Any]:
    """Serving memory at ``inference_batch`` × ``seq_len``: weights + GQA-aware KV cache + activations."""
    from shoestring.plan.memory import estimate_inference_memory

    wb = 4 if kind == "cpu" else 2  # fp32 on CPU, bf16/fp16 on GPUs
    est = estimate_inference_memory(shape, batch=cfg.inference_batch, context=cfg.seq_len, weight_bytes=wb,
                                    kv_bytes=wb)
    return {"batch": cfg.inference_batch, "context": cfg.seq_len, "bytes_per_weight": wb, **est}
