"""``plan.json``: the typed contract between ``shoestring plan`` (writes it) and ``shoestring train`` (reads it).

The planner writes one :class:`PlanDocument` per plan artifact with :func:`write_plan`; the
trainer reads it back with :func:`load_plan`. The fields the trainer acts on are typed and
validated here (a hand-edited or truncated file fails with one line naming the key); every
other section of the document (candidates, memory terms, calibration, cluster, ...) rides
along untyped and is written back unchanged, so the file stays the planner's full report.

Lives in ``core`` because plan and train sit side by side above it and must not import each
other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shoestring.core.errors import ShoestringError

__all__ = ["PLAN_FILE", "PlanDocument", "PlannedDevice", "PlannedLora", "PlannedCosts", "load_plan", "write_plan"]

PLAN_FILE = "plan.json"

# Earlier spellings of the frozen-layers method that plan.json files may still hold.
_METHOD_ALIASES = {"freeze": "frozen", "freeze-layers": "frozen"}


class _Section(BaseModel):
    """A plan.json object: typed where read, other keys kept as written."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


class PlannedLora(_Section):
    """The adapter shape the planner sized (method lora / qlora)."""

    rank: int = Field(ge=1)
    """LoRA rank r."""
    targets: list[str] = Field(default_factory=list)
    """Module names the adapter wraps (empty: every linear layer)."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the adapter's input."""


class PlannedDevice(_Section):
    """The device the plan was made for."""

    name: str = ""
    kind: str = ""
    """``cpu`` or ``cuda``."""
    memory_bytes: int | None = None
    usable_bytes: int | None = None
    """Memory the plan allowed itself on one device (bytes)."""


class PlannedCosts(_Section):
    """The planner's predictions for the chosen strategy (others, e.g. ``memory_terms``, ride along)."""

    peak_memory_bytes: int | None = Field(default=None, ge=0)
    """Predicted peak memory per device (bytes)."""
    step_seconds: float | None = Field(default=None, ge=0)
    """Predicted seconds per optimizer step."""
    total_seconds: float | None = Field(default=None, ge=0)
    cost_usd: float | None = Field(default=None, ge=0)


class PlanDocument(_Section):
    """What a plan promises fits: the strategy the trainer adopts, and its predicted costs."""

    model: str = Field(min_length=1)
    """Model spec the plan was made for (packaged name, folder, hub id)."""
    task: str
    """Planner task (causal-lm, sft, masked-lm, classification)."""
    method: str
    """full, lora, qlora or frozen."""
    seq_len: int = Field(ge=1)
    """Tokens per sequence."""
    micro_batch_size: int = Field(ge=1)
    """Sequences per forward pass per device."""
    grad_accum: int = Field(ge=1)
    """Micro-batches per optimizer step."""
    precision: str
    """As planned: fp32, bf16-mixed, fp16-mixed, int4 (qlora), ..."""
    activation_checkpointing: bool
    lora: PlannedLora | None = None
    trainable_layers: int | None = Field(default=None, ge=0)
    """method frozen: top transformer blocks that train."""
    device: PlannedDevice | None = None
    fits: bool = True
    predicted: PlannedCosts = Field(default_factory=PlannedCosts)
    run: dict[str, Any] | None = None
    """CPU plans: per-run terms (setup_seconds, eval_seconds_per_row, checkpoint_seconds)."""
    calibration: dict[str, Any] | None = None
    """CPU plans: the machine calibration the plan stood on (its ``fingerprint`` names the run log)."""
    feedback: dict[str, Any] | None = None
    """CPU plans: the job signature and uncorrected prediction a finished run files back."""

    @field_validator("method")
    @classmethod
    def _canonical_method(cls, v: str) -> str:
        return _METHOD_ALIASES.get(v, v)

    @field_validator("device", mode="before")
    @classmethod
    def _device_as_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    def as_json(self) -> dict[str, Any]:
        """The document as written to ``plan.json`` (keys as given, none added)."""
        return self.model_dump(mode="json", exclude_unset=True)


def write_plan(folder: Path, plan: PlanDocument | dict[str, Any]) -> PlanDocument:
    """Validate ``plan`` and write it to ``folder/plan.json`` atomically; returns the typed document.

    A planner that produces a document the trainer could not read fails here, not at train time.
    """
    from shoestring.core.artifact import atomic_write_json

    doc = plan if isinstance(plan, PlanDocument) else _validate(plan, "the planner's plan.json")
    atomic_write_json(Path(folder) / PLAN_FILE, doc.as_json())
    return doc


def load_plan(folder: Path) -> PlanDocument:
    """The plan artifact's ``plan.json`` as a :class:`PlanDocument`; one-line error when it is missing or malformed."""
    f = Path(folder) / PLAN_FILE
    if not f.is_file():
        raise ShoestringError(f"plan artifact {folder} has no plan.json; re-run `shoestring plan`")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ShoestringError(f"{f} is not valid JSON; re-run `shoestring plan`") from None
    if not isinstance(data, dict):
        raise ShoestringError(f"{f} must hold a JSON object; re-run `shoestring plan`")
    return _validate(data, str(f))


def _validate(data: dict[str, Any], where: str) -> PlanDocument:
    from shoestring.core.config import format_validation_error

    try:
        return PlanDocument.model_validate(data)
    except ValidationError as err:
        raise ShoestringError(f"{format_validation_error(err, where)}; re-run `shoestring plan`") from None
