"""`shoestring evaluate`: task metrics with bootstrap CIs, paired comparison, fairness,
explanations, a self-contained HTML report and a drift reference.

Payload: ``metrics.json`` (every figure in the report), ``report.html`` (self-contained),
``reference.json`` (drift reference, see :mod:`shoestring.evaluate.drift`) and, for
language models, ``generations.jsonl``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoestring.core.errors import ShoestringError
from shoestring.evaluate.config import EvaluateConfig, resolve_task

if TYPE_CHECKING:
    from rich.console import Console

    from shoestring.core.artifact import Artifact
    from shoestring.core.workspace import StageContext

KIND = "evaluation"
SCHEMA_VERSION = 1
SUMMARY = "Evaluate a model: metrics with CIs, before/after comparison, fairness, explanations, HTML report."

CONFIG = EvaluateConfig


def build(cfg: EvaluateConfig, ctx: StageContext) -> dict[str, Any]:
    # Each evaluator is imported when chosen: they pull numpy/scikit-learn, and the CLI reads
    # this module for every `--help`.
    task = resolve_task(cfg, ctx)
    ctx.extra_manifest["task"] = task.value
    if task == "causal-lm":
        from shoestring.evaluate.causal import evaluate_causal_lm

        return evaluate_causal_lm(cfg, ctx)
    if task in ("classification", "tabular"):
        from shoestring.evaluate.classifier import evaluate_classifier

        return evaluate_classifier(cfg, ctx, task)
    if task == "masked-lm":
        from shoestring.evaluate.masked import evaluate_masked_lm

        return evaluate_masked_lm(cfg, ctx)
    if task == "recommendation":
        from shoestring.evaluate.recommend import evaluate_recommender

        return evaluate_recommender(cfg, ctx)
    if task == "embedding":
        from shoestring.evaluate.embedding import evaluate_embedding

        return evaluate_embedding(cfg, ctx)
    raise ShoestringError(f"evaluate: task '{task}' is not supported")


def summarize(artifact: Artifact, console: Console) -> None:
    """Print the headline figures and where the report is."""
    s = artifact.stats
    for line in s.get("headline", []):
        console.print(f"  {line}")
    console.print(f"  report: {artifact.path / 'report.html'}")
