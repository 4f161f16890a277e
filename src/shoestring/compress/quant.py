"""Quantise a model's linear layers in place (int8-dynamic, int8-weight, int4-weight), and back.

The layers and their file format live in :mod:`shoestring.models.quantized`; this module
chooses which layers to replace. Whether any method is *faster* than float32 depends on the
CPU and the batch shape; the regression report measures it instead of assuming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoestring.core.errors import ShoestringError
from shoestring.models.quantized import QUANT_METHODS, QuantSpec, quant_class, quantized_modules, replace_module

if TYPE_CHECKING:
    from torch import nn

__all__ = ["QUANT_METHODS", "QuantSpec", "dequantize_model", "quantize_model"]


def _default_targets(model: Any, quantize_head: bool) -> list[str]:
    """Every ``nn.Linear`` except the output head (tied to the embeddings in most LMs)."""
    from torch import nn

    head = None
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        head = get_out()
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and (quantize_head or m is not head)]


def quantize_model(model: nn.Module, method: str, *, group_size: int = 32, quantize_head: bool = False) -> QuantSpec:
    """Replace the model's linear layers in place; returns the spec to save with it.

    The output head is kept in float by default: it is usually tied to the input
    embeddings (quantising it would untie and duplicate it) and it is the layer whose
    error shows most directly in next-token distributions.
    """
    cls = quant_class(method)
    names = _default_targets(model, quantize_head)
    for name in names:
        lin: Any = model.get_submodule(name)
        if method == "int4-weight" and lin.in_features % group_size:
            continue  # odd shapes stay float rather than failing the whole model
        replace_module(model, name, cls.from_linear(lin, group_size))
    done = [n for n in names if type(model.get_submodule(n)) is cls]
    if not done:
        raise ShoestringError(f"{method}: the model has no linear layers to quantise")
    return QuantSpec(method=method, group_size=group_size, modules=done)


def dequantize_model(model: Any) -> int:
    """Turn quantised layers back into ``nn.Linear`` holding the dequantised weights.

    Used by export: the values are exactly the quantisation grid, so a float export of a
    quantised model reproduces its outputs. Returns how many layers were converted.
    """
    import torch
    from torch import nn

    count = 0
    for name, m in list(quantized_modules(model).items()):
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(m.dequantized_weight())
            if m.bias is not None:
                lin.bias.copy_(m.bias)
        replace_module(model, name, lin)
        count += 1
    return count
