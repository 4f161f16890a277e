"""The matmul work of one training step, shape by shape, and its measured time on this machine.

One matmul rate for a whole model mispredicts a CPU step: a 256×49k vocabulary head runs
at another fraction of the machine's peak than a 256×256 projection, and peft's rank-r
adapters (two thin matmuls, a dropout, a scale, casts) cost more than their FLOPs say.
So ``--calibrate`` times the *model's own* shapes instead:

* :func:`step_shapes` runs one forward of the model on the meta device (nothing allocated)
  with the planned trainable parameters (LoRA injected by peft, frozen blocks) and records
  every ``nn.Linear`` call (in, out, bias, tokens, whether autograd will compute the input
  gradient and the weight gradient, the input dtype under autocast), every
  ``scaled_dot_product_attention`` call as training runs it, the trainer's vocabulary loss
  and the optimizer step; a peft LoRA Linear is one call (base matmul, dropout, adapters
  and scaling together). A dispatch mode counts the forward's operators and the bytes
  of the tensors they allocate.
* :func:`shoestring.plan.shape_timing.measure_shapes` times each distinct call on real
  tensors (``--calibrate``; cached per machine and shape).
* :func:`shape_seconds` and :func:`optimizer_seconds` sum them, with a recomputed forward
  for activation checkpointing; the search scales them by the in-step factor and adds a
  fixed cost per dispatched forward operator, both fitted on the probe steps of
  :mod:`shoestring.plan.calibrate`.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from shoestring.plan.memory import TrainingSetup

__all__ = ["AttentionCall", "LinearCall", "LossCall", "OptimizerCall", "StepShapes", "forward_seconds",
           "optimizer_seconds", "shape_seconds",
           "step_shapes", "step_shapes_cached", "with_batch"]



@dataclass(frozen=True)
class LinearCall:
    """One ``nn.Linear`` (or peft LoRA Linear) call of the forward, as autograd will run it."""

    in_features: int
    out_features: int
    bias: bool
    tokens: int
    """Rows of the input (batch × positions that reach this layer)."""
    input_grad: bool
    """Backward computes the input's gradient (the input requires grad)."""
    weight_grad: bool
    """Backward computes the (base) weight's gradient (the weight trains)."""
    input_dtype: str = "float32"
    lora_rank: int = 0
    """Rank of the peft adapter wrapped around this Linear (0: plain Linear)."""
    lora_dropout: float = 0.0
    in_block: bool = True
    """Inside a transformer block (recomputed under activation checkpointing)."""
    fast: bool = False
    """A LoRA call as the trainer's fast paths run it: ``FastDropout`` and, under autocast, the
    frozen base weight stored at the low precision (:mod:`shoestring.train.fastpath`)."""

    def key(self, compute: str) -> str:
        return (f"linear|{compute}|{self.in_features}x{self.out_features}|b{int(self.bias)}|t{self.tokens}|"
                f"dx{int(self.input_grad)}|dw{int(self.weight_grad)}|{self.input_dtype}|r{self.lora_rank}|"
                f"p{self.lora_dropout}|f{int(self.fast)}")


@dataclass(frozen=True)
class AttentionCall:
    """One ``scaled_dot_product_attention`` call as the training step runs it."""

    batch: int
    heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    masked: bool
    """A boolean (batch, 1, q, kv) mask is passed (padded batches; packed batches with document resets)."""
    causal: bool
    """``is_causal`` without a mask (the fused kernel then skips the upper triangle)."""
    dropout: float
    grad: bool
    """Backward runs through it (false below the lowest trainable block)."""
    enable_gqa: bool = False
    dtype: str = ""
    """The precision the kernel runs in when it is not the step's (the fast path's fp32 blocks)."""
    packed_docs: bool = False
    """One document of a packed row (the trainer's per-document attention, ``batch`` = 1):
    its count grows with the micro-batch instead of its batch."""

    def key(self, compute: str) -> str:
        return (f"sdpa|{compute}|b{self.batch}h{self.heads}kv{self.kv_heads}|{self.q_len}x{self.kv_len}|"
                f"d{self.head_dim}|m{int(self.masked)}c{int(self.causal)}|p{self.dropout}|g{int(self.grad)}|"
                f"gqa{int(self.enable_gqa)}|{self.dtype or compute}|doc{int(self.packed_docs)}")


@dataclass(frozen=True)
class LossCall:
    """The trainer's vocabulary loss: (rows, vocab) logits cast to fp32, cross-entropy, backward."""

    rows: int
    vocab: int
    logits_dtype: str = "float32"

    @property
    def tokens(self) -> int:
        return self.rows

    def key(self, compute: str) -> str:
        return f"loss|{compute}|t{self.rows}|v{self.vocab}|{self.logits_dtype}"


@dataclass(frozen=True)
class OptimizerCall:
    """One optimizer step (gradient clipping + torch's foreach AdamW) over the trainable tensors."""

    shapes: tuple[tuple[int, ...], ...]
    """Shape of every trainable parameter tensor."""

    def key(self, compute: str) -> str:
        import hashlib

        digest = hashlib.sha256(repr(sorted(self.shapes)).encode()).hexdigest()[:12]
        total = sum(_numel(s) for s in self.shapes)
        return f"adamw|n{len(self.shapes)}|p{total}|{digest}"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class StepShapes:
    """Every timed call of one micro-batch (matmuls, attention, loss), with how often it
    happens, and the optimizer step."""

    linears: tuple[tuple[LinearCall, float], ...]
    attention: tuple[tuple[AttentionCall, float], ...]
    loss: tuple[tuple[LossCall, float], ...] = ()
    optimizer: OptimizerCall | None = None
    allocated_bytes: int = 0
    """Bytes of every new tensor the forward creates (timed calls included; views excluded):
    under the bounded heap each is a fresh mapping whose pages fault in (its backward's
    allocations are proportional)."""
    ops: float = 0.0
    """Operators the forward dispatches (views excluded; forward-only ones in frozen blocks at a
    third): each costs a fixed overhead in a step (dispatch, autograd bookkeeping, its backward)
    beyond what the timed calls' isolated times hold."""

    def calls(self) -> tuple[tuple[Any, float], ...]:
        return (*self.linears, *self.attention, *self.loss)

    def keys(self, compute: str) -> list[str]:
        extra = [self.optimizer.key(compute)] if self.optimizer is not None else []
        return [c.key(compute) for c, _ in self.calls()] + extra


def _count(calls: list[Any]) -> tuple[tuple[Any, float], ...]:
    """Calls (or ``(call, weight)`` pairs) → ``((call, how often), ...)``."""
    out: dict[Any, float] = {}
    for c in calls:
        c, w = c if isinstance(c, tuple) else (c, 1)
        out[c] = out.get(c, 0) + w
    return tuple(out.items())


def step_shapes(config: PretrainedConfig, task: str, setup: TrainingSetup, *, packed: bool = True) -> StepShapes:
    """The Linear and attention calls of one forward of ``setup``, recorded on the meta device.

    Token counts follow the trainer (``train/modeling.py``): a causal LM's head runs on the
    B·(T-1) positions that have a next token, a masked LM's head on the ``mlm_probability``
    share of positions, a classifier's pooler and head on one row per sequence (as the
    model runs them). Attention follows what transformers passes to SDPA in training: a
    boolean (B, 1, T, T) mask with full-head K/V whenever the batch is padded or packed with
    document resets (``packed`` causal-LM batches nearly always are); the causal fast path
    only for an unpacked, unpadded causal batch (``packed=False`` and no padding is not
    modelled: the trainer pads unpacked batches).

    With ``setup.fast_paths`` (the trainer's default) a packed causal LM's attention is
    instead one causal SDPA per document (``setup.doc_segments``; fp32 on CPU, K/V at their
    own head count); LoRA calls are
    timed with ``FastDropout`` and hoisted frozen weights.
    """
    import torch
    import torch.nn.functional as F

    from shoestring.plan.arch import _autocast_linear, _set_trainable, meta_model
    from shoestring.plan.memory import _trainable_spec

    config = copy.deepcopy(config)
    if task == "classification" and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0
    model: Any = meta_model(config, task, setup.attn_implementation)
    model.train()
    _set_trainable(model, _trainable_spec(setup))
    autocast = setup.precision in ("bf16-mixed", "fp16-mixed")
    docs = setup.fast_paths and packed and task == "causal-lm"
    segments = setup.doc_segments or ((setup.seq_len, 1.0),)
    text = config.get_text_config()
    kv_heads_cfg = int(getattr(text, "num_key_value_heads", None) or getattr(text, "num_attention_heads", 0) or 0)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setup.compute_dtype, torch.float32)
    batch, seq = setup.micro_batch_size, setup.seq_len
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    from shoestring.plan.flops import _MLM_HEADS

    n_layers = int(getattr(config.get_text_config(), "num_hidden_layers", 0) or 0)
    from shoestring.plan.arch import _layer_blocks

    in_blocks = {id(m) for b in _layer_blocks(model, n_layers) for m in b.modules()}
    lora_children: set[int] = set()
    for mod in model.modules():
        if hasattr(mod, "lora_A") and hasattr(mod, "base_layer"):
            lora_children.update(id(m) for m in mod.modules() if m is not mod)
    linears: list[LinearCall] = []

    def hook_for(name: str, mod: Any) -> Any:
        def pre(_m: Any, args: Any) -> None:
            x = args[0]
            base = getattr(mod, "base_layer", mod)
            tokens = x.numel() // x.shape[-1]
            if mod is out_emb and task == "causal-lm":
                tokens = batch * (seq - 1)  # the loss module runs the head on positions with a target
            elif task == "masked-lm" and name.split(".")[0] in _MLM_HEADS:
                tokens = max(1, round(setup.mlm_probability * batch * seq))
            rank = 0
            if base is not mod:
                rank = int(next(iter(mod.r.values()))) if isinstance(getattr(mod, "r", None), dict) else 0
            drop = 0.0
            if rank:
                d = next(iter(mod.lora_dropout.values()))
                drop = float(getattr(d, "p", 0.0))
            linears.append(LinearCall(
                in_features=int(base.in_features), out_features=int(base.out_features), bias=base.bias is not None,
                tokens=int(tokens), input_grad=bool(x.requires_grad), weight_grad=bool(base.weight.requires_grad),
                input_dtype=str(x.dtype).replace("torch.", ""), lora_rank=rank, lora_dropout=drop,
                in_block=id(mod) in in_blocks, fast=bool(rank) and setup.fast_paths))
        return pre

    hooks = []
    for name, mod in model.named_modules():
        is_lora = hasattr(mod, "lora_A") and hasattr(mod, "base_layer")
        if (isinstance(mod, torch.nn.Linear) and id(mod) not in lora_children) or is_lora:
            hooks.append(mod.register_forward_pre_hook(hook_for(name, mod)))
    attention: list[Any] = []
    original_sdpa, original_linear = F.scaled_dot_product_attention, F.linear

    def sdpa(q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
             scale: Any = None, enable_gqa: bool = False) -> Any:
        if docs and dropout_p == 0:
            b, h, tq, d = q.shape
            cpu = setup.device_kind == "cpu"
            for length, per_row in segments:
                attention.append((AttentionCall(batch=1, heads=int(h), kv_heads=kv_heads_cfg, q_len=int(length),
                                                kv_len=int(length), head_dim=int(d), masked=False, causal=True,
                                                dropout=0.0, grad=bool(q.requires_grad),
                                                enable_gqa=kv_heads_cfg != int(h), dtype="fp32" if cpu else "",
                                                packed_docs=True), per_row * int(b)))
            if autocast:
                q, k, v = q.to(low), k.to(low), v.to(low)
            # The same output shape, connected to q, k, v (later layers' gradients depend on it).
            return original_sdpa(q, k, v, is_causal=True, scale=scale, enable_gqa=enable_gqa)
        if autocast:
            q, k, v = q.to(low), k.to(low), v.to(low)
        b, h, tq, d = q.shape
        # Training batches are padded or packed: transformers then passes a boolean mask and
        # repeats K/V to every head (see the docstring), whatever this meta run was given.
        attention.append(AttentionCall(batch=int(b), heads=int(h), kv_heads=int(h), q_len=int(tq),
                                       kv_len=int(k.shape[2]), head_dim=int(d), masked=True, causal=False,
                                       dropout=float(dropout_p), grad=bool(q.requires_grad)))
        return original_sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                             scale=scale, enable_gqa=enable_gqa)

    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta")
    kwargs: dict[str, Any] = {"input_ids": ids}
    F.scaled_dot_product_attention = sdpa  # type: ignore[assignment]
    if autocast:
        F.linear = _autocast_linear(low)
    # Operators in a block that gets no backward (frozen lower blocks) run forward only:
    # a third of the forward + backward (~2x forward) the per-operator cost is fitted for.
    backward = [1.0]

    def block_in(mod: Any, args: Any, kwargs: Any = None) -> None:
        x = args[0] if args else (kwargs or {}).get("hidden_states")
        grad = bool(getattr(x, "requires_grad", False)) or any(p.requires_grad for p in mod.parameters())
        backward[0] = 1.0 if grad else 1.0 / 3.0

    def block_out(*_a: Any) -> None:
        backward[0] = 1.0

    for b in _layer_blocks(model, n_layers):
        hooks.append(b.register_forward_pre_hook(block_in, with_kwargs=True))
        hooks.append(b.register_forward_hook(block_out))
    counter = _operator_counter(backward)
    try:
        with counter:
            model(**kwargs)
    finally:
        F.scaled_dot_product_attention = original_sdpa
        F.linear = original_linear
        for h in hooks:
            h.remove()
    loss: list[LossCall] = []
    vocab = int(getattr(config.get_text_config(), "vocab_size", 0) or 0)
    logits_dtype = str(low).replace("torch.", "") if autocast else "float32"
    if task == "causal-lm" and vocab:
        loss.append(LossCall(rows=batch * (seq - 1), vocab=vocab, logits_dtype=logits_dtype))
    elif task == "masked-lm" and vocab:
        loss.append(LossCall(rows=max(1, round(setup.mlm_probability * batch * seq)), vocab=vocab,
                             logits_dtype=logits_dtype))
    # (A classifier's loss over batch x labels is negligible.)
    trainable = tuple(tuple(int(d) for d in p.shape) for p in model.parameters() if p.requires_grad)
    optimizer = OptimizerCall(trainable) if setup.optimizer == "adamw" and trainable else None
    return StepShapes(_count(linears), _count(attention), _count(loss), optimizer, int(counter.allocated),
                      round(counter.ops, 2))


def _operator_counter(weight: list[float]) -> Any:
    """A dispatch mode that counts the forward's operators and the bytes of the new tensors
    they create (views count nothing; in-place ops allocate nothing). Each is multiplied by
    ``weight[0]`` (1, or 1/3 for forward-only work)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Counter(TorchDispatchMode):
        allocated = 0.0
        ops = 0.0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            if getattr(func, "is_view", False):
                return out
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            type(self).ops += weight[0]
            if not func._schema.name.endswith("_"):  # in-place ops write into existing memory
                type(self).allocated += weight[0] * sum(t.numel() * t.element_size() for t in outs)
            return out

    return Counter()


_SDPA_SIZE = re.compile(r"^(sdpa\|[^|]*\|)b(\d+)(h\d+kv\d+\|)(\d+)x(\d+)(\|.*)$")


def _lookup(key: str, tokens: int, table: dict[str, list[float]]) -> list[float] | None:
    """A measured entry, or the same call measured at another size, scaled.

    The search costs micro-batch sizes (and padded batch widths) that were not timed:
    matmul time grows about linearly with the rows once they fill the cores, attention
    linearly with the sequences and quadratically with the length, so the nearest measured
    size is scaled.
    """
    if key in table:
        return table[key]
    if key.startswith("sdpa|"):
        return _lookup_attention(key, table)
    head, _, rest = key.partition("|t")
    _size, _, tail = rest.partition("|")
    best: tuple[float, list[float]] | None = None
    for k, v in table.items():
        h2, _, r2 = k.partition("|t")
        s2, _, t2 = r2.partition("|")
        if h2 == head and t2 == tail and s2.isdigit():
            ratio = tokens / int(s2)
            if best is None or abs(ratio - 1) < abs(best[0] - 1):
                best = (ratio, v)
    if best is None:
        return None
    return [best[1][0] * best[0], best[1][1] * best[0]]


def _lookup_attention(key: str, table: dict[str, list[float]]) -> list[float] | None:
    m = _SDPA_SIZE.match(key)
    if m is None:
        return None
    pre, b, mid, q, kv, post = m.groups()
    best: tuple[float, float, list[float]] | None = None  # (distance, scale, times)
    for k, v in table.items():
        m2 = _SDPA_SIZE.match(k)
        if m2 is None or (m2.group(1), m2.group(3), m2.group(6)) != (pre, mid, post):
            continue
        b2, q2, kv2 = int(m2.group(2)), int(m2.group(4)), int(m2.group(5))
        scale = (int(b) / b2) * (int(q) / q2) * (int(kv) / kv2)
        dist = abs(math.log(int(b) / b2)) + abs(math.log(int(q) / q2)) + abs(math.log(int(kv) / kv2))
        if best is None or dist < best[0]:
            best = (dist, scale, v)
    if best is None:
        return None
    return [best[2][0] * best[1], best[2][1] * best[1]]


def shape_seconds(shapes: StepShapes, compute: str, table: dict[str, list[float]], *,
                  checkpointing: bool = False) -> float | None:
    """One micro-batch's matmul + attention + loss seconds from the measured table (None if a
    shape is missing).

    Forward + backward of every call; activation checkpointing runs the blocks' forward once
    more in backward.
    """
    total = 0.0
    for call, n in shapes.calls():
        size = call.batch if isinstance(call, AttentionCall) else call.tokens
        got = _lookup(call.key(compute), size, table)
        if got is None:
            return None
        fwd, both = got
        in_block = isinstance(call, AttentionCall) or (isinstance(call, LinearCall) and call.in_block)
        recompute = fwd if checkpointing and in_block else 0.0
        total += n * (both + recompute)
    return total


def forward_seconds(shapes: StepShapes, compute: str, table: dict[str, list[float]]) -> float | None:
    """One micro-batch's forward-only seconds of the timed calls (an evaluation pass; the
    loss entry is forward + backward, a third of it counted)."""
    total = 0.0
    for call, n in shapes.calls():
        size = call.batch if isinstance(call, AttentionCall) else call.tokens
        got = _lookup(call.key(compute), size, table)
        if got is None:
            return None
        total += n * (got[0] / 3 if isinstance(call, LossCall) else got[0])
    return total


def optimizer_seconds(shapes: StepShapes, table: dict[str, list[float]]) -> float | None:
    """The optimizer step's measured seconds (clipping + AdamW), None when not timed."""
    if shapes.optimizer is None:
        return None
    got = table.get(shapes.optimizer.key(""))
    return None if got is None else got[1]


def with_batch(shapes: StepShapes, micro_batch_size: int, measured_batch: int) -> StepShapes:
    """``shapes`` recorded at ``measured_batch`` sequences, rescaled to ``micro_batch_size``."""
    if micro_batch_size == measured_batch:
        return shapes
    f = micro_batch_size / measured_batch
    lin = tuple((replace(c, tokens=max(1, round(c.tokens * f))), n) for c, n in shapes.linears)
    att = tuple((c, n * f) if c.packed_docs else (replace(c, batch=micro_batch_size), n) for c, n in shapes.attention)
    loss = tuple((replace(c, rows=max(1, round(c.rows * f))), n) for c, n in shapes.loss)
    return StepShapes(lin, att, loss, shapes.optimizer, round(shapes.allocated_bytes * f), shapes.ops)


_CACHE: dict[tuple[Any, ...], StepShapes] = {}


def step_shapes_cached(config: PretrainedConfig, setup: TrainingSetup) -> StepShapes:
    """:func:`step_shapes` of ``setup`` from one meta forward at micro-batch 1 per model and
    method (cached in-process), scaled to ``setup.micro_batch_size``: every call's rows grow
    linearly with the batch, so the search's candidates need no forward each."""
    from shoestring.plan.memory import _trainable_spec

    one = replace(setup, micro_batch_size=1)
    key = (json.dumps(config.to_dict(), sort_keys=True, default=str), setup.task, _trainable_spec(setup),
           setup.precision, setup.seq_len, setup.attn_implementation, setup.mlm_probability, setup.optimizer,
           setup.fast_paths, setup.doc_segments, setup.device_kind)
    if key not in _CACHE:
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = step_shapes(config, setup.task, one)
    return with_batch(_CACHE[key], setup.micro_batch_size, 1)
