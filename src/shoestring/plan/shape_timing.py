"""Timing the calls of :mod:`shoestring.plan.shapes` on this machine (``--calibrate``).

Each distinct call is timed on real tensors in a fresh subprocess with glibc's default heap
(the trainer's unless memory is tight; the bounded heap's page faults are in the in-step
constants fitted per heap by :mod:`shoestring.plan.calibrate`): forward, and forward +
backward, median after a warm-up, bf16 under ``torch.autocast``.
Results are cached per machine and shape in the hardware cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

from shoestring.plan.shapes import AttentionCall, LinearCall, LossCall, OptimizerCall, StepShapes

__all__ = ["MIN_SECONDS", "fields_of", "kind_of", "measure_shapes", "time_calls"]

MIN_SECONDS = 0.15
"""Time each shape for at least this long (after a warm-up), and at least :data:`MIN_REPS` times."""
MIN_REPS = 3


def _time(fn: Any) -> float:
    """Fastest seconds of ``fn()`` after one warm-up call, repeated for at least :data:`MIN_SECONDS`.

    The minimum, not the median: on a shared machine other work only ever adds time (measured:
    a 2,044 x 49,152 loss call read 1.34 s once and 0.59-0.78 s in six reps alone); what the
    same call costs inside a step is the in-step factor's business.
    """
    min_seconds = MIN_SECONDS
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MIN_REPS or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 20:
            break
    return min(times)


def _linear_module(c: LinearCall, compute: str = "fp32") -> Any:
    import torch

    lin = torch.nn.Linear(c.in_features, c.out_features, bias=c.bias)
    if not c.lora_rank:
        lin.requires_grad_(c.weight_grad)
        return lin
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from peft import LoraConfig, inject_adapter_in_model

    holder = torch.nn.Module()
    holder.proj = lin
    holder.requires_grad_(False)
    # The trainer's LoRA (train/modeling.py): alpha = 2r, dropout on the adapter input.
    inject_adapter_in_model(LoraConfig(r=c.lora_rank, lora_alpha=2 * c.lora_rank, target_modules=["proj"],
                                       lora_dropout=c.lora_dropout), holder)
    holder.train()
    if c.fast:  # the trainer's fast paths (train/loop.py _apply_fast_paths), on this CPU
        from shoestring.train.fastpath import fast_lora_dropout, hoist_frozen_casts

        fast_lora_dropout(holder)
        if compute == "bf16":
            hoist_frozen_casts(holder, torch.bfloat16)
    return holder.proj


def _measure_linear(c: LinearCall, compute: str) -> tuple[float, float]:
    import torch

    mod = _linear_module(c, compute)
    dtype = getattr(torch, c.input_dtype)
    x = torch.randn(c.tokens, c.in_features).to(dtype).requires_grad_(c.input_grad)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if compute == "bf16" else None
    backward = c.input_grad or any(p.requires_grad for p in mod.parameters())

    def forward() -> Any:
        if cast is None:
            return mod(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # a fresh region: autocast's weight casts each time
            return mod(x)

    def both() -> None:
        y = forward()
        if backward:
            y.backward(torch.ones_like(y))
        x.grad = None
        for p in mod.parameters():
            p.grad = None

    with torch.no_grad():
        fwd = _time(forward)
    return fwd, _time(both) if backward else fwd


def _measure_attention(c: AttentionCall, compute: str) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F

    dtype = torch.bfloat16 if (c.dtype or compute) == "bf16" else torch.float32
    q = torch.randn(c.batch, c.heads, c.q_len, c.head_dim, dtype=dtype).requires_grad_(c.grad)
    k = torch.randn(c.batch, c.kv_heads, c.kv_len, c.head_dim, dtype=dtype).requires_grad_(c.grad)
    v = torch.randn(c.batch, c.kv_heads, c.kv_len, c.head_dim, dtype=dtype).requires_grad_(c.grad)
    mask = None
    if c.masked:  # a padded/packed batch's block mask: lower-triangular for causal models is the same cost
        mask = torch.ones(c.batch, 1, c.q_len, c.kv_len, dtype=torch.bool).tril()

    def forward() -> Any:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=c.dropout, is_causal=c.causal,
                                              enable_gqa=c.enable_gqa)

    def both() -> None:
        y = forward()
        y.backward(torch.ones_like(y))
        q.grad = k.grad = v.grad = None

    with torch.no_grad():
        fwd = _time(forward)
    return fwd, _time(both) if c.grad else fwd


def _measure_loss(c: LossCall, compute: str) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F

    logits = torch.randn(c.rows, c.vocab).to(getattr(torch, c.logits_dtype)).requires_grad_(True)
    targets = torch.randint(0, c.vocab, (c.rows,))

    def both() -> None:
        # train/modeling.py: logits.float(), summed cross-entropy, backward to the logits.
        F.cross_entropy(logits.float(), targets, reduction="sum").backward()
        logits.grad = None

    t = _time(both)
    return t, t


def _measure_optimizer(c: OptimizerCall) -> tuple[float, float]:
    """The trainer's step tail: clip_grad_norm_ over the trainable tensors, then foreach AdamW."""
    import torch

    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in c.shapes]
    grads = [torch.randn(s) * 1e-3 for s in c.shapes]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-4, foreach=True)

    def step() -> None:
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = _time(step)
    return t, t


def time_calls(payload: dict[str, Any]) -> dict[str, list[float]]:
    """Every call of ``payload`` (``compute``, ``calls``: [(kind, fields)], ``min_seconds``) timed
    in this process: ``{key: [forward seconds, forward + backward seconds]}``."""
    import torch

    torch.manual_seed(0)
    compute = payload["compute"]
    global MIN_SECONDS
    MIN_SECONDS = float(payload.get("min_seconds", MIN_SECONDS))
    out: dict[str, list[float]] = {}
    for kind, fields in payload["calls"]:
        if kind == "adamw":  # JSON made the shape tuples lists; the key hashes tuples
            fields = {"shapes": tuple(tuple(s) for s in fields["shapes"])}
        call = _CALL_TYPES[kind](**fields)
        key = call.key(compute)
        if key in out:
            continue
        if isinstance(call, LinearCall):
            out[key] = list(_measure_linear(call, compute))
        elif isinstance(call, AttentionCall):
            out[key] = list(_measure_attention(call, compute))
        elif isinstance(call, LossCall):
            out[key] = list(_measure_loss(call, compute))
        else:
            out[key] = list(_measure_optimizer(call))
    return out


_CALL_TYPES: dict[str, Any] = {"linear": LinearCall, "sdpa": AttentionCall, "loss": LossCall, "adamw": OptimizerCall}


def kind_of(call: Any) -> str:
    """The payload kind of a call (``linear``, ``sdpa``, ``loss``, ``adamw``)."""
    return {LinearCall: "linear", AttentionCall: "sdpa", LossCall: "loss", OptimizerCall: "adamw"}[type(call)]


def fields_of(call: Any) -> dict[str, Any]:
    """A call's fields as the payload carries them."""
    return asdict(call)


def measure_shapes(shapes: StepShapes, compute: str, *, hw: dict[str, Any] | None = None,
                   refresh: bool = False, min_seconds: float = MIN_SECONDS) -> dict[str, list[float]]:
    """Time every call of ``shapes`` not yet in this machine's cache; store and return the table.

    Returns ``{key: [forward seconds, forward + backward seconds]}`` for all cached shapes.
    ``refresh`` (what ``--calibrate`` asks for) re-times shapes cached by an earlier session,
    but not those this process already timed.
    """
    from shoestring.core.errors import ShoestringError
    from shoestring.plan.hardware import load_hardware, save_hardware

    hw = hw if hw is not None else load_hardware()
    table: dict[str, list[float]] = dict(hw.get("shape_times", {}))
    todo: list[tuple[str, dict[str, Any]]] = []
    calls = [c for c, _n in shapes.calls()] + ([shapes.optimizer] if shapes.optimizer is not None else [])
    for c in calls:
        key = c.key(compute)
        if (refresh and key not in _TIMED_HERE) or key not in table:
            todo.append((kind_of(c), fields_of(c)))
    if todo:
        payload = json.dumps({"compute": compute, "calls": todo, "min_seconds": min_seconds})
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        out = subprocess.run([sys.executable, "-m", "shoestring.plan.shape_timing", payload], capture_output=True, text=True,
                             env=env, timeout=1800)
        lines = [x for x in out.stdout.splitlines() if x.startswith("SHAPES ")]
        if out.returncode != 0 or not lines:
            tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise ShoestringError(f"timing the model's matmul shapes failed ({tail}); plan without --calibrate")
        fresh = json.loads(lines[-1][len("SHAPES "):])
        table.update(fresh)
        _TIMED_HERE.update(fresh)
        hw["shape_times"] = table
        save_hardware(hw)
    return table


_TIMED_HERE: set[str] = set()
"""Shape keys timed by this process (a calibration session re-times each shape once)."""


if __name__ == "__main__":
    print("SHAPES " + json.dumps(time_calls(json.loads(sys.argv[1]))), flush=True)
