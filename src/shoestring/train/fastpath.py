"""Three CPU-measured speed-ups for adapter training that leave the maths unchanged.

Each one replaces a piece of work whose result is the same (or drawn from the same
distribution) with a cheaper way of getting it. Measured on the benchmark machine
(SmolLM2-135M, LoRA r=16 on all linear layers, 4 x 150 tokens; benchmarks/RESULTS.md):

* **LoRA dropout masks** (:func:`fast_lora_dropout`). peft applies ``nn.Dropout`` to the
  input of every adapted Linear: 210 Bernoulli masks per step, drawn one element at a time
  from torch's single-threaded Mersenne Twister (14% of the step). :class:`FastDropout`
  keeps each element with the same probability, ``1 - p`` (to within 2**-16), but takes 16
  bits per element from a PCG64 stream (numpy), seeded per call from torch's global
  generator, so a checkpoint's saved RNG state still reproduces every mask: 5x faster.
* **Weight casts under autocast** (:func:`hoist_frozen_casts`). Under bf16/fp16 autocast
  every frozen fp32 Linear weight is cast again on every forward (autocast caches casts only
  for weights that require grad). Casting the frozen base weights of a LoRA model once gives
  bit-identical matmul inputs and removes the per-step copies.
* **Packed attention** (:func:`use_packed_attention`). transformers turns packed rows (position
  ids restarting at 0) into a block-diagonal 4-D mask, so SDPA computes every row's full
  T x T scores and discards most of them, and a masked SDPA cannot skip the causal upper
  triangle. ``packed_attention_forward`` runs causal SDPA on each document of each row
  instead: the same outputs, with work proportional to the sum of squared document lengths.
  This is what makes long packed rows (several chats per row, no padding) pay off on CPU.
  Under CPU autocast the per-document blocks run in fp32 (faster there than bf16, see below).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "PACKED_ATTENTION",
    "FastDropout",
    "fast_lora_dropout",
    "hoist_frozen_casts",
    "packed_attention_forward",
    "restore_attention",
    "use_packed_attention",
]

PACKED_ATTENTION = "shoestring_packed"
"""Name under which the per-document attention is registered with transformers."""


class FastDropout(torch.nn.Module):
    """Inverted dropout: keep each element with probability ``1 - p``, scale kept ones by ``1/(1-p)``.

    The keep decision compares 16 random bits per element with ``round(p * 65536)``, so
    the drop probability is ``p`` to within 2**-17. The bits come from numpy's PCG64
    (vectorised) seeded by one draw from torch's global generator, so runs are
    reproducible from ``torch.manual_seed`` and from a checkpoint's saved RNG state.
    The mask is saved for backward as booleans (1 byte per element, like ``nn.Dropout``).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        # Signed 16-bit draws are uniform on [-32768, 32767]: drop when below this.
        self._threshold = round(self.p * 65536) - 32768

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        n = x.numel()
        seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())
        raw = np.random.PCG64(seed).random_raw((n + 3) // 4)  # 64 random bits -> 4 x 16
        bits = torch.from_numpy(raw.view(np.int16)[:n]).view(x.shape)
        keep = (bits >= self._threshold).to(x.device, non_blocking=True)
        return x.mul(keep).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def fast_lora_dropout(model: torch.nn.Module) -> int:
    """Replace peft's ``nn.Dropout`` on LoRA inputs with :class:`FastDropout`; returns how many.

    Only CPU tensors benefit (CUDA's dropout kernel is already fast); call it for CPU runs.
    """
    replaced = 0
    for mod in model.modules():
        drops = getattr(mod, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, d in list(drops.items()):
            if type(d) is torch.nn.Dropout and d.p > 0:
                drops[name] = FastDropout(d.p)
                replaced += 1
    return replaced


def hoist_frozen_casts(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen weights of a LoRA model's adapted Linears in ``dtype``; returns bytes saved.

    Only for adapter training under autocast to ``dtype``: autocast would cast these
    weights to ``dtype`` before every matmul, so the matmuls see the same values. The
    output head is left alone (it may be tied to the input embedding, which autocast
    does not cast). Never use it when the full model is saved afterwards.
    """
    saved = 0
    for mod in model.modules():
        base = getattr(mod, "base_layer", None)
        if not isinstance(base, torch.nn.Linear) or not hasattr(mod, "lora_A"):
            continue
        w = base.weight
        if w.requires_grad or w.dtype == dtype or not w.is_floating_point():
            continue
        saved += w.numel() * (w.element_size() - torch.finfo(dtype).bits // 8)
        base.weight = torch.nn.Parameter(w.detach().to(dtype), requires_grad=False)
        if base.bias is not None and not base.bias.requires_grad:
            base.bias = torch.nn.Parameter(base.bias.detach().to(dtype), requires_grad=False)
    if saved:
        _release_shared_storage(model)
    return saved


def _release_shared_storage(model: torch.nn.Module) -> None:
    """Give every CPU parameter and buffer its own memory (a copy).

    transformers maps a safetensors checkpoint into memory as one file mapping that every
    loaded weight lives in: while any weight of it lives, the mapping stays, and the file
    pages of the fp32 weights just replaced stay resident (measured on SmolLM2-135M: RSS
    +590 MB after the cast instead of -190 MB). Once nothing lives in the mapping it is
    unmapped and those pages go. (Tied weights are one parameter: copied once, still tied.)
    """
    done: set[int] = set()
    for mod in model.modules():
        for table in (mod._parameters, mod._buffers):
            for t in table.values():
                if t is not None and t.device.type == "cpu" and id(t) not in done:
                    done.add(id(t))
                    t.data = t.data.clone()


# -- packed attention ---------------------------------------------------------------------

_SEG_CACHE: dict[str, Any] = {}


def _segments(position_ids: torch.Tensor, batch: int, length: int) -> list[list[tuple[int, int]]]:
    """Per row, the (start, end) of each document: a new one starts wherever the position is 0."""
    key = (position_ids.data_ptr(), tuple(position_ids.shape), position_ids._version)
    if _SEG_CACHE.get("key") == key:  # every layer of one forward passes the same tensor
        return _SEG_CACHE["segs"]  # type: ignore[no-any-return]
    pos = position_ids.expand(batch, length).cpu()
    segs: list[list[tuple[int, int]]] = []
    for row in pos:
        starts = (row == 0).nonzero().flatten().tolist()
        if not starts or starts[0] != 0:
            starts = [0, *starts]
        segs.append(list(zip(starts, [*starts[1:], length], strict=True)))
    _SEG_CACHE.update(key=key, segs=segs, ref=position_ids)  # keep the tensor alive: its address is the key
    return segs


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: causal SDPA per packed document (q, k, v: (B, H, T, D)).

    Falls back to transformers' SDPA path for anything that is not a packed training
    forward (no position ids, a KV cache, attention dropout, non-causal modules).
    """
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    pos = kwargs.get("position_ids")
    b, _, t, _ = query.shape
    if (
        pos is None
        or dropout > 0.0
        or key.shape[2] != t
        or pos.shape[-1] != t
        or not getattr(module, "is_causal", True)
        or kwargs.get("past_key_values") is not None
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)  # fmt: skip
    gqa = query.shape[1] != key.shape[1]
    dtype = query.dtype
    low = dtype in (torch.bfloat16, torch.float16)
    if query.device.type == "cpu" and (low or torch.is_autocast_enabled("cpu")):
        # Per-document blocks are short; on CPU, SDPA's fp32 kernel runs them 1.8x faster than
        # bf16 (fwd+bwd, 160 tokens, 9 heads), and fp32 scores are the more accurate. Under
        # autocast the query often arrives in fp32 already (Llama's rotary embedding promotes
        # it), and autocast would cast every block back to bf16: switch it off here.
        out_dtype = dtype if low else torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            out, _ = packed_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              dropout=dropout, scaling=scaling, **kwargs)  # fmt: skip
        return out.to(out_dtype), None
    rows = []
    for i, row in enumerate(_segments(pos, b, t)):
        q, k, v = query[i : i + 1], key[i : i + 1], value[i : i + 1]
        parts = [
            F.scaled_dot_product_attention(
                q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True, scale=scaling, enable_gqa=gqa
            )
            for s, e in row
        ]
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))
    out = rows[0] if b == 1 else torch.cat(rows, dim=0)  # (B, H, T, D)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
    # The mask transformers builds is only used on the fallback path.
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)


def use_packed_attention(model: torch.nn.Module) -> str | None:
    """Switch a decoder that uses SDPA to per-document attention; returns the previous implementation.

    Returns None (and changes nothing) for models that do not run transformers' SDPA path.
    """
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(core, "config", None)
    prev = getattr(cfg, "_attn_implementation", None)
    if prev != "sdpa" or getattr(cfg, "is_encoder_decoder", False):
        return None
    _register()
    core.set_attn_implementation(PACKED_ATTENTION)
    return str(prev)


def restore_attention(model: torch.nn.Module, implementation: str | None) -> None:
    """Undo :func:`use_packed_attention` (before saving, so configs name a standard kernel)."""
    if implementation is None:
        return
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    core.set_attn_implementation(implementation)
