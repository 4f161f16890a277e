"""Model loading by hub id, folder, GGUF file, packaged short name or model artifact."""

from shoestring.models.loading import (
    ModelRef,
    Task,
    count_parameters,
    hf_folder,
    load_config,
    load_model,
    load_tokenizer,
    resolve_model,
)
from shoestring.models.packaged import PACKAGED_MODELS, PackagedModel, packaged_model

__all__ = [
    "PACKAGED_MODELS",
    "ModelRef",
    "PackagedModel",
    "Task",
    "count_parameters",
    "hf_folder",
    "load_config",
    "load_model",
    "load_tokenizer",
    "packaged_model",
    "resolve_model",
]
