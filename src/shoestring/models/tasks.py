"""The task vocabulary: what a model does, and every spelling of it that recipes, manifests,
plans, model cards and other tools write.

One table serves every stage: ``train`` writes ``sft`` or ``sequential-recommendation`` into a
manifest, ``evaluate``/``compress``/``serve`` read it back as :class:`Task` members, and the
planner's ``chat`` or ``clm`` mean what the trainer means by them.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from shoestring.core.errors import ShoestringError

__all__ = ["HF_TASKS", "Task", "normalize_task", "task_of", "training_task"]


class Task(str, Enum):
    """What a model does; the value is the name written into manifests and shown to users."""

    CAUSAL_LM = "causal-lm"
    MASKED_LM = "masked-lm"
    CLASSIFICATION = "classification"
    EMBEDDING = "embedding"
    TABULAR = "tabular"
    RECOMMENDATION = "recommendation"

    def __str__(self) -> str:  # f-strings and str() give the name users type, on every Python
        return self.value


HF_TASKS: tuple[Task, ...] = (Task.CAUSAL_LM, Task.MASKED_LM, Task.CLASSIFICATION, Task.EMBEDDING)
"""Tasks whose models are Hugging Face transformers with an ``AutoModelFor...`` head."""

_SPELLINGS: dict[str, Task] = {
    # causal LM: pretraining and SFT train the same head
    "causal-lm": Task.CAUSAL_LM,
    "causal": Task.CAUSAL_LM,
    "clm": Task.CAUSAL_LM,
    "lm": Task.CAUSAL_LM,
    "pretrain": Task.CAUSAL_LM,
    "text-generation": Task.CAUSAL_LM,
    "sft": Task.CAUSAL_LM,
    "chat": Task.CAUSAL_LM,
    # masked LM
    "masked-lm": Task.MASKED_LM,
    "mlm": Task.MASKED_LM,
    "fill-mask": Task.MASKED_LM,
    # text classification
    "classification": Task.CLASSIFICATION,
    "sequence-classification": Task.CLASSIFICATION,
    "text-classification": Task.CLASSIFICATION,
    # sentence embeddings
    "embedding": Task.EMBEDDING,
    "embeddings": Task.EMBEDDING,
    "feature-extraction": Task.EMBEDDING,
    "sentence-embedding": Task.EMBEDDING,
    # tabular classifiers (train's MLP on numeric features)
    "tabular": Task.TABULAR,
    "tabular-classification": Task.TABULAR,
    # sequential recommendation from behaviour logs
    "recommendation": Task.RECOMMENDATION,
    "sequential-recommendation": Task.RECOMMENDATION,
    "recsys": Task.RECOMMENDATION,
}

_SFT = frozenset({"sft", "chat"})
# The trainer's own names (TrainConfig.task) where they differ from the Task's value.
_TRAINER_NAMES = {Task.TABULAR: "tabular-classification", Task.RECOMMENDATION: "sequential-recommendation"}


def task_of(name: str | Task | None) -> Task | None:
    """The :class:`Task` a spelling names (case-insensitive), or ``None`` when it names none."""
    if isinstance(name, Task):
        return name
    if not name:
        return None
    return _SPELLINGS.get(str(name).strip().lower())


def normalize_task(
    name: str | Task | None,
    *,
    allowed: Iterable[Task] | None = None,
    default: Task = Task.CAUSAL_LM,
    who: str = "shoestring",
) -> Task:
    """The :class:`Task` for ``name`` (``None`` = ``default``); a one-line error names the choices.

    ``allowed`` restricts the answer to what the caller can handle (compress and the model
    loader: :data:`HF_TASKS`); ``who`` starts the error line (the stage or verb).
    """
    task = default if name is None or name == "" else task_of(name)
    choices = tuple(allowed) if allowed is not None else tuple(Task)
    if task is None:
        raise ShoestringError(
            f"{who}: unknown task '{name}'; pass --task with one of {', '.join(t.value for t in choices)}"
        )
    if task not in choices:
        raise ShoestringError(
            f"{who} does not handle task '{name}' ({task.value}); it handles {', '.join(t.value for t in choices)}"
        )
    return task


def training_task(name: str) -> str:
    """The trainer's task name for a spelling (``chat`` -> ``sft``, ``clm`` -> ``causal-lm``,
    ``recsys`` -> ``sequential-recommendation``); an unknown spelling comes back as it is, for
    the trainer to reject with its own message."""
    key = str(name).strip().lower()
    if key in _SFT:
        return "sft"
    task = _SPELLINGS.get(key)
    if task is None:
        return name
    return _TRAINER_NAMES.get(task, task.value)
