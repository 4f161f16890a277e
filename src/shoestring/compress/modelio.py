"""Save and load compressed models: safetensors + JSON, never pickles.

A float model (merged, pruned, distilled) is a plain Hugging Face folder. A quantised
model's folder has ``config.json``, tokenizer files, ``shoestring_quant.json`` (which
modules are quantised, how) and ``quantized.safetensors`` (int8 / packed int4 tensors and
their scales). The weight file is deliberately *not* called ``model.safetensors``: a
plain ``from_pretrained`` on the folder then fails loudly instead of silently building a
randomly initialised model. :func:`load_compressed` rebuilds the architecture from the
config, swaps in the quantised modules and loads the tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.compress.quant import QUANT_FILE, QuantSpec, apply_spec_empty
from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["QUANT_WEIGHTS", "TASK_FILE", "load_compressed", "model_task", "normalize_task", "save_model_folder"]

QUANT_WEIGHTS = "quantized.safetensors"
TASK_FILE = "shoestring_task.json"
_AUTO = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "classification": "AutoModelForSequenceClassification",
    "embedding": "AutoModel",
}


def normalize_task(task: str | None) -> str:
    """Map training task names onto the four model heads we measure (sft is a causal LM)."""
    t = (task or "causal-lm").lower()
    if t in ("sft", "causal-lm", "text-generation", "lm"):
        return "causal-lm"
    if t in ("masked-lm", "fill-mask"):
        return "masked-lm"
    if t in ("classification", "sequence-classification", "text-classification"):
        return "classification"
    if t in ("embedding", "feature-extraction", "sentence-embedding"):
        return "embedding"
    raise ShoestringError(
        f"compress does not handle task '{task}'; it handles causal-lm/sft, masked-lm, classification, embedding"
    )


def model_folder(path: str | Path) -> Path:
    """The folder holding ``config.json``: the path itself or an artifact's ``model/``."""
    p = Path(path)
    if (p / "model" / "config.json").is_file():
        return p / "model"
    if (p / "config.json").is_file():
        return p
    raise ShoestringError(f"{p} has no config.json (nor model/config.json); pass a model folder or model artifact")


def model_task(path: str | Path, default: str | None = None) -> str:
    """Task recorded with a model: artifact manifest ``task``, then ``shoestring_task.json``."""
    p = Path(path)
    for mf in (p / "manifest.json", p.parent / "manifest.json"):
        if mf.is_file():
            task = json.loads(mf.read_text()).get("task")
            if task:
                return normalize_task(task)
    try:
        tf = model_folder(p) / TASK_FILE
    except ShoestringError:
        tf = p / TASK_FILE
    if tf.is_file():
        return normalize_task(json.loads(tf.read_text()).get("task"))
    return normalize_task(default)


def save_model_folder(model: nn.Module, tokenizer: Any, folder: Path, task: str, spec: QuantSpec | None = None) -> None:
    """Write ``model`` (float or quantised) and its tokenizer into ``folder``."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    if spec is None:
        model.save_pretrained(folder)  # type: ignore[operator]
    else:
        model.config.save_pretrained(folder)  # type: ignore[union-attr,operator]
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(folder)
        # save_model drops duplicate names of shared tensors (tied embeddings) itself.
        save_model(model, str(folder / QUANT_WEIGHTS), metadata={"format": "pt", "shoestring_quant": spec.method})
        (folder / QUANT_FILE).write_text(spec.to_json() + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    (folder / TASK_FILE).write_text(json.dumps({"task": task}) + "\n")


def is_quantized(path: str | Path) -> bool:
    try:
        return (model_folder(path) / QUANT_FILE).is_file()
    except ShoestringError:
        return False


def load_compressed(path: str | Path, task: str | None = None) -> nn.Module:
    """Load a model folder or model artifact written by ``shoestring compress``.

    Quantised folders are rebuilt from ``shoestring_quant.json`` + ``quantized.safetensors``;
    anything else goes through :func:`shoestring.models.load_model`. Returns an eval-mode model.
    """
    import transformers
    from safetensors.torch import load_model as st_load

    p = Path(path)
    if not is_quantized(p):
        from shoestring.models import load_model

        model = load_model(str(p), model_task(p, task))  # type: ignore[arg-type]
        model.eval()
        return model
    folder = model_folder(p)
    task_name = model_task(p, task)
    spec = QuantSpec.read(folder)
    if spec.format_version != 1:
        raise ShoestringError(f"{folder}: quantisation format {spec.format_version} is newer than this shoestring")
    config = transformers.AutoConfig.from_pretrained(str(folder))
    loader = getattr(transformers, _AUTO[task_name])
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
