"""Typed settings of `shoestring evaluate` (the YAML keys and CLI flags), and the two answers
every evaluator needs from them: which task, and which model to load."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from shoestring.core.config import ArtifactInput, StageConfig
from shoestring.models.tasks import Task, normalize_task

if TYPE_CHECKING:
    from shoestring.core.workspace import StageContext

__all__ = ["EvaluateConfig", "TaskName", "model_spec", "resolve_task"]

TaskName = Literal[
    "causal-lm", "sft", "masked-lm", "fill-mask", "classification", "tabular", "embedding", "recommendation"
]


class EvaluateConfig(StageConfig):
    model: Annotated[str, ArtifactInput("model", external_ok=True)]
    """Model to evaluate: a train/compress stage id, a model artifact folder, or any model spec
    (packaged name, Hugging Face folder, .gguf file, hub id)."""
    compare: Annotated[str | None, ArtifactInput("model", external_ok=True)] = None
    """Second model scored on the same records for a paired comparison with a significance test
    (e.g. the base model before fine-tuning, or the parent before compression)."""
    dataset: Annotated[str | None, ArtifactInput("dataset")] = None
    """Dataset artifact (stage id or folder) whose split is evaluated."""
    task: TaskName | None = None
    """Task; default: the model artifact's recorded task, else causal-lm."""
    split: str = "test"
    """Dataset split file to evaluate (<split>.jsonl)."""
    max_records: int = Field(200, ge=1)
    """Evaluate at most this many records (records)."""
    max_seq_len: int = Field(512, ge=8)
    """Truncate each record to this many tokens (tokens)."""
    token_budget: int = Field(2048, ge=64)
    """Tokens per forward batch, batch size x padded length (tokens); bounds memory."""
    prompts: list[str] = Field(default_factory=list)
    """Fixed prompts for generations, shown side by side for both models."""
    max_new_tokens: int = Field(48, ge=1)
    """Tokens generated per prompt (tokens)."""
    sampled: bool = True
    """Also produce one sampled generation per prompt (seeded), besides the greedy one."""
    temperature: float = Field(0.7, gt=0)
    """Sampling temperature for sampled generations."""
    top_p: float = Field(0.9, gt=0, le=1)
    """Nucleus sampling mass for sampled generations."""
    bootstrap: int = Field(1000, ge=100)
    """Bootstrap resamples for confidence intervals (resamples)."""
    confidence: float = Field(0.95, gt=0.5, lt=1)
    """Confidence level of every interval."""
    seed: int = 0
    """Seed for bootstrap, permutation test and sampling."""
    text_field: str = "text"
    """Record field holding the input text."""
    label_field: str = "label"
    """Record field holding the label (classification)."""
    sensitive: list[str] = Field(default_factory=list)
    """Record fields with sensitive attributes for the fairness section (e.g. gender)."""
    mitigate: bool = True
    """Run fairness mitigation (reweighing, threshold optimisation) and report before/after."""
    explain: int = Field(2, ge=0)
    """Records (or prompts) explained with Integrated Gradients; 0 turns explanations off."""
    ig_steps: int = Field(32, ge=4)
    """Starting Integrated Gradients steps; doubled until the completeness gap is in tolerance (steps)."""
    ig_max_steps: int = Field(512, ge=4)
    """Upper bound on Integrated Gradients steps (steps)."""
    ig_tolerance: float = Field(0.05, gt=0)
    """Completeness tolerance: |sum(attributions) - (f(x) - f(baseline))| / max(|f(x) - f(baseline)|, 1e-3)."""
    k: list[int] = Field(default_factory=lambda: [5, 10])
    """Cut-offs K for HR@K/NDCG@K (recommendation), top-K accuracy (fill-mask) and retrieval precision@K (embedding)."""
    explain_method: Literal["ig", "shap", "lime"] = "ig"
    """Explanation method: ig (Integrated Gradients, completeness-checked), shap (Kernel SHAP, additivity-checked) or
    lime (LIME, local-fit R^2 reported); shap/lime for classifiers and tabular models, language models use ig."""
    shap_samples: int = Field(512, ge=16)
    """Perturbed inputs scored per explained record by Kernel SHAP / LIME (forward passes)."""
    probe: bool = True
    """Run counterfactual template probes (group terms swapped) on text classifiers and language models."""
    probe_templates: list[str] = Field(default_factory=list)
    """Probe templates with a {term} slot; empty: the documented defaults (see shoestring.evaluate.probes)."""
    probe_groups: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    """Attribute -> group -> terms, aligned by position across groups; empty: the documented defaults."""
    probe_continuations: list[str] = Field(default_factory=list)
    """Language models: continuations whose log-probability after each filled template is compared; empty: defaults."""
    pooling: Literal["auto", "mean", "cls", "last"] = "auto"
    """Sentence-embedding pooling (embedding task): auto = mean for encoders, last token for decoders."""
    knn_k: int = Field(5, ge=1)
    """Neighbours voting in kNN classification (embedding task)."""
    reference_split: str = "train"
    """Labelled split the evaluated records are classified/retrieved against (embedding task); if absent,
    leave-one-out within the evaluated split."""
    max_reference_records: int = Field(2000, ge=1)
    """Read at most this many reference records (embedding task) (records)."""


def resolve_task(cfg: EvaluateConfig, ctx: StageContext) -> Task:
    """The evaluator to use: the config's task, else the model artifact's, else causal-lm."""
    found: Any = cfg.task
    if found is None and "model" in ctx.inputs:
        found = ctx.inputs["model"].manifest.get("task")
    return normalize_task(str(found) if found else None, who="evaluate")


def model_spec(field: str, cfg: EvaluateConfig, ctx: StageContext) -> str | None:
    """What to pass to a loader for ``model``/``compare``: the artifact folder, or the spec as written."""
    if field in ctx.inputs:
        return str(ctx.inputs[field].path)
    value = getattr(cfg, field)
    return None if value is None else str(value)
