"""Shallow twins: the planned run cut to two depths, for a few real steps on this CPU.

What a CPU training process holds resident is more than its live tensors: glibc's default
heap keeps freed blocks in its arenas (1.06-1.85x the live peak on the accuracy benchmark's
configurations, with no pattern a formula over the tensors captured), the libraries and
their thread pools stay mapped, and a pretrained checkpoint's pages may stay mapped too. All
of that depends on the step's own sequence of allocations. So the planner runs it: the
planned model, built by the trainer's own code (``shoestring.train.modeling.build_model``,
same method, LoRA, fast paths, precision, heap, optimizer, loss and the dataset's own rows
through ``shoestring.train.data.collate``) with its depth cut to two depths
(see :func:`twin_depths`). Each twin starts in a
fresh process that first imports what the trainer imports (its heap and its resident library
pages then start as a training process's do; a process *forked* after the imports would not
count the library pages it re-touches until it touches them, measured as +170 MiB of false
growth on a 4-block Llama), runs :data:`WARMUP` + :data:`STEPS` - 1 optimizer steps under the trainer's
:class:`~shoestring.core.metering.PeakMemoryMeter`.

Every block of a transformer allocates the same tensors in the same order, so what one more
block adds is measured (the difference of the twins per block) and multiplied by the blocks
the real model has: resident peak = twin(a) + (N - a) x per-block growth. The step uses the
twins the same way against the shape-timed model (:func:`shoestring.plan.resident.step_from_twins`):
the model predicts both twins too, and the full step is the shallower twin's measured step plus
the model's remaining blocks scaled by the twins' measured / modelled cost per block.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any

__all__ = ["STEPS", "TWIN_SECONDS", "measure_twins", "twin_depths"]

STEPS = 4
WARMUP = 2
"""A twin runs WARMUP + STEPS - 1 optimizer steps at least and reports the median of the steps after
the WARMUP as its steady step (glibc's arenas reach their size in two steps; per-document attention
meets new block lengths, so new kernels, in the first few)."""
TIMED_SECONDS = 3.0
MAX_TIMED = 30
"""A twin whose steps are short keeps stepping until its timed steps add up to TIMED_SECONDS (at most
MAX_TIMED of them): the step prediction multiplies the twins' difference by the blocks neither has,
so a 3-step median's noise carried too far (an 8-block model at 0.15 and 0.21 s per twin step: the
8-block step predicted +19% and, in a loaded CI run, +39% over the 0.28 s measured)."""


DEEP_FRACTION = 0.4
"""The deeper twin reaches this share of the model's blocks when :data:`TWIN_SECONDS` allows."""
TWIN_SECONDS = 60.0
"""What the deeper twin's steps may cost, at the full model's planned step x its share of the blocks."""
WHOLE_MODEL_SECONDS = 10.0
"""When the whole model's WARMUP + STEPS - 1 steps cost at most this (at the planned step), the
deeper twin is the whole model: nothing is extrapolated (an 8-block, 256-wide Llama steps in 0.28 s,
its blocks cost less than a step's jitter, and the (2, 4) twins' difference carried that jitter
into the prediction: -15% to +39% in five fresh-machine runs)."""


def twin_depths(method: str, trainable_layers: int, n_layers: int,
                full_step_seconds: float | None = None) -> tuple[int, int]:
    """The two depths to run: ``b + 2`` and a deeper one (``b`` = the trainable top blocks of a
    frozen run, else 0), or the model's last two depths when it is shallower than ``b + 4``.

    The deeper twin is ``b + 4`` blocks at least and, when its :data:`WARMUP` + :data:`STEPS` - 1
    steps fit in :data:`TWIN_SECONDS` (at ``full_step_seconds`` x depth / ``n_layers``), up to
    :data:`DEEP_FRACTION` of the model; it is the whole model when that is cheap to run
    (:data:`WHOLE_MODEL_SECONDS`). The prediction multiplies the twins' difference per block by
    the blocks neither twin has, so the gap between them sets how far a twin's noise carries: a
    twin's resident peak moves by tens of MiB run to run (SmolLM2-135M LoRA fp32, micro-batch 1:
    the 2-block twin peaked at +418 and +461 MiB above its imports in two runs), and blocks 2 -> 4
    differ by 67-97 MiB, so (2, 4) put the 30-block prediction anywhere in 1,396-1,776 MiB against
    1,698 measured; (2, 12) carries the same noise 2.8x instead of 14x. Two blocks apart at the
    least, not one: the first block's arenas grow differently from the later ones.
    """
    b = min(trainable_layers, n_layers - 1) if method == "frozen" else 0
    if b + 4 > n_layers:
        return (n_layers - 2, n_layers) if n_layers >= 3 else (1, max(2, n_layers))
    deep = b + 4
    if full_step_seconds and 0 < (WARMUP + STEPS - 1) * full_step_seconds <= WHOLE_MODEL_SECONDS:
        return b + 2, n_layers  # the model itself is cheap to run: the deeper twin is the model
    if full_step_seconds and full_step_seconds > 0:
        per_block = full_step_seconds / n_layers
        afford = int(TWIN_SECONDS / ((WARMUP + STEPS - 1) * per_block))
        deep = max(deep, min(afford, math.ceil(DEEP_FRACTION * n_layers)))
    return b + 2, min(deep, n_layers)


def measure_twins(spec: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """Run each twin of ``spec`` (see :func:`_run_twin` for its keys) in its own fresh child."""
    from shoestring.core.errors import ShoestringError

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    twins = []
    for depth in spec["depths"]:
        out = subprocess.run([sys.executable, "-m", "shoestring.plan.twin"], input=json.dumps({**spec, "depth": depth}),
                             capture_output=True, text=True, env=env, timeout=timeout)
        lines = [x for x in out.stdout.splitlines() if x.startswith("TWIN ")]
        if out.returncode != 0 or not lines:
            tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise ShoestringError(f"the planned model's short trial run failed ({tail}); plan with --no-calibrate")
        twins.append(json.loads(lines[-1][len("TWIN "):]))
    return {"twins": twins}


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """In the child: import what a training process imports, then run the twin."""
    import torch
    import transformers  # noqa: F401

    import shoestring.train.data
    import shoestring.train.fastpath
    import shoestring.train.modeling
    import shoestring.train.stage  # noqa: F401  (what `shoestring train` has loaded when its meter starts)

    try:  # the same set the machine calibration's library residency imports
        import peft  # noqa: F401
        import torch.utils.tensorboard  # noqa: F401
        import typer  # noqa: F401
    except ImportError:
        pass
    return _run_twin(spec, int(spec["depth"]))


def _run_twin(spec: dict[str, Any], depth: int) -> dict[str, Any]:
    """Build the planned model ``depth`` blocks deep and train it as the trainer does; measure.

    ``spec`` keys: model, task, method, from_scratch, lora {r, dropout, targets}, trainable_layers,
    precision (fp32|bf16), seq_len, micro_batch_size, grad_accum, activation_checkpointing,
    fast_paths, bounded_heap, layers_key, rows (token rows: input_ids/labels/position_ids/label),
    packed.
    """
    if spec.get("bounded_heap"):
        from shoestring.core.allocator import bound_cpu_allocator

        bound_cpu_allocator()
    import torch

    from shoestring.core.metering import PeakMemoryMeter, current_rss_bytes, heap_stats
    from shoestring.train import data as D
    from shoestring.train.config import LoraOptions
    from shoestring.train.modeling import LossModule, build_model

    base = current_rss_bytes()
    t_build = time.perf_counter()
    meter = PeakMemoryMeter("cpu")
    meter.__enter__()
    task = "causal-lm" if spec["task"] == "sft" else spec["task"]
    lora = spec.get("lora") or {}
    model = build_model(
        spec["model"], task, spec["method"], from_scratch=bool(spec.get("from_scratch")),
        config_overrides={spec["layers_key"]: depth}, dropout=None,
        lora=LoraOptions(r=int(lora.get("r", 16)), alpha=2 * int(lora.get("r", 16)),
                         dropout=float(lora.get("dropout", 0.05)), target_modules=lora.get("targets") or "all-linear"),
        trainable_layers=int(spec.get("trainable_layers", 2)), num_labels=2 if task == "classification" else None,
        id2label=None, device="cpu", seed=0,
    )  # fmt: skip
    if spec.get("activation_checkpointing"):
        core: Any = getattr(model, "get_base_model", lambda: model)()
        core.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.get("fast_paths", True):
        _fast_paths(model, spec, task)
    model.train()
    build_seconds = time.perf_counter() - t_build
    lossmod = LossModule.create(model, task)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "norm" not in n.lower()]
    rest = [p for p in params if all(p is not q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-4, foreach=True)
    rows = [D.Row(r["input_ids"], r["labels"], r["position_ids"], r.get("label")) for r in spec["rows"]]
    mbs, accum = int(spec["micro_batch_size"]), int(spec.get("grad_accum", 1))
    cast = (torch.autocast(device_type="cpu", dtype=torch.bfloat16) if spec.get("precision") == "bf16"
            else None)
    times: list[float] = []
    step = 0
    while step < WARMUP + STEPS - 1 or (sum(times[WARMUP:]) < TIMED_SECONDS and step < WARMUP + MAX_TIMED):
        t0 = time.perf_counter()
        start = step * mbs * accum
        chosen = [rows[(start + i) % len(rows)] for i in range(mbs * accum)]
        batches = [D.collate(chosen[j:j + mbs], 0, packed=bool(spec.get("packed"))) for j in range(0, len(chosen), mbs)]
        labels = sum(float((b["labels"] != D.IGNORE).sum()) if task != "classification" else mbs for b in batches)
        for b in batches:
            if task == "masked-lm":
                _mask(b, torch.Generator().manual_seed(step))
            with cast if cast is not None else _Null():
                loss_sum, _n = lossmod(**{k: v for k, v in b.items() if k != "real_tokens"})
            (loss_sum / max(labels, 1.0)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        step += 1
    meter.stop()
    return {"depth": depth, "base_rss_bytes": base, "peak_rss_bytes": meter.peak_absolute_bytes,
            "step_seconds": statistics.median(times[WARMUP:]), "first_step_seconds": times[0], "heap": heap_stats(),
            "step_times": [round(t, 4) for t in times],
            "build_seconds": build_seconds}


def _fast_paths(model: Any, spec: dict[str, Any], task: str) -> None:
    """The trainer's fast paths for this run (``train.loop._apply_fast_paths``)."""
    import torch

    from shoestring.train.fastpath import fast_lora_dropout, hoist_frozen_casts, use_packed_attention

    if spec.get("packed") and task == "causal-lm":
        use_packed_attention(model)
    if spec["method"] == "lora":
        fast_lora_dropout(model)
        if spec.get("precision") == "bf16":
            hoist_frozen_casts(model, torch.bfloat16)


def _mask(batch: dict[str, Any], gen: Any) -> None:
    """Masked-LM targets at 15% of positions (what the trainer's mask_tokens selects)."""
    import torch

    labels = batch["labels"]
    keep = torch.rand(labels.shape, generator=gen) < 0.15
    batch["labels"] = torch.where(keep, batch["input_ids"], torch.full_like(labels, -100))


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


if __name__ == "__main__":
    print("TWIN " + json.dumps(_child(json.loads(sys.stdin.read()))), flush=True)
