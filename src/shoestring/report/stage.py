"""The run report: one self-contained HTML page + ``summary.json`` over a recipe's artifacts.

It reads the manifests (and a few payload files) of the dataset, plan, model and
evaluation artifacts it is given, so it never recomputes anything: every figure on the page
is one a stage measured and recorded.
"""

from __future__ import annotations

from typing import Annotated, Any

from rich.console import Console
from rich.table import Table

from shoestring.core.artifact import Artifact, atomic_write_json, atomic_write_text
from shoestring.core.config import ArtifactInput, StageConfig
from shoestring.core.workspace import StageContext

__all__ = ["CONFIG", "KIND", "SCHEMA_VERSION", "SUMMARY", "ReportConfig", "build", "summarize"]

KIND = "report"
SCHEMA_VERSION = 1
SUMMARY = "One HTML report + summary.json over a run's dataset, plan, model and evaluation artifacts."


class ReportConfig(StageConfig):
    title: str = "Shoestring run report"
    """Heading of the report page."""
    dataset: Annotated[str | None, ArtifactInput("dataset")] = None
    """Curated dataset artifact (recipe stage id or folder)."""
    plan: Annotated[str | None, ArtifactInput("plan")] = None
    """Plan artifact (recipe stage id or folder)."""
    model: Annotated[str | None, ArtifactInput("model")] = None
    """Trained model artifact (recipe stage id or folder)."""
    evaluation: Annotated[str | None, ArtifactInput("evaluation")] = None
    """Evaluation artifact (recipe stage id or folder)."""


CONFIG = ReportConfig


def build(cfg: ReportConfig, ctx: StageContext) -> dict[str, Any]:
    from shoestring.report.render import collect_summary, render_html

    summary = collect_summary(cfg.title, ctx.inputs)
    atomic_write_json(ctx.out_dir / "summary.json", summary)
    atomic_write_text(ctx.out_dir / "report.html", render_html(cfg.title, summary, ctx.inputs))
    return {"sections": sorted(summary["sections"]), "headline": summary["headline"]}


def summarize(artifact: Artifact, console: Console) -> None:
    table = Table(title="Run summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in artifact.stats.get("headline", {}).items():
        table.add_row(key, str(value))
    console.print(table)
    console.print(f"report: {artifact.path / 'report.html'}")
