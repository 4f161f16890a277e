"""Save and load compressed models: safetensors + JSON, never pickles.

A float model (merged, pruned, distilled) is a plain Hugging Face folder; a quantised one
is the format of :mod:`shoestring.models.quantized`. Both carry ``shoestring_task.json`` so
that a loader knows the head without being told.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.models.loading import load_model
from shoestring.models.quantized import QUANT_FILE, QUANT_WEIGHTS, TASK_FILE, QuantSpec, model_task

if TYPE_CHECKING:
    from torch import nn

__all__ = ["load_compressed", "save_model_folder"]


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
    (folder / TASK_FILE).write_text(json.dumps({"task": str(task)}) + "\n")


def load_compressed(path: str | Path, task: str | None = None) -> nn.Module:
    """Load a model folder or model artifact written by ``shoestring compress``, in eval mode.

    The task recorded with the model wins over ``task``; quantised folders are rebuilt by
    :func:`shoestring.models.quantized.load_quantized` (through ``load_model``).
    """
    model = load_model(str(path), model_task(path, task))
    model.eval()
    return model
