"""The quantised model format: int8 / int4 linear layers saved as safetensors + JSON, never pickles.

A quantised model's folder has ``config.json``, tokenizer files, ``shoestring_quant.json``
(which modules are quantised, how), ``shoestring_task.json`` (the model's task) and
``quantized.safetensors`` (int8 / packed int4 tensors and their scales). The weight file is
deliberately *not* called ``model.safetensors``: a plain ``from_pretrained`` on the folder then
fails loudly instead of silently building a randomly initialised model. :func:`load_quantized`
rebuilds the architecture from the config, swaps in the quantised modules and loads the
tensors; :func:`shoestring.models.load_model` calls it for such folders. Producing the format
(choosing the layers, saving) is ``shoestring.compress``'s job.

The three methods, each a drop-in ``nn.Linear`` replacement whose *stored* form is plain
tensors and whose *compute* form is built lazily on the first forward from whatever kernel this torch build has:

* ``int8-dynamic`` - int8 weights (symmetric, per output channel) and int8 activations
  quantised per call (per tensor, dynamic range; rows with outlier ranges are split off
  and get their own scale, see ``_rows_by_range``). Kernel: fbgemm/onednn
  ``quantized::linear_dynamic`` when present, else ``torch._int_mm`` with our own
  per-row activation scales, else dequantise + float matmul. We call the ops, not the
  ``torch.ao.quantization`` Python API, which is deprecated in favour of torchao.
* ``int8-weight`` - int8 weights per output channel, float activations
  (``aten._weight_int8pack_mm`` on bfloat16 activations; fallback: dequantise).
* ``int4-weight`` - 4-bit asymmetric weights in groups of ``group_size`` input columns,
  stored two nibbles per byte (portable layout); packed for ``aten._weight_int4pack_mm_for_cpu``
  on first use (fallback: dequantise).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shoestring.core.errors import ShoestringError
from shoestring.models.tasks import HF_TASKS, Task, normalize_task

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "AUTO_CLASSES",
    "QUANT_FILE",
    "QUANT_METHODS",
    "QUANT_WEIGHTS",
    "TASK_FILE",
    "QuantSpec",
    "apply_spec_empty",
    "is_quantized",
    "load_quantized",
    "model_folder",
    "model_task",
    "quant_class",
    "quantized_modules",
    "replace_module",
]

QUANT_WEIGHTS = "quantized.safetensors"
TASK_FILE = "shoestring_task.json"
AUTO_CLASSES: dict[Task, str] = {
    Task.CAUSAL_LM: "AutoModelForCausalLM",
    Task.MASKED_LM: "AutoModelForMaskedLM",
    Task.CLASSIFICATION: "AutoModelForSequenceClassification",
    Task.EMBEDDING: "AutoModel",
}
"""The transformers auto class that builds each Hugging Face task's head."""
QuantMethod = Literal["int8-dynamic", "int8-weight", "int4-weight"]
QUANT_METHODS: tuple[str, ...] = ("int8-dynamic", "int8-weight", "int4-weight")
QUANT_FILE = "shoestring_quant.json"
"""Written next to ``config.json``: which modules are quantised, and how."""


@dataclass
class QuantSpec:
    """What was quantised; enough to rebuild the modules before loading the weights."""

    method: str
    group_size: int = 32
    """int4 only: input columns that share one scale and minimum."""
    modules: list[str] = field(default_factory=list)
    """Dotted names of the replaced ``nn.Linear`` modules."""
    format_version: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, folder: Path) -> QuantSpec:
        raw = json.loads((Path(folder) / QUANT_FILE).read_text())
        return cls(**raw)


def _make_classes() -> dict[str, type]:
    """Build the module classes on first use so importing this file stays light."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class _QuantLinear(nn.Module):
        in_features: int
        out_features: int
        bias: Any
        qweight: torch.Tensor

        def __init__(self, in_features: int, out_features: int, has_bias: bool) -> None:
            super().__init__()
            self.in_features, self.out_features = in_features, out_features
            self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if has_bias else None
            self._kernel: Any = None  # compute form, rebuilt lazily (never saved)
            self.backend = "unset"

        def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
            super()._load_from_state_dict(*args, **kwargs)
            self._kernel = None  # new weights: drop the packed copy

        def dequantized_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
            raise NotImplementedError

        def _build(self) -> None:  # pragma: no cover - abstract
            raise NotImplementedError

        def _matmul(self, x2: torch.Tensor, kind: str, k: Any) -> torch.Tensor:  # pragma: no cover - abstract
            """(M, in) -> (M, out) float32 through the packed kernel ``kind`` (bias included)."""
            raise NotImplementedError

        def _plus_bias(self, y: torch.Tensor) -> torch.Tensor:
            return y if self.bias is None else y + self.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self._kernel is None:
                self._build()
            kind, k = self._kernel
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])  # (M, in)
            y = F.linear(x2.float(), k, self.bias) if kind == "dequant" else self._matmul(x2, kind, k)
            return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

        def extra_repr(self) -> str:
            return f"in={self.in_features}, out={self.out_features}, backend={self.backend}"

    class Int8DynamicLinear(_QuantLinear):
        """int8 weights per output channel; activations quantised at run time."""

        scale: torch.Tensor

        def __init__(self, in_features: int, out_features: int, has_bias: bool) -> None:
            super().__init__(in_features, out_features, has_bias)
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scale", torch.ones(out_features))

        @classmethod
        def from_linear(cls, lin: nn.Linear, group_size: int) -> Int8DynamicLinear:
            m = cls(lin.in_features, lin.out_features, lin.bias is not None)
            q, s = _quant_int8_per_channel(lin.weight.detach().float())
            m.qweight.copy_(q)
            m.scale.copy_(s)
            if lin.bias is not None:
                m.bias.data.copy_(lin.bias.detach().float())  # type: ignore[union-attr]
            return m

        def dequantized_weight(self) -> torch.Tensor:
            return self.qweight.float() * self.scale[:, None]

        def _build(self) -> None:
            try:
                with warnings.catch_warnings():
                    # Deprecated tensor type, but the fbgemm kernel needs it to pack.
                    warnings.simplefilter("ignore")
                    qw = torch.quantize_per_channel(
                        self.dequantized_weight(),
                        self.scale.double(),
                        torch.zeros(self.out_features, dtype=torch.long),
                        0,
                        torch.qint8,
                    )
                self._kernel = ("fbgemm", torch.ops.quantized.linear_prepack(qw, self.bias))
                self.backend = "quantized.linear_dynamic"
                return
            except (RuntimeError, AttributeError, NotImplementedError):
                pass
            try:
                torch._int_mm(torch.zeros(17, 8, dtype=torch.int8), torch.zeros(8, 8, dtype=torch.int8))
                self._kernel = ("int_mm", self.qweight.t().contiguous())
                self.backend = "_int_mm"
            except (RuntimeError, AttributeError, NotImplementedError):
                self._kernel = ("dequant", self.dequantized_weight())
                self.backend = "dequantize+matmul"

        def _matmul(self, x2: torch.Tensor, kind: str, k: Any) -> torch.Tensor:
            x2 = x2.float()
            if kind == "fbgemm":  # bias packed with the weights
                return _rows_by_range(x2, lambda rows: torch.ops.quantized.linear_dynamic(rows, k, _REDUCE_RANGE))
            xs = x2.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0  # (M, 1)
            xq = torch.round(x2 / xs).to(torch.int8)
            m = xq.shape[0]
            if m <= 16:  # _int_mm needs M > 16 on some builds
                xq = F.pad(xq, (0, 0, 0, 17 - m))
            return self._plus_bias(torch._int_mm(xq, k)[:m].float() * xs * self.scale)

    class Int8WeightLinear(Int8DynamicLinear):
        """int8 weights per output channel; activations stay floating point."""

        def _build(self) -> None:
            try:
                probe = torch.zeros(1, self.in_features, dtype=torch.bfloat16)
                torch.ops.aten._weight_int8pack_mm(probe, self.qweight, self.scale.bfloat16())
                self._kernel = ("w8", self.scale.bfloat16())
                self.backend = "_weight_int8pack_mm(bf16)"
            except (RuntimeError, AttributeError, NotImplementedError):
                self._kernel = ("dequant", self.dequantized_weight())
                self.backend = "dequantize+matmul"

        def _matmul(self, x2: torch.Tensor, kind: str, k: Any) -> torch.Tensor:
            return self._plus_bias(torch.ops.aten._weight_int8pack_mm(x2.bfloat16(), self.qweight, k).float())

    class Int4WeightLinear(_QuantLinear):
        """4-bit weights, asymmetric per group of ``group_size`` input columns."""

        scales: torch.Tensor
        mins: torch.Tensor

        def __init__(self, in_features: int, out_features: int, has_bias: bool, group_size: int = 32) -> None:
            super().__init__(in_features, out_features, has_bias)
            if in_features % group_size or in_features % 2:
                raise ShoestringError(
                    f"int4: in_features {in_features} is not a multiple of group_size {group_size}; pick a divisor"
                )
            self.group_size = group_size
            groups = in_features // group_size
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
            self.register_buffer("scales", torch.ones(out_features, groups))
            self.register_buffer("mins", torch.zeros(out_features, groups))

        @classmethod
        def from_linear(cls, lin: nn.Linear, group_size: int) -> Int4WeightLinear:
            m = cls(lin.in_features, lin.out_features, lin.bias is not None, group_size)
            w = lin.weight.detach().float().reshape(lin.out_features, -1, group_size)  # (N, G, gs)
            lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
            sc = ((hi - lo) / 15.0).clamp(min=1e-8)
            q = torch.clamp(torch.round((w - lo) / sc), 0, 15).to(torch.uint8).reshape(lin.out_features, -1)
            m.qweight.copy_(q[:, 0::2] | (q[:, 1::2] << 4))  # two nibbles per byte, low = even column
            m.scales.copy_(sc.squeeze(-1))
            m.mins.copy_(lo.squeeze(-1))
            if lin.bias is not None:
                m.bias.data.copy_(lin.bias.detach().float())  # type: ignore[union-attr]
            return m

        def _nibbles(self) -> torch.Tensor:
            q = torch.empty(self.out_features, self.in_features, dtype=torch.uint8)
            q[:, 0::2] = self.qweight & 0x0F
            q[:, 1::2] = self.qweight >> 4
            return q  # (N, K) values 0..15

        def dequantized_weight(self) -> torch.Tensor:
            q = self._nibbles().float().reshape(self.out_features, -1, self.group_size)
            return (q * self.scales[..., None] + self.mins[..., None]).reshape(self.out_features, -1)

        def _build(self) -> None:
            try:
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self._nibbles().to(torch.int32), 1)
                # The kernel computes (q - 8) * scale + zero, so zero = min + 8 * scale.
                sz = torch.stack([self.scales.t(), (self.mins + 8 * self.scales).t()], dim=-1)
                sz = sz.contiguous().bfloat16()  # (G, N, 2)
                probe = torch.zeros(1, self.in_features, dtype=torch.bfloat16)
                torch.ops.aten._weight_int4pack_mm_for_cpu(probe, packed, self.group_size, sz)
                self._kernel = ("w4", (packed, sz))
                self.backend = "_weight_int4pack_mm_for_cpu(bf16)"
            except (RuntimeError, AttributeError, NotImplementedError):
                self._kernel = ("dequant", self.dequantized_weight())
                self.backend = "dequantize+matmul"

        def _matmul(self, x2: torch.Tensor, kind: str, k: Any) -> torch.Tensor:
            packed, sz = k
            return self._plus_bias(
                torch.ops.aten._weight_int4pack_mm_for_cpu(x2.bfloat16(), packed, self.group_size, sz).float()
            )

    return {"int8-dynamic": Int8DynamicLinear, "int8-weight": Int8WeightLinear, "int4-weight": Int4WeightLinear}


_CLASSES: dict[str, type] = {}


def quant_class(method: str) -> Any:
    """The module class for a method (built once)."""
    if method not in QUANT_METHODS:
        raise ShoestringError(f"unknown quantisation method '{method}'; choose one of {', '.join(QUANT_METHODS)}")
    if not _CLASSES:
        _CLASSES.update(_make_classes())
    return _CLASSES[method]


_ROW_RANGE = 2.0
"""Rows whose max |x| exceeds this many times the median row's get their own activation scale."""


def _cpu_lacks_vnni() -> bool:
    """fbgemm's int8 kernels without VNNI sum pairs of u8 x s8 products in int16
    (``vpmaddubsw``), which saturates on full-range activations: measured on an AVX2 CPU, a
    random 128-feature matmul loses 4.4% relative error with 8-bit activations and 1.8% with
    7-bit ones. Without VNNI the activations are therefore quantised with one bit less."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return "vnni" not in flags


_REDUCE_RANGE = _cpu_lacks_vnni()


def _rows_by_range(x: torch.Tensor, fn: Any) -> torch.Tensor:
    """``fn`` (a per-tensor dynamic-quantised matmul) on row groups of similar range.

    fbgemm quantises the whole (tokens, features) input with one scale. A few tokens with
    massive activations (SmolLM2's first token reaches ~2000x the median at the MLP
    down-projection) then leave the other tokens a handful of int8 levels: measured KL
    0.54 nats/token on the quickstart model. Splitting those rows off (recursively, so each
    group spans < ``_ROW_RANGE``x) gives every group its own scale; decode steps (one row)
    and inputs without outliers take the single call as before.
    """

    if x.shape[0] < 2:
        return fn(x)
    amax = x.abs().amax(dim=1)  # (M,)
    big = amax > _ROW_RANGE * amax.median()
    if not bool(big.any()):
        return fn(x)
    out: torch.Tensor | None = None
    for rows in (big, ~big):
        idx = rows.nonzero().flatten()
        if idx.numel() == 0:
            continue
        part = _rows_by_range(x[idx], fn)
        if out is None:
            out = part.new_empty((x.shape[0], part.shape[1]))
        out[idx] = part
    assert out is not None
    return out


def _quant_int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: ``w ~= q * scale[:, None]``, q in [-127, 127]."""
    import torch

    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)  # (N,)
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale


def replace_module(root: Any, dotted: str, new: Any) -> None:
    """Put ``new`` where the submodule ``dotted`` (``model.layers.0.mlp.up_proj``) stands."""
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def apply_spec_empty(model: Any, spec: QuantSpec) -> None:
    """Swap in empty quantised modules named by ``spec`` (before loading saved weights)."""
    cls = quant_class(spec.method)
    for name in spec.modules:
        lin = model.get_submodule(name)
        args: tuple[Any, ...] = (lin.in_features, lin.out_features, lin.bias is not None)
        if spec.method == "int4-weight":
            args = (*args, spec.group_size)
        replace_module(model, name, cls(*args))


def quantized_modules(model: Any) -> dict[str, Any]:
    """Name -> quantised module, for reports (backend actually used, ...)."""
    classes = tuple(_CLASSES.values())
    return {n: m for n, m in model.named_modules() if classes and isinstance(m, classes)}


def model_folder(path: str | Path) -> Path:
    """The folder holding ``config.json``: the path itself or an artifact's ``model/``."""
    p = Path(path)
    if (p / "model" / "config.json").is_file():
        return p / "model"
    if (p / "config.json").is_file():
        return p
    raise ShoestringError(f"{p} has no config.json (nor model/config.json); pass a model folder or model artifact")


def model_task(path: str | Path, default: str | None = None) -> Task:
    """Task recorded with a model: artifact manifest ``task``, then ``shoestring_task.json``."""
    p = Path(path)
    for mf in (p / "manifest.json", p.parent / "manifest.json"):
        if mf.is_file():
            task = json.loads(mf.read_text()).get("task")
            if task:
                return normalize_task(task, allowed=HF_TASKS, who="compress")
    try:
        tf = model_folder(p) / TASK_FILE
    except ShoestringError:
        tf = p / TASK_FILE
    if tf.is_file():
        return normalize_task(json.loads(tf.read_text()).get("task"), allowed=HF_TASKS, who="compress")
    return normalize_task(default, allowed=HF_TASKS, who="compress")


def is_quantized(path: str | Path) -> bool:
    """Whether ``path`` (a model folder or artifact) holds a quantised model."""
    try:
        return (model_folder(path) / QUANT_FILE).is_file()
    except ShoestringError:
        return False


def load_quantized(path: str | Path, task: str | None = None) -> nn.Module:
    """Rebuild a quantised model folder (or model artifact) and load its tensors; eval mode.

    The architecture comes from ``config.json``, the quantised modules from
    ``shoestring_quant.json``, the tensors from ``quantized.safetensors`` (never a pickle).
    The task recorded with the model wins over ``task``.
    """
    import transformers
    from safetensors.torch import load_model as st_load

    p = Path(path)
    folder = model_folder(p)
    task_name = model_task(p, task)
    spec = QuantSpec.read(folder)
    if spec.format_version != 1:
        raise ShoestringError(f"{folder}: quantisation format {spec.format_version} is newer than this shoestring")
    config = transformers.AutoConfig.from_pretrained(str(folder))
    loader = getattr(transformers, AUTO_CLASSES[task_name])
    model = loader.from_config(config)
    apply_spec_empty(model, spec)
    weights = folder / QUANT_WEIGHTS
    if not weights.is_file():
        raise ShoestringError(f"{folder} has {QUANT_FILE} but no {QUANT_WEIGHTS}; re-run compress")
    missing, unexpected = st_load(model, str(weights), strict=False)
    # Only tied copies may be missing (safetensors stores one name per shared tensor).
    if unexpected or [k for k in missing if not _is_tied(model, k)]:
        raise ShoestringError(
            f"{weights} does not match its config (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); re-run compress"
        )
    model.tie_weights()
    model.eval()
    return model


def _is_tied(model: nn.Module, key: str) -> bool:
    """Whether ``key`` shares storage with another parameter (a tied embedding)."""
    sd = model.state_dict()
    t = sd.get(key)
    if t is None:
        return False
    ptr = t.untyped_storage().data_ptr()
    return any(k != key and v.untyped_storage().data_ptr() == ptr for k, v in sd.items())
