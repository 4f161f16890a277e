"""What the planner knows about a model: its shape, parameter counts and saved activations.

Everything here comes from the real Hugging Face config through a *meta-device* build
(no weights allocated, nothing downloaded beyond the config), so it works for any
architecture transformers knows:

* parameter counts (total, embedding, per dtype) from ``model.parameters()``;
* trainable counts under LoRA from the real ``nn.Linear`` modules the targets match;
* activation bytes saved for backward, *traced* from a meta-device forward pass with
  ``torch.autograd.graph.saved_tensors_hooks`` at the real batch and sequence length, so
  attention implementation, GQA, MLP width, norms and the vocabulary logits are all the
  actual architecture's, not a formula's guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

__all__ = [
    "ActivationTrace",
    "ModelShape",
    "describe_model",
    "load_model_config",
    "lora_trainable_parameters",
    "trace_activations",
]

_AUTO = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "classification": "AutoModelForSequenceClassification",
    "embedding": "AutoModel",
}

# peft's defaults for "which Linear layers get LoRA" when the user names none, by family.
DEFAULT_LORA_TARGETS = ["q_proj", "v_proj", "query", "value", "q_lin", "v_lin", "c_attn", "query_key_value"]


@dataclass(frozen=True)
class ModelShape:
    """Architecture numbers the memory and FLOP models need (from the config + a meta build)."""

    model_type: str
    task: str
    n_params: int
    """All parameters (tied weights counted once)."""
    n_embedding_params: int
    """Input-embedding (and position-embedding) parameters: no matmul FLOPs per token."""
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    max_positions: int | None
    linear_shapes: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False, hash=False)
    """Module name -> (in_features, out_features) of every Linear in the model."""
    layer_param_counts: tuple[int, ...] = field(default=(), compare=False, hash=False)
    """Parameters of each transformer block, bottom to top (for frozen-layer plans)."""
    input_embedding_params: int = 0
    """The word-embedding matrix alone (frozen under method=frozen; tied heads share it)."""

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V elements per token over all layers (multiply by bytes per element)."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim

    @property
    def non_embedding_params(self) -> int:
        return self.n_params - self.n_embedding_params


def load_model_config(spec: str) -> PretrainedConfig:
    """A config from a model spec, or from a bare ``config.json`` file path."""
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix == ".json":
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(str(p))
        except (OSError, ValueError, KeyError) as err:
            raise ShoestringError(f"{p}: not a Hugging Face config ({str(err).splitlines()[0]}); pass a config.json") from None
    from shoestring.models.loading import load_config

    return load_config(spec)


def _first(cfg: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


@contextmanager
def _quiet_meta() -> Iterator[None]:
    import torch

    with torch.device("meta"):
        yield


def meta_model(config: PretrainedConfig, task: str, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """Build the model on the meta device: shapes and modules, no memory."""
    import transformers

    if task not in _AUTO:
        raise ShoestringError(f"unknown task '{task}'; choose one of {', '.join(_AUTO)}")
    loader = getattr(transformers, _AUTO[task])
    try:
        with _quiet_meta():
            return loader.from_config(config, attn_implementation=attn_implementation)  # type: ignore[no-any-return]
    except ValueError as err:
        if "attn_implementation" in str(err) or "does not support" in str(err):
            with _quiet_meta():
                return loader.from_config(config, attn_implementation="eager")  # type: ignore[no-any-return]
        raise ShoestringError(f"cannot build a {task} model from this config: {str(err).splitlines()[0]}") from None


def describe_model(config: PretrainedConfig, task: str) -> ModelShape:
    """Parameter counts and shape numbers of ``config`` built for ``task`` (meta device)."""
    import torch

    model = meta_model(config, task)
    seen: set[int] = set()
    n_params = 0
    for p in model.parameters():  # parameters() already yields tied weights once
        if id(p) not in seen:
            seen.add(id(p))
            n_params += p.numel()
    emb = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Embedding):
            emb += mod.weight.numel()
    linears = {name: (m.in_features, m.out_features) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(_first(text_cfg, "hidden_size", "d_model", "n_embd", "dim", default=0))
    heads = int(_first(text_cfg, "num_attention_heads", "n_head", "n_heads", default=1))
    kv = int(_first(text_cfg, "num_key_value_heads", "n_kv_heads", "num_kv_heads", default=heads) or heads)
    if getattr(text_cfg, "multi_query", False):
        kv = 1
    head_dim = int(_first(text_cfg, "head_dim", default=0) or (hidden // max(heads, 1)))
    n_layers = int(_first(text_cfg, "num_hidden_layers", "n_layer", "n_layers", "num_layers", default=0))
    inter = int(_first(text_cfg, "intermediate_size", "n_inner", "ffn_dim", "hidden_dim", default=0) or 4 * hidden)
    blocks = _layer_blocks(model, n_layers)
    return ModelShape(
        model_type=str(getattr(config, "model_type", "?")),
        task=task,
        n_params=n_params,
        n_embedding_params=emb,
        n_layers=n_layers,
        hidden_size=hidden,
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=int(_first(text_cfg, "vocab_size", default=0)),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        max_positions=_first(text_cfg, "max_position_embeddings", "n_positions", "max_seq_len"),
        linear_shapes=linears,
        layer_param_counts=tuple(sum(p.numel() for p in b.parameters()) for b in blocks),
        input_embedding_params=_input_embedding_params(model),
    )


def _input_embedding_params(model: torch.nn.Module) -> int:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return int(emb.weight.numel()) if emb is not None and hasattr(emb, "weight") else 0


def _layer_blocks(model: torch.nn.Module, n_layers: int) -> list[torch.nn.Module]:
    """The repeated transformer blocks (the longest ModuleList of length ``n_layers``)."""
    import torch

    for mod in model.modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n_layers and n_layers > 0:
            return list(mod)
    return []


def match_lora_targets(shape: ModelShape, targets: list[str]) -> list[str]:
    """Linear module names a LoRA target list selects, with peft's matching rules.

    ``all-linear`` means every Linear except the output head; otherwise a name matches
    when it equals a target or ends with ``.<target>``; a target may also be a regex
    that must match the full module name.
    """
    names = list(shape.linear_shapes)
    head = {n for n in names if n.split(".")[-1] in ("lm_head", "classifier", "score", "cls", "decoder", "out_proj")}
    if targets in (["all-linear"], ["all_linear"]):
        return [n for n in names if n not in head and not n.startswith(("lm_head", "classifier", "score", "cls."))]
    chosen = []
    for n in names:
        for t in targets:
            if n == t or n.endswith("." + t) or (any(c in t for c in "*[]()|^$") and re.fullmatch(t, n)):
                chosen.append(n)
                break
    return chosen


def lora_trainable_parameters(shape: ModelShape, targets: list[str], rank: int) -> tuple[int, list[str]]:
    """LoRA parameters ``rank·(in + out)`` summed over the Linear layers ``targets`` match."""
    chosen = match_lora_targets(shape, targets)
    if not chosen:
        some = ", ".join(sorted({n.split(".")[-1] for n in shape.linear_shapes})[:12])
        raise ShoestringError(
            f"LoRA targets {targets} match no Linear layer of this {shape.model_type} model; "
            f"pass --lora-targets with some of: {some} (or all-linear)"
        )
    total = sum(rank * (shape.linear_shapes[n][0] + shape.linear_shapes[n][1]) for n in chosen)
    return total, chosen


@dataclass(frozen=True)
class ActivationTrace:
    """Bytes autograd saves for backward during one forward pass (traced on meta)."""

    saved_bytes: int
    """All saved tensors that are not parameters, deduplicated by storage."""
    per_layer_bytes: int
    """Saved bytes of the largest transformer block."""
    layer_input_bytes: int
    """One block's input hidden states (what checkpointing keeps per block)."""
    head_bytes: int
    """Bytes saved outside the blocks (embeddings, final norm, head, loss)."""
    logits_bytes: int
    """One copy of the output logits (batch·seq·vocab for LMs) at the compute dtype."""


def _sdpa_stand_in(device_kind: str, padded: bool, cast: Any = None, packed_docs: int = 0) -> Any:
    """An SDPA stand-in for meta tracing that saves what the real device's kernel saves.

    On meta, ``scaled_dot_product_attention`` always takes the math path. The real kernels
    differ: the fused ones (CPU flash, CUDA flash / memory-efficient) keep only q, k, v, the
    output and a per-row log-sum-exp. But torch's CPU flash kernel does not support
    dropout, so a model with attention dropout in training mode (BERT-family
    ``attention_probs_dropout_prob=0.1``, GPT-2 ``attn_pdrop``) runs the *math* kernel on
    CPU, which saves the scaled q and k, the softmax probabilities, the dropout noise and
    the dropped probabilities: three (batch, heads, seq, seq) tensors per layer
    (measured against a real CPU forward in tests/plan/test_arch.py; it was the cause of
    the -24%/-42% BERT-classifier misses in RESULTS.md). CUDA's fused kernels support
    dropout (they keep only the RNG state), so there the fused trace is used.

    ``packed_docs`` (the K/V head count) mirrors the trainer's per-document attention
    (:func:`shoestring.train.fastpath.packed_attention_forward`): K/V at their own head count
    (GQA, never repeated), no mask, and on CPU under autocast fp32 copies of q, k, v (the
    blocks run in fp32), each document's output and log-sum-exp saved.
    """
    import math

    import torch

    class FusedAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> torch.Tensor:
            b, h, s, _ = q.shape
            out = torch.empty(b, s, h, v.shape[-1], dtype=q.dtype, device=q.device).transpose(1, 2)
            lse = torch.empty(b, h, s, dtype=torch.float32, device=q.device)
            ctx.save_for_backward(*(t for t in (q, k, v, out, lse, mask) if t is not None))
            return out

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
            q, k, v = ctx.saved_tensors[:3]
            return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), None

    def padding_mask(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
        # A padded batch (classification, masked-LM) reaches SDPA with a (batch, 1, seq, seq)
        # mask; the fused CPU kernel saves its own additive copy at the compute dtype in
        # every layer (measured: one such tensor per layer, not one shared).
        if not padded:
            return None
        return torch.empty(q.shape[0], 1, q.shape[2], k.shape[2], dtype=q.dtype, device=q.device)

    def math_kernel(q: Any, k: Any, v: Any, dropout_p: float, scale: Any) -> Any:
        # The same autograd graph as aten's _scaled_dot_product_attention_math: sqrt(scale)
        # applied to q and k, matmul, softmax, dropout as a multiply by a noise tensor, matmul.
        # (A padding mask is added before the softmax; the add saves nothing.)
        root = math.sqrt(scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
        attn = torch.matmul(q * root, (k * root).transpose(-2, -1)).softmax(-1)
        if dropout_p > 0:
            attn = attn * torch.empty_like(attn)
        return torch.matmul(attn, v)

    def sdpa(q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
             scale: Any = None, enable_gqa: bool = False) -> Any:
        if packed_docs and dropout_p == 0:
            b, _, t, d = q.shape
            low = cast if cast is not None and device_kind != "cpu" else torch.float32
            q = q.to(low)
            if k.shape[1] != packed_docs:  # transformers repeated K/V for its masked kernel; the fast path does not
                k = torch.empty(b, packed_docs, t, d, dtype=low, device=q.device)
                v = torch.empty(b, packed_docs, t, v.shape[-1], dtype=low, device=q.device)
            return FusedAttention.apply(q, k.to(low), v.to(low), None)
        if cast is not None:  # autocast runs SDPA in the low precision
            q, k, v = q.to(cast), k.to(cast), v.to(cast)
        if enable_gqa and k.shape[1] != q.shape[1]:
            rep = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if device_kind == "cpu" and dropout_p > 0:
            return math_kernel(q, k, v, dropout_p, scale)
        return FusedAttention.apply(q, k, v, padding_mask(q, k))

    return sdpa


def _autocast_linear(dtype: Any) -> Any:
    """``F.linear`` as autocast runs it: input, weight and bias cast to ``dtype`` first.

    The casts are new tensors, so the trace sees what autocast really keeps for backward:
    the low-precision copies of the input and of the weight (one per call for frozen
    weights, which autocast does not cache), while norms, residual adds and the loss stay
    in the weights' fp32.
    """
    import torch.nn.functional as F

    original = F.linear

    def linear(x: Any, w: Any, b: Any = None) -> Any:
        return original(x.to(dtype), w.to(dtype), None if b is None else b.to(dtype))

    return linear


def _trace(config: PretrainedConfig, task: str, batch: int, seq_len: int, trainable: str, dtype_name: str,
           attn: str, device_kind: str, autocast: bool = False, fast: str = "") -> ActivationTrace:
    import copy

    import torch
    import torch.nn.functional as F

    config = copy.deepcopy(config)
    if task == "classification" and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0
    model = meta_model(config, task, attn)
    dtype = getattr(torch, dtype_name)
    if not autocast:  # pure low precision (or fp32): the weights themselves are in dtype
        model.to(dtype)
    _set_trainable(model, trainable)
    _apply_meta_fast_paths(model, fast.split(","), dtype)
    n_layers = int(getattr(config.get_text_config(), "num_hidden_layers", 0) or 0)
    blocks = _layer_blocks(model, n_layers)
    per_block: dict[int, dict[int, int]] = {i: {} for i in range(len(blocks))}
    current: list[int] = [-1]
    seen: dict[int, int] = {}
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    layer_in: list[int] = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        key = st._cdata
        if key in params:
            return t
        seen[key] = st.nbytes()
        if current[0] >= 0:
            per_block[current[0]][key] = st.nbytes()
        return t

    hooks = []
    for i, b in enumerate(blocks):
        def pre(_m: Any, args: Any, kwargs: Any = None, i: int = i) -> None:
            current[0] = i
            x = args[0] if args else (kwargs or {}).get("hidden_states")
            if x is not None:
                layer_in[0] = x.numel() * x.element_size()

        def post(_m: Any, _a: Any, _o: Any) -> None:
            current[0] = -1

        hooks.append(b.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(b.register_forward_hook(post))
    vocab = int(getattr(config.get_text_config(), "vocab_size", 0) or 0)
    ids = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
    kwargs: dict[str, Any] = {"input_ids": ids}
    if task in ("causal-lm", "masked-lm"):
        kwargs["labels"] = ids
    elif task == "classification":
        kwargs["labels"] = torch.zeros(batch, dtype=torch.long, device="meta")
    original = F.scaled_dot_product_attention
    original_linear = F.linear
    text = config.get_text_config()
    kv_heads = int(getattr(text, "num_key_value_heads", None) or getattr(text, "num_attention_heads", 0) or 0)
    F.scaled_dot_product_attention = _sdpa_stand_in(device_kind, task in ("classification", "masked-lm"),
                                                    dtype if autocast else None,
                                                    kv_heads if "docs" in fast.split(",") else 0)
    if autocast:
        F.linear = _autocast_linear(dtype)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(**kwargs)
    except RuntimeError as err:
        raise ShoestringError(f"cannot trace a forward pass of this {config.model_type} model on the meta device: "
                              f"{str(err).splitlines()[0]}") from None
    finally:
        F.scaled_dot_product_attention = original
        F.linear = original_linear
        for h in hooks:
            h.remove()
    del out
    block_bytes = [sum(d.values()) for d in per_block.values()] or [0]
    in_blocks = set().union(*[set(d) for d in per_block.values()]) if per_block else set()
    head = sum(v for k, v in seen.items() if k not in in_blocks)
    logits = batch * seq_len * vocab * dtype.itemsize if task in ("causal-lm", "masked-lm") else 0
    return ActivationTrace(
        saved_bytes=sum(seen.values()),
        per_layer_bytes=max(block_bytes),
        layer_input_bytes=layer_in[0],
        head_bytes=head,
        logits_bytes=logits,
    )


def _apply_meta_fast_paths(model: torch.nn.Module, kinds: list[str], dtype: Any) -> None:
    """The trainer's fast paths that change saved tensors, on the meta model.

    ``dropout``: LoRA's dropout keeps a boolean mask (``FastDropout``) where CPU ``nn.Dropout``
    keeps a noise tensor at the input's precision; ``hoist``: frozen base weights of adapted
    Linears stored in ``dtype``, so autocast's cast returns the parameter (nothing saved).
    """
    import torch

    class MetaFastDropout(torch.nn.Module):  # saves what FastDropout saves: x * keep (bool)
        def __init__(self, p: float) -> None:
            super().__init__()
            self.p = p

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            keep = torch.empty(x.shape, dtype=torch.bool, device=x.device)
            return x.mul(keep).mul_(1.0 / (1.0 - self.p))

    for mod in model.modules():
        if not (hasattr(mod, "lora_A") and hasattr(mod, "base_layer")):
            continue
        drops = getattr(mod, "lora_dropout", None)
        if "dropout" in kinds and isinstance(drops, torch.nn.ModuleDict):
            for name, d in list(drops.items()):
                if type(d) is torch.nn.Dropout and d.p > 0:
                    drops[name] = MetaFastDropout(d.p)
        base = mod.base_layer
        if "hoist" in kinds and isinstance(base, torch.nn.Linear) and not base.weight.requires_grad:
            base.weight = torch.nn.Parameter(base.weight.detach().to(dtype), requires_grad=False)


def _set_trainable(model: torch.nn.Module, trainable: str) -> None:
    """``all`` / ``none`` / ``lora:<rank>:<dropout>:<t1,t2>`` / ``frozen:<n_top_layers_trainable>``."""
    if trainable == "all":
        return
    for p in model.parameters():
        p.requires_grad_(False)
    if trainable.startswith("lora:"):
        _, rank_s, dropout_s, targets_s = trainable.split(":", 3)
        _add_meta_lora(model, int(rank_s), float(dropout_s), targets_s.split(","))
    elif trainable.startswith("frozen:"):
        # Same rule as the trainer: the top N blocks and everything after the block stack
        # (final norm, pooler, head) train; the word embeddings and lower blocks do not.
        n = int(trainable.split(":")[1])
        n_layers = int(getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0)
        blocks = _layer_blocks(model, n_layers)
        for b in blocks[len(blocks) - n:] if n else []:
            for p in b.parameters():
                p.requires_grad_(True)
        in_blocks = {id(p) for b in blocks for p in b.parameters()}
        get = getattr(model, "get_input_embeddings", None)
        emb = get() if callable(get) else None
        emb_ids = {id(p) for p in emb.parameters()} if emb is not None else set()
        for p in model.parameters():
            if id(p) not in in_blocks and id(p) not in emb_ids:
                p.requires_grad_(True)


def _add_meta_lora(model: torch.nn.Module, rank: int, dropout: float, targets: list[str]) -> None:
    """Wrap matching Linear layers with peft's LoRA on meta (same saved tensors as training)."""
    import logging

    # bitsandbytes (imported by peft) warns about optional CPU kernels on import: noise here.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from peft import LoraConfig, inject_adapter_in_model

    target: Any = "all-linear" if targets in (["all-linear"], ["all_linear"]) else targets
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=target, lora_dropout=dropout)
    inject_adapter_in_model(cfg, model)


def trace_activations(config: PretrainedConfig, task: str, batch: int, seq_len: int, *, trainable: str = "all",
                      dtype: str = "float32", attn_implementation: str = "sdpa",
                      device_kind: str = "cpu", autocast: bool = False, fast: str = "") -> ActivationTrace:
    """Saved-for-backward bytes of one forward at ``batch × seq_len`` (meta device, cached).

    ``device_kind`` (``cpu`` / ``cuda``) picks which SDPA kernel the trace mirrors;
    ``autocast`` keeps the weights fp32 and runs matmuls and attention in ``dtype``, as
    mixed precision does (otherwise the whole model is in ``dtype``). ``fast`` names the
    trainer's fast paths in force (``docs``, ``dropout``, ``hoist``; see
    :func:`shoestring.plan.memory._fast_kinds`).
    """
    import json

    kernel = "cpu" if device_kind == "cpu" else "fused"
    key = (json.dumps(config.to_dict(), sort_keys=True, default=str), task, batch, seq_len, trainable, dtype,
           attn_implementation, kernel, autocast, fast)
    if key not in _TRACES:
        if len(_TRACES) > 256:
            _TRACES.clear()
        _TRACES[key] = _trace(config, task, batch, seq_len, trainable, dtype, attn_implementation, kernel,
                              autocast, fast)
    return _TRACES[key]


_TRACES: dict[tuple[str, ...] | tuple[Any, ...], ActivationTrace] = {}
