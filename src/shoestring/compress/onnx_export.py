"""ONNX export of causal-LM logits and encoder outputs, checked with onnxruntime.

The graph takes ``input_ids`` and ``attention_mask`` (int64, dynamic batch and sequence
axes) and returns ``logits`` (causal/masked LM, classifier) or ``last_hidden_state``
(encoder), with no KV cache: it is the scoring graph, used for checks, ranking and
encoders. The check runs onnxruntime and PyTorch on inputs of a *different* batch size
and length than the trace, so a shape baked into the graph fails it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["check_with_onnxruntime", "write_onnx"]

Exporter = Literal["torchscript", "dynamo"]


def _wrapper(model: nn.Module, task: str) -> nn.Module:
    from torch import nn

    class _Scoring(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
            if task == "causal-lm":
                kwargs["use_cache"] = False
            out = self.inner(**kwargs)
            return out.last_hidden_state if task == "embedding" else out.logits

    return _Scoring(model).eval()


def write_onnx(
    model: nn.Module, path: Path, task: str, *, exporter: Exporter = "torchscript", opset: int = 17
) -> dict[str, Any]:
    """Export ``model`` to ``path``; returns the exporter used and the file size (bytes)."""
    import warnings

    import torch

    wrapped = _wrapper(model, task)
    ids = torch.randint(3, 100, (1, 8))
    mask = torch.ones_like(ids)
    out_name = "last_hidden_state" if task == "embedding" else "logits"
    used = exporter
    # Both exporters trace the same call; they differ in how the batch and sequence axes are
    # declared dynamic (names per axis for TorchScript, torch.export Dims for dynamo).
    common: dict[str, Any] = {"input_names": ["input_ids", "attention_mask"], "output_names": [out_name]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow are expected
        try:
            if exporter == "torchscript":
                axes = {0: "batch", 1: "seq"}
                dynamic: dict[str, Any] = {
                    "dynamic_axes": {"input_ids": axes, "attention_mask": axes, out_name: axes},
                    "opset_version": opset,
                    "dynamo": False,
                }
            else:
                from torch.export import Dim

                dims = {0: Dim("batch"), 1: Dim("seq", min=2)}
                dynamic = {
                    "dynamic_shapes": {"input_ids": dims, "attention_mask": dims},
                    "dynamo": True,
                    "external_data": False,
                }
            torch.onnx.export(wrapped, (ids, mask), str(path), **common, **dynamic)
        except Exception as err:  # exporters raise many types; the user needs one line
            raise ShoestringError(
                f"ONNX export ({exporter}) failed: {str(err).splitlines()[0][:200]}; try onnx_exporter: "
                f"{'dynamo' if exporter == 'torchscript' else 'torchscript'}"
            ) from None
    size = sum(f.stat().st_size for f in path.parent.iterdir() if f.name.startswith(path.name))
    return {"exporter": used, "opset": opset, "bytes": size, "output": out_name}


def check_with_onnxruntime(model: nn.Module, path: Path, task: str, vocab_size: int, seed: int = 0) -> dict[str, Any]:
    """Max |ONNX - PyTorch| on a (2, 23) batch whose second row is half padding."""
    import numpy as np
    import onnxruntime as ort
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, max(4, vocab_size), (2, 23), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # right padding on one row: the mask path is part of what is checked
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.inference_mode():
        ref = _wrapper(model, task)(ids, mask).float().numpy()
    valid = mask.numpy().astype(bool)  # padded positions' outputs are unspecified
    diff = np.abs(got - ref)[valid]
    return {
        "check_shape": list(ids.shape),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "output_scale": float(np.abs(ref[valid]).max()),
    }
