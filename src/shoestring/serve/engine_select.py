"""Build the generation engine ``--engine`` names; for ``auto``, measure the candidates and pick.

``auto``: with a CUDA GPU and vLLM installed, vLLM. Otherwise every CPU engine that can load
this model (``torch``; ``llama.cpp`` when llama-cpp-python is installed and a GGUF exists or
can be written from the weights) is started and timed on a short probe - a prefill, then
decode steps with one sequence and with ``--max-batch-size`` sequences - and the engine with
the most decode tokens/s at the full batch wins (the server's throughput when it is busy;
the one-sequence rate is logged beside it). The measurement is cached per model file,
machine and settings in ``~/.cache/shoestring/engine-choice.json``, so later starts skip
the probe. The chosen engine and the figures are printed at start-up and shown in
``/v1/models``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoestring.core.artifact import atomic_path, atomic_write_text, sweep_dead_temps
from shoestring.core.errors import ShoestringError
from shoestring.serve.engine import Engine, Sampling, Work

__all__ = ["EngineChoice", "build_engine", "gguf_for", "model_threads", "probe_tokens_per_s"]

_PROBE_PROMPT = 32
_PROBE_STEPS = 12


@dataclass
class EngineChoice:
    """The engine built, the float model the torch engine uses (or None), and why."""

    engine: Engine
    model: Any
    reason: str


def model_threads(cfg: Any, *, spare_core: bool = False) -> int:
    """The model's CPU threads: ``cfg.threads``, else every core this process may use, less one
    when ``spare_core``.

    Measured with ``benchmarks/serve_load.py`` at 16 clients on 2 cores (RESULTS, Serving): the
    native kernel's OpenMP threads gain from the second core even with both cores busy with other
    processes (93 vs 73 tokens/s); llama.cpp's threads spin-wait for each other and collapse there
    (11 vs 30 tokens/s), so its engine leaves a core free.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return int(cfg.threads or max(1, cores - (1 if spare_core else 0)))


def _torch_engine(cfg: Any, context_length: int) -> tuple[Engine, Any]:
    import torch

    from shoestring.serve.native import NativeUnavailable, native_support
    from shoestring.serve.torch_engine import HFEngine, NativeEngine

    model, quantized = _float_model(cfg.model)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if device == "cuda" and not torch.cuda.is_available():
        raise ShoestringError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    max_seqs = cfg.max_batch_size
    why = native_support(model.config) if device == "cpu" else "the native kernel runs on the CPU only"
    if why is None:
        try:
            if quantized:
                # The kernel streams float16/bfloat16 weights: a compressed model's int8/int4 grid
                # values go in dequantised, as `shoestring export` writes them to an f16 GGUF.
                from shoestring.compress import dequantize_model

                dequantize_model(model)
            dtype = _native_dtype(cfg.dtype, model)
            engine = NativeEngine(model, max_seqs=max_seqs, context_length=context_length, dtype=dtype,
                                  threads=model_threads(cfg), prefill_chunk=cfg.prefill_chunk)  # fmt: skip
            if quantized:
                engine.info.details["dequantized_from"] = quantized
            return engine, model
        except NativeUnavailable as err:
            why = str(err)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        cfg.dtype, torch.bfloat16 if device == "cuda" else torch.float32
    )
    model = model.to(device=device, dtype=dtype)
    return HFEngine(model, max_seqs=max_seqs, context_length=context_length, why=why), model


def _float_model(spec: str) -> tuple[Any, str | None]:
    """The model in eval mode with any LoRA adapter merged, and its quantisation method (or None)."""
    from shoestring.models import load_model, resolve_model
    from shoestring.models.quantized import QuantSpec, is_quantized, model_folder

    model = load_model(spec, "causal-lm")
    if hasattr(model, "merge_and_unload"):  # a PEFT adapter: fold it into the weights for speed
        model = model.merge_and_unload()
    ref = resolve_model(spec)
    method = None
    if ref.kind in ("artifact", "folder") and is_quantized(ref.location):
        method = QuantSpec.read(model_folder(ref.location)).method
    return model.eval(), method


def _native_dtype(asked: str, model: Any) -> str:
    """Weight storage of the native kernel: 'auto' is float16 when every weight fits its range, else bfloat16.

    float16 keeps 3 more mantissa bits than bfloat16 and is exact for models that came as
    f16 GGUF files; both halve the bytes a decode step streams against float32.
    """
    if asked != "auto":
        return asked
    biggest = max(float(p.detach().abs().max()) for p in model.parameters())
    return "float16" if biggest < 60000 else "bfloat16"


def gguf_for(spec: str) -> Path:
    """A GGUF file of ``spec``: the file itself, the one an export artifact holds, or an f16 export (cached)."""
    from shoestring.models import resolve_model
    from shoestring.models.loading import cache_dir

    ref = resolve_model(spec)
    if ref.location.endswith(".gguf"):
        return Path(ref.location)
    if ref.kind == "artifact" and ref.adapter is None:
        files = sorted(Path(ref.location).parent.glob("gguf/*.gguf"), key=lambda p: ("f16" not in p.name, p.name))
        if files:
            return files[0]
    source = Path(ref.adapter or ref.location)
    stamp = "".join(
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(source.glob("*")) if p.is_file()
    )
    key = hashlib.sha256(f"{source.resolve()}|{ref.base}|{stamp}".encode()).hexdigest()[:12]
    out = cache_dir() / "gguf" / f"{source.name}-{key}-f16.gguf"
    sweep_dead_temps(out.parent)  # a killed export's half file: a model's size each
    if not out.is_file():
        from shoestring.compress import dequantize_model
        from shoestring.compress.gguf_export import write_gguf
        from shoestring.models import load_tokenizer

        model, quantized = _float_model(spec)
        if quantized:
            dequantize_model(model)
        with atomic_path(out) as tmp:
            write_gguf(model, load_tokenizer(spec), tmp, "f16", name=spec)
    return out


def _llama_cpp_engine(cfg: Any, context_length: int) -> Engine:
    from shoestring.serve.llama_cpp_engine import LlamaCppEngine

    return LlamaCppEngine(gguf_for(cfg.model), max_seqs=cfg.max_batch_size, context_length=context_length,
                          threads=model_threads(cfg, spare_core=True), prefill_chunk=cfg.prefill_chunk)  # fmt: skip


def probe_tokens_per_s(engine: Engine, batch: int) -> float:
    """Decode tokens/s of ``batch`` sequences after a short prefill (greedy, synthetic prompts)."""
    batch = max(1, min(batch, engine.info.max_seqs))
    slots = []
    try:
        for b in range(batch):
            prompt = [(17 * b + 31 * i) % 1000 + 10 for i in range(_PROBE_PROMPT)]
            slot, cached = engine.admit(prompt, Sampling())
            slots.append(slot)
            last = engine.step([Work(slot, prompt[cached:], cached, True)])
        last = {s: 11 for s in slots}
        t0 = time.perf_counter()
        for k in range(_PROBE_STEPS):
            last = engine.step([Work(s, [last.get(s, 11)], _PROBE_PROMPT + k, True) for s in slots])
        return batch * _PROBE_STEPS / (time.perf_counter() - t0)
    finally:
        for s in slots:
            engine.free(s)


def _choice_key(cfg: Any, context_length: int) -> str:
    from shoestring.models import resolve_model
    from shoestring.serve.native import cpu_flags

    ref = resolve_model(cfg.model)
    loc = Path(ref.adapter or ref.location)
    stat = loc.stat() if loc.exists() else None
    parts = [str(loc), str(stat.st_mtime_ns if stat else 0), str(cfg.max_batch_size), str(model_threads(cfg)),
             cfg.dtype, str(context_length), cpu_flags(), _versions()]  # fmt: skip
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _versions() -> str:
    import importlib.metadata as md

    out = []
    for pkg in ("torch", "llama_cpp_python"):
        try:
            out.append(f"{pkg}={md.version(pkg)}")
        except md.PackageNotFoundError:
            out.append(f"{pkg}=none")
    return ",".join(out)


def _auto(cfg: Any, context_length: int) -> EngineChoice:
    import importlib.util

    from shoestring.models.loading import cache_dir
    from shoestring.serve.vllm_engine import VllmEngine, vllm_unavailable

    if vllm_unavailable() is None:
        from shoestring.models import hf_folder

        engine = VllmEngine(hf_folder(cfg.model), max_seqs=cfg.max_batch_size, context_length=context_length,
                            dtype=cfg.dtype)  # fmt: skip
        return EngineChoice(engine, None, "auto: a CUDA GPU and vLLM are present, so vllm")
    store = cache_dir() / "engine-choice.json"
    key = _choice_key(cfg, context_length)
    known: dict[str, Any] = json.loads(store.read_text()) if store.is_file() else {}
    names = ["torch"] + (["llama.cpp"] if importlib.util.find_spec("llama_cpp") is not None else [])
    rates: dict[str, list[float]] | None = known.get(key)
    built: dict[str, EngineChoice] = {}
    if rates is None or not set(rates) <= set(names):
        rates = {}
        for name in names:
            try:
                built[name] = _build(name, cfg, context_length)
            except ShoestringError as err:
                if name == "torch":
                    raise
                print(f"engine auto: {name} cannot serve this model ({err})", flush=True)
                continue
            engine = built[name].engine
            rates[name] = [probe_tokens_per_s(engine, 1), probe_tokens_per_s(engine, cfg.max_batch_size)]
        known.pop(key, None)
        known = dict(list(known.items())[-49:]) | {key: rates}  # the 50 most recent measurements
        sweep_dead_temps(store.parent, store.name)
        atomic_write_text(store, json.dumps(known, indent=1))
    best = max(rates, key=lambda n: (rates[n][1], rates[n][0]))
    for name, other in built.items():
        if name != best:
            _close(other.engine)
    figures = "; ".join(
        f"{n} {r[1]:.0f} tok/s at {cfg.max_batch_size} sequences ({r[0]:.0f} at 1)" for n, r in rates.items()
    )
    chosen = built.get(best) or _build(best, cfg, context_length)
    cached = (
        ""
        if built
        else " (measured earlier on this machine; delete ~/.cache/shoestring/engine-choice.json to re-measure)"
    )
    chosen.reason = f"auto: {figures}: {best} is fastest{cached}"
    return chosen


def _close(engine: Any) -> None:
    close = getattr(engine, "close", None)
    if close is not None:
        close()


def _build(name: str, cfg: Any, context_length: int) -> EngineChoice:
    if name == "torch":
        engine, model = _torch_engine(cfg, context_length)
        return EngineChoice(engine, model, "--engine torch")
    if name == "llama.cpp":
        return EngineChoice(_llama_cpp_engine(cfg, context_length), None, "--engine llama.cpp")
    if name == "vllm":
        from shoestring.models import hf_folder
        from shoestring.serve.vllm_engine import VllmEngine

        engine = VllmEngine(hf_folder(cfg.model), max_seqs=cfg.max_batch_size, context_length=context_length,
                            dtype=cfg.dtype)  # fmt: skip
        return EngineChoice(engine, None, "--engine vllm")
    raise ShoestringError(f"unknown engine '{name}'; choose auto, torch, llama.cpp or vllm")


def build_engine(cfg: Any, context_length: int) -> EngineChoice:
    """The engine ``cfg.engine`` names (``auto``: measured, see the module docstring).

    Built in a thread that exits afterwards (:func:`shoestring.serve.native.in_short_lived_thread`):
    the scheduler thread that steps the engine is then the only one holding an OpenMP pool.
    """
    from shoestring.serve.native import in_short_lived_thread

    def build() -> EngineChoice:
        import torch

        torch.set_num_threads(model_threads(cfg))  # the thread count is per thread in OpenMP
        if cfg.engine == "auto":
            return _auto(cfg, context_length)
        return _build(cfg.engine, cfg, context_length)

    return in_short_lived_thread(build)
