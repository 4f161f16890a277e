"""The native Llama forward (``kernels/llama_forward.c``): build it once, pack weights, call it.

The C source is compiled with the system's gcc at first use (about a second) into
``~/.cache/shoestring/kernels/`` under a name that hashes the source, the flags and the
CPU's instruction sets, and loaded with ctypes. It links against the OpenMP runtime torch
already loaded (same soname), so torch and the kernel share one runtime.

That runtime keeps a thread pool per thread that ever ran a parallel region, and when the pools'
threads together outnumber the cores it stops spin-waiting at barriers and sleeps in the kernel
instead (libgomp's throttled spin count). The server steps the kernel from its scheduler thread,
so a pool left in the loading thread made every decode step 30-45% slower (8.8 vs 12.3 ms per
token, SmolLM2-135M f16, 2 threads, 2 cores). :func:`in_short_lived_thread` runs the loading in a
thread that then exits, taking its pool with it.

Why not torch ops: at batch 1 a 135M-parameter model is bound by Python dispatch and by the
GEMV kernels' memory bandwidth, not by FLOPs. PyTorch's bfloat16 ``linear`` with one input
row reaches ~12 GB/s here (oneDNN prepacked: ~16 GB/s); this kernel streams float16 weights
at ~23 GB/s, and one call runs the whole step (RESULTS.md, "Serving").
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from shoestring.core.artifact import atomic_path, sweep_dead_temps
from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

__all__ = ["NativeLlama", "NativeUnavailable", "cpu_flags", "in_short_lived_thread", "load_kernel_library",
           "native_support", "pack"]  # fmt: skip


def in_short_lived_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in a new thread that exits when it returns (its result, or its exception re-raised
    here), so the OpenMP pool torch's ops create while loading does not outlive the loading."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller, whatever it is
            box["error"] = err

    thread = threading.Thread(target=target, name="shoestring-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]

_SOURCE = Path(__file__).with_name("kernels") / "llama_forward.c"
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-Wno-psabi"]
_WTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}
_ERRORS = {-1: "a token id is outside the vocabulary", -2: "a cache slot is out of range",
           -3: "a position is past the context", -4: "an output row is out of range"}  # fmt: skip


class NativeUnavailable(Exception):
    """The native kernel cannot run here (no compiler, not x86-64, unsupported model)."""


_INT_FIELDS = ("n_layers", "hidden", "n_heads", "n_kv_heads", "head_dim", "inter", "vocab", "vocab_padded",
               "wtype", "max_slots", "max_len", "embed_packed")  # fmt: skip


class _Model(ctypes.Structure):
    """``Model`` in llama_forward.c, field for field."""

    _fields_ = [
        *[(n, ctypes.c_int) for n in _INT_FIELDS],
        ("eps", ctypes.c_float),
        *[(n, ctypes.POINTER(ctypes.c_void_p)) for n in ("wqkv", "wo", "wgu", "wdown", "ln1", "ln2")],
        ("norm", ctypes.c_void_p),
        ("head", ctypes.c_void_p),
        ("embed", ctypes.c_void_p),
        ("rope_cos", ctypes.c_void_p),
        ("rope_sin", ctypes.c_void_p),
        ("kcache", ctypes.c_void_p),
        ("vcache", ctypes.c_void_p),
    ]


def cpu_flags() -> str:
    """The CPU's instruction-set flags (from /proc/cpuinfo), part of the kernel's cache key."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load_kernel_library() -> ctypes.CDLL:
    """Compile (once per source, flags and CPU) and load the kernel library."""
    import torch  # noqa: F401 - loads torch's OpenMP runtime first, so the kernel binds to it

    from shoestring.models.loading import cache_dir

    if platform.machine() not in ("x86_64", "AMD64"):
        raise NativeUnavailable(f"the native kernel is built for x86-64, not {platform.machine()}")
    gcc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if gcc is None:
        raise NativeUnavailable("no C compiler (gcc) on PATH")
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(_FLAGS).encode() + cpu_flags().encode() + gcc.encode()).hexdigest()[:16]
    out = cache_dir() / "kernels" / f"llama_forward-{key}.so"
    sweep_dead_temps(out.parent)
    if not out.is_file():
        with atomic_path(out) as tmp:
            proc = subprocess.run([gcc, *_FLAGS, str(_SOURCE), "-o", str(tmp), "-lm"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise NativeUnavailable(f"compiling the native kernel failed: {proc.stderr.strip().splitlines()[-1:]}")
    lib = ctypes.CDLL(str(out))
    lib.ss_forward.restype = ctypes.c_int
    lib.ss_forward.argtypes = [ctypes.POINTER(_Model), ctypes.c_int, *[ctypes.c_void_p] * 3, ctypes.c_int,
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]  # fmt: skip
    lib.ss_workspace_floats.restype = ctypes.c_long
    lib.ss_workspace_floats.argtypes = [ctypes.POINTER(_Model), ctypes.c_int, ctypes.c_int]
    lib.ss_gemm.restype = None
    lib.ss_gemm.argtypes = (
        [ctypes.c_int] * 3 + [ctypes.c_void_p] * 2 + [ctypes.c_int, ctypes.c_void_p] + [ctypes.c_int] * 2
    )
    return lib


def native_support(config: Any) -> str | None:
    """Why the native kernel cannot run this model config, or None when it can."""
    kind = getattr(config, "model_type", "")
    if kind not in ("llama", "mistral"):
        return f"model type '{kind}' (the native kernel covers Llama and Mistral)"
    if kind == "mistral" and getattr(config, "sliding_window", None):
        return "sliding-window attention"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "attention or MLP biases"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation '{config.hidden_act}'"
    rope = (getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}) or {}
    if rope.get("rope_type", "default") == "dynamic":
        return "dynamic RoPE scaling (positions rescale with the sequence length)"
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if heads % kv or dim % 2 or dim > 512:
        return f"head layout {heads}/{kv} x {dim}"
    if any(n % 16 for n in (config.hidden_size, config.intermediate_size, heads * dim, (heads + 2 * kv) * dim)):
        return "a hidden, MLP or attention width that is not a multiple of 16"
    return None


def pack(w: torch.Tensor, dtype: torch.dtype, rows_to: int | None = None) -> torch.Tensor:
    """(N, K) -> (N/16, K, 16) in ``dtype``, zero rows appended up to ``rows_to``."""
    import torch

    n, k = w.shape
    if rows_to is not None and rows_to > n:
        w = torch.cat([w, w.new_zeros(rows_to - n, k)])
        n = rows_to
    return w.to(dtype).reshape(n // 16, 16, k).transpose(1, 2).contiguous()


def _interleave_blocks(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(I, C) gate and up -> (2I, C): gate rows 0-15, up rows 0-15, gate rows 16-31, ..."""
    import torch

    i, c = gate.shape
    return torch.stack([gate.reshape(i // 16, 16, c), up.reshape(i // 16, 16, c)], 1).reshape(2 * i, c)


@dataclass
class _Arrays:
    """Keeps every tensor the C struct points at alive."""

    tensors: list[Any]
    pointer_arrays: list[Any]


class NativeLlama:
    """A Llama-family model as packed weights + a slot KV cache, stepped by the C kernel.

    ``step(tokens, slots, positions, out_rows)`` runs one forward over a flat batch and
    returns float32 logits for ``out_rows`` (rows of the batch), shape (len(out_rows), vocab).
    """

    def __init__(self, model: Any, *, dtype: str, slots: int, max_len: int, max_tokens: int, threads: int) -> None:
        import torch

        cfg = model.config
        why = native_support(cfg)
        if why is not None:
            raise NativeUnavailable(why)
        if dtype not in _WTYPES:
            raise ShoestringError(f"the native kernel stores weights as {', '.join(_WTYPES)}, not {dtype}")
        self.lib = load_kernel_library()
        tdtype = getattr(torch, dtype)
        heads, kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        self.vocab = int(cfg.vocab_size)
        self.vocab_padded = -(-self.vocab // 16) * 16
        self.slots, self.max_len, self.threads, self.max_tokens = slots, max_len, threads, max_tokens
        self.dtype = dtype
        layers = model.model.layers
        keep: list[Any] = []

        def packed(w: torch.Tensor, rows_to: int | None = None) -> int:
            t = pack(w.detach().float(), tdtype, rows_to)
            keep.append(t)
            return t.data_ptr()

        def f32(w: torch.Tensor) -> int:
            t = w.detach().float().contiguous()
            keep.append(t)
            return t.data_ptr()

        def ptrs(values: list[int]) -> Any:
            arr = (ctypes.c_void_p * len(values))(*values)
            return arr

        qkv = [packed(torch.cat([la.self_attn.q_proj.weight, la.self_attn.k_proj.weight, la.self_attn.v_proj.weight]))
               for la in layers]  # fmt: skip
        wo = [packed(la.self_attn.o_proj.weight) for la in layers]
        gu = [packed(_interleave_blocks(la.mlp.gate_proj.weight, la.mlp.up_proj.weight)) for la in layers]
        down = [packed(la.mlp.down_proj.weight) for la in layers]
        ln1 = [f32(la.input_layernorm.weight) for la in layers]
        ln2 = [f32(la.post_attention_layernorm.weight) for la in layers]
        head_w = model.get_output_embeddings().weight
        emb_w = model.get_input_embeddings().weight
        tied = head_w.data_ptr() == emb_w.data_ptr()
        head = packed(head_w, self.vocab_padded)
        embed = head if tied else self._row_major(emb_w, tdtype, keep)
        cos, sin = self._rope_tables(model, max_len)
        keep += [cos, sin]
        # Slot KV cache, float32 like the activations. torch.empty: pages become resident only
        # once a position is written, so a long context costs memory only when it is used.
        shape = (cfg.num_hidden_layers, slots, kv, max_len, dim)
        self.k_cache, self.v_cache = torch.empty(shape), torch.empty(shape)
        arrays = [ptrs(x) for x in (qkv, wo, gu, down, ln1, ln2)]
        self._keep = _Arrays(keep, arrays)
        self.struct = _Model(
            cfg.num_hidden_layers, cfg.hidden_size, heads, kv, dim, cfg.intermediate_size, self.vocab,
            self.vocab_padded, _WTYPES[dtype], slots, max_len, int(tied), float(cfg.rms_norm_eps),
            *[ctypes.cast(a, ctypes.POINTER(ctypes.c_void_p)) for a in arrays],
            f32(model.model.norm.weight), head, embed, cos.data_ptr(), sin.data_ptr(),
            self.k_cache.data_ptr(), self.v_cache.data_ptr(),
        )  # fmt: skip
        floats = self.lib.ss_workspace_floats(ctypes.byref(self.struct), max_tokens, threads)
        self.workspace = torch.empty(int(floats))
        self.logits = torch.empty((max_tokens, self.vocab_padded))
        self.weight_bytes = sum(t.numel() * t.element_size() for t in keep if t.dim() == 3)
        """Bytes of packed weight matrices one decode step streams (the LM head included)."""

    @staticmethod
    def _row_major(w: torch.Tensor, dtype: torch.dtype, keep: list[Any]) -> int:
        t = w.detach().to(dtype).contiguous()
        keep.append(t)
        return t.data_ptr()

    @staticmethod
    def _rope_tables(model: Any, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions 0..max_len-1 from the model's own rotary module (any static RoPE type)."""
        import torch

        rotary = model.model.rotary_emb
        x = torch.zeros(1, dtype=torch.float32)
        with torch.no_grad():
            cos, sin = rotary(x, torch.arange(max_len)[None])
        return cos[0].float().contiguous(), sin[0].float().contiguous()

    def step(self, tokens: Any, slots: Any, positions: Any, out_rows: Any) -> torch.Tensor:
        """One forward; the arguments are int32 numpy arrays. Returns a view of (len(out_rows), vocab) logits."""
        n, n_out = len(tokens), len(out_rows)
        if n > self.max_tokens:
            raise ValueError(f"{n} tokens in one step; this engine was sized for {self.max_tokens}")
        rc = self.lib.ss_forward(
            ctypes.byref(self.struct), n, tokens.ctypes.data, slots.ctypes.data, positions.ctypes.data, n_out,
            out_rows.ctypes.data, self.logits.data_ptr(), self.workspace.data_ptr(), self.threads,
        )  # fmt: skip
        if rc != 0:
            raise ValueError(f"native forward refused the step: {_ERRORS.get(rc, rc)}")
        return self.logits[:n_out, : self.vocab]

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` cached positions of slot ``src`` into slot ``dst`` (prefix reuse)."""
        self.k_cache[:, dst, :, :length].copy_(self.k_cache[:, src, :, :length])
        self.v_cache[:, dst, :, :length].copy_(self.v_cache[:, src, :, :length])
