"""Models: loading by hub id, folder, GGUF file, packaged short name or model artifact; the
quantised format; the task vocabulary every stage shares."""

from shoestring.models.loading import (
    ModelRef,
    count_parameters,
    hf_folder,
    load_config,
    load_model,
    load_tokenizer,
    resolve_model,
)
from shoestring.models.packaged import PACKAGED_MODELS, PackagedModel, packaged_model
from shoestring.models.tasks import HF_TASKS, Task, normalize_task, task_of, training_task

__all__ = [
    "HF_TASKS",
    "PACKAGED_MODELS",
    "ModelRef",
    "PackagedModel",
    "Task",
    "count_parameters",
    "hf_folder",
    "load_config",
    "load_model",
    "load_tokenizer",
    "normalize_task",
    "packaged_model",
    "resolve_model",
    "task_of",
    "training_task",
]
