"""Structured pruning that really shrinks tensors: fewer layers, fewer heads, narrower MLPs.

Every cut changes ``config.json`` (``num_hidden_layers``, ``num_attention_heads``,
``intermediate_size``) and the saved tensors, so the pruned model is smaller on disk and
in memory and loads with a plain ``from_pretrained``.

What to cut is decided on calibration text, not by weight magnitude alone:

* MLP channel j: mean |input to the down projection|_j x ||down[:, j]|| (how much the
  channel actually contributes to the residual stream);
* attention head h: mean |input to the output projection| over h's slice x ||o_proj[:, h]||;
  with grouped-query attention the same number of query heads is kept in every KV group;
* layer i: the cosine similarity of its input and output hidden states; the layers that
  change the residual stream least are dropped (as in Gromov et al., 2024).

Supported layouts: Llama-style decoders (``model.layers[i].self_attn`` / ``.mlp``:
Llama, Mistral, Qwen2, SmolLM) for all three cuts; BERT-style encoders
(``encoder.layer[i]``) for layers and MLP width (BERT derives the head size from the
hidden size, so its heads cannot be cut without a custom config).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["drop_layers", "keep_layers", "layer_list", "prune_heads", "prune_mlp"]


def layer_list(model: Any) -> tuple[Any, str]:
    """The model's list of transformer blocks and its layout name (``llama`` or ``bert``)."""
    for path, layout in (
        ("model.layers", "llama"),
        ("layers", "llama"),
        ("bert.encoder.layer", "bert"),
        ("encoder.layer", "bert"),
    ):
        try:
            mods = model.get_submodule(path)
        except AttributeError:
            continue
        return mods, layout  # type: ignore[return-value]
    raise ShoestringError(
        f"structured pruning supports Llama-style decoders and BERT-style encoders, not {type(model).__name__}"
    )


def _config(model: nn.Module) -> Any:
    return model.config  # type: ignore[union-attr]


def keep_layers(model: nn.Module, keep: list[int]) -> None:
    """Keep only the blocks with these indices (in order); updates the config."""
    from torch import nn

    layers, layout = layer_list(model)
    n = len(layers)
    keep = sorted(set(keep))
    if not keep or keep[0] < 0 or keep[-1] >= n:
        raise ShoestringError(f"layers to keep must be within 0..{n - 1} and not empty, got {keep}")
    new = nn.ModuleList([layers[i] for i in keep])
    parent_path = "model" if layout == "llama" and hasattr(model, "model") else ""
    if layout == "llama":
        owner = model.get_submodule(parent_path) if parent_path else model
        owner.layers = new
        for i, block in enumerate(new):
            attn = getattr(block, "self_attn", None)
            if attn is not None and hasattr(attn, "layer_idx"):
                attn.layer_idx = i  # the KV cache is indexed by position in the list
    else:
        enc = model.get_submodule("bert.encoder" if hasattr(model, "bert") else "encoder")
        enc.layer = new
    cfg = _config(model)
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]


def _calibrate(model: Any, blocks: torch.Tensor, hooks: list[tuple[Any, Callable[..., None]]]) -> None:
    import torch

    handles = [m.register_forward_pre_hook(fn) for m, fn in hooks]
    try:
        with torch.inference_mode():
            for i in range(blocks.shape[0]):
                model(input_ids=blocks[i : i + 1], attention_mask=torch.ones_like(blocks[i : i + 1]))
    finally:
        for h in handles:
            h.remove()


def drop_layers(model: nn.Module, n_drop: int, blocks: torch.Tensor) -> list[int]:
    """Drop the ``n_drop`` blocks whose output is most similar to their input; returns them."""
    import torch
    import torch.nn.functional as F

    layers, _ = layer_list(model)
    n = len(layers)
    if not 0 < n_drop < n:
        raise ShoestringError(f"drop_layers must be between 1 and {n - 1} for a {n}-layer model, got {n_drop}")
    sims = torch.zeros(n)
    with torch.inference_mode():
        for i in range(blocks.shape[0]):
            ids = blocks[i : i + 1]
            hs = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states
            for j in range(n):  # hs[j] is block j's input, hs[j + 1] its output
                sims[j] += F.cosine_similarity(hs[j].float(), hs[j + 1].float(), dim=-1).mean()
    # The last block feeds the output head directly; keep it (cutting it hurts most in practice).
    sims[n - 1] = -1.0
    dropped = sorted(torch.argsort(sims, descending=True)[:n_drop].tolist())
    keep_layers(model, [i for i in range(n) if i not in dropped])
    return dropped


def _mlp_parts(block: Any, layout: str) -> tuple[list[Any], Any]:
    """(linears whose *rows* are MLP channels, the linear whose *columns* are)."""
    if layout == "llama":
        mlp = block.mlp
        ins = [m for m in (getattr(mlp, "gate_proj", None), mlp.up_proj) if m is not None]
        return ins, mlp.down_proj
    return [block.intermediate.dense], block.output.dense


def _slice_rows(lin: nn.Linear, idx: torch.Tensor) -> None:
    from torch import nn

    lin.weight = nn.Parameter(lin.weight.data[idx].clone())
    if lin.bias is not None:
        lin.bias = nn.Parameter(lin.bias.data[idx].clone())
    lin.out_features = int(idx.numel())


def _slice_cols(lin: nn.Linear, idx: torch.Tensor) -> None:
    from torch import nn

    lin.weight = nn.Parameter(lin.weight.data[:, idx].clone())
    lin.in_features = int(idx.numel())


def prune_mlp(model: nn.Module, keep_ratio: float, blocks: torch.Tensor, multiple_of: int = 32) -> int:
    """Keep the most important ``keep_ratio`` of MLP channels in every block; returns the new width.

    The width is rounded up to ``multiple_of`` so int4 groups and SIMD lanes still fit.
    """
    import torch

    if not 0.0 < keep_ratio <= 1.0:
        raise ShoestringError(f"mlp_keep_ratio must be in (0, 1], got {keep_ratio}")
    layers, layout = layer_list(model)
    cfg = _config(model)
    width = int(cfg.intermediate_size)
    new_width = min(width, max(multiple_of, -(-round(width * keep_ratio) // multiple_of) * multiple_of))
    if new_width == width:
        return width
    acts = [torch.zeros(width) for _ in layers]

    def hook_for(i: int) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            acts[i] += args[0].detach().abs().float().reshape(-1, width).mean(0)

        return hook

    _calibrate(model, blocks, [(_mlp_parts(b, layout)[1], hook_for(i)) for i, b in enumerate(layers)])
    for i, block in enumerate(layers):
        ins, out = _mlp_parts(block, layout)
        score = acts[i] * out.weight.detach().float().norm(dim=0)  # (width,)
        idx = torch.sort(torch.topk(score, new_width).indices).values
        for lin in ins:
            _slice_rows(lin, idx)
        _slice_cols(out, idx)
    cfg.intermediate_size = new_width
    return new_width


def prune_heads(model: nn.Module, keep_ratio: float, blocks: torch.Tensor) -> int:
    """Keep the most important query heads (same count per KV group); returns heads kept.

    Only query heads are cut; K/V heads (the KV cache) stay, so grouped-query attention's
    group structure is preserved and ``head_dim`` is unchanged.
    """
    import torch

    if not 0.0 < keep_ratio <= 1.0:
        raise ShoestringError(f"head_keep_ratio must be in (0, 1], got {keep_ratio}")
    layers, layout = layer_list(model)
    if layout != "llama":
        raise ShoestringError("head pruning supports Llama-style decoders only; use mlp_keep_ratio or drop_layers")
    cfg = _config(model)
    n_heads, n_kv = (
        int(cfg.num_attention_heads),
        int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
    )
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
    per_group = n_heads // n_kv
    keep_per_group = max(1, round(per_group * keep_ratio))
    if keep_per_group == per_group:
        return n_heads
    acts = [torch.zeros(n_heads) for _ in layers]

    def hook_for(i: int) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            a = args[0].detach().abs().float().reshape(-1, n_heads, head_dim)  # (tokens, heads, head_dim)
            acts[i] += a.mean(dim=(0, 2))

        return hook

    _calibrate(model, blocks, [(b.self_attn.o_proj, hook_for(i)) for i, b in enumerate(layers)])
    for i, block in enumerate(layers):
        attn = block.self_attn
        wo = attn.o_proj.weight.detach().float().reshape(-1, n_heads, head_dim)
        score = (acts[i] * wo.norm(dim=(0, 2))).reshape(n_kv, per_group)  # (groups, heads per group)
        keep_heads = []
        for g in range(n_kv):
            best = torch.sort(torch.topk(score[g], keep_per_group).indices).values
            keep_heads.extend((g * per_group + best).tolist())  # query head h uses KV head h // per_group
        idx = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in keep_heads])
        _slice_rows(attn.q_proj, idx)
        _slice_cols(attn.o_proj, idx)
        attn.num_key_value_groups = keep_per_group
        if hasattr(attn, "num_heads"):
            attn.num_heads = len(keep_heads)
    cfg.num_attention_heads = n_kv * keep_per_group
    cfg.head_dim = head_dim  # keep it explicit: the default hidden_size // heads would now be wrong
    return int(cfg.num_attention_heads)
