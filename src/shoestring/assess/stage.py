"""`shoestring assess`: the data barrier and the compute bottleneck, quantified from artifacts.

Writes ``assessment.json``: for each wall its score in [0, 1], its three pillars, every
component (measurement, unit, normalisation, source), and the one change that lowers it
most with the predicted effect; plus the what-if plans (cost per GPU type) and the
optimisations the run already uses. Formulas: docs/ASSESS.md.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from shoestring.core.config import ArtifactInput, StageConfig
from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    from rich.console import Console

    from shoestring.core.artifact import Artifact
    from shoestring.core.workspace import StageContext

__all__ = ["CONFIG", "KIND", "SCHEMA_VERSION", "SUMMARY", "AssessConfig", "build", "summarize"]

KIND = "assessment"
SCHEMA_VERSION = 1
SUMMARY = "Score the data barrier and the compute bottleneck from a run's artifacts, and name the change that lowers each most."
DEFAULT_DEVICES = ["t4-16gb", "l4-24gb", "a10g-24gb", "a100-80gb", "h100-80gb"]


class AssessConfig(StageConfig):
    """Which artifacts to assess and the budgets the scores are normalised by (YAML keys = CLI flags)."""

    dataset: Annotated[str | None, ArtifactInput("dataset")] = None
    """Curated dataset artifact (recipe stage id or folder): the data barrier."""
    plan: Annotated[str | None, ArtifactInput("plan")] = None
    """Plan artifact: the compute bottleneck and the what-if plans."""
    model: Annotated[str | None, ArtifactInput("model")] = None
    """Trained model artifact: measured step time, data consumed, privacy budget."""
    compressed: Annotated[str | None, ArtifactInput("model")] = None
    """Compressed model artifact: its measured size and speed against its parent."""
    schedule: Annotated[str | None, ArtifactInput("plan")] = None
    """Plan artifact made with --jobs: the job queue's device utilisation."""
    what_if: bool = True
    """Re-run the planner for alternatives (other methods, precision, packing, catalogue GPUs) to price each change."""
    devices: list[str] = Field(default_factory=lambda: list(DEFAULT_DEVICES))
    """Catalogue GPUs the what-if plans try (cost per GPU type)."""
    time_budget_hours: float = Field(default=8.0, gt=0)
    """Hours of training the team can wait for one run; a run this long scores 1 on time."""
    cost_budget_usd: float = Field(default=100.0, gt=0)
    """Dollars the team can spend on one run; a run this expensive scores 1 on cost."""
    epsilon_max: float = Field(default=10.0, gt=0)
    """DP epsilon at which a shared model's privacy scores 1 (no meaningful guarantee)."""
    pii_scan_records: int = Field(default=20000, ge=0)
    """Released records re-scanned for residual PII (0 = skip the scan)."""


CONFIG = AssessConfig


def _json(art: Artifact, name: str) -> dict[str, Any] | None:
    p = art.path / name
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def _quarantine_by_source(art: Artifact) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    p = art.path / "quarantine.jsonl"
    if p.is_file():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                q = json.loads(line)
            except json.JSONDecodeError:
                continue
            out.setdefault(str(q.get("source", "?")), Counter())[str(q.get("reason", "?"))] += 1
    return out


def assess(cfg: AssessConfig, inputs: dict[str, Artifact], say: Any = None) -> dict[str, Any]:
    """The whole assessment as the ``assessment.json`` document."""
    from shoestring.assess.compute import ComputeFacts, applied_optimisations, assess_compute
    from shoestring.assess.data_barrier import DataFacts, assess_data, residual_pii

    ds, plan_art, model = inputs.get("dataset"), inputs.get("plan"), inputs.get("model")
    if ds is None and plan_art is None:
        raise ShoestringError("assess needs a --dataset (data barrier) or a --plan (compute bottleneck), or both")
    plan = _json(plan_art, "plan.json") if plan_art else None
    if plan_art is not None and plan is None:
        raise ShoestringError(f"{plan_art.path} has no plan.json (a --jobs plan goes to --schedule, not --plan)")
    train = model.stats if model else None
    out: dict[str, Any] = {"inputs": {k: str(a.path) for k, a in inputs.items()}}
    if ds is not None:
        card = _json(ds, "datacard.json") or {}
        release = _json(ds, "share/release_report.json")
        shared = ds.path / "share" if release is not None else ds.path  # the release is what a partner receives
        files = [shared / f"{s}.jsonl" for s in ("train", "validation", "test")]
        residual = residual_pii(files, cfg.pii_scan_records) if cfg.pii_scan_records else None
        facts = DataFacts(ds.stats, card, _quarantine_by_source(ds), residual, plan, train,
                          (model.manifest.get("privacy") if model else None), model is not None, cfg.epsilon_max,
                          release=release)
        out["data_barrier"] = assess_data(facts).as_dict()
    if plan is not None:
        schedule = _json(inputs["schedule"], "schedule.json") if "schedule" in inputs else None
        if "schedule" in inputs and schedule is None:
            raise ShoestringError(f"--schedule {inputs['schedule'].path} has no schedule.json; make it with plan --jobs")
        comp = [r for r in [_json(inputs["compressed"], "compression_report.json")] if r] if "compressed" in inputs else []
        facts_c = ComputeFacts(plan, train, schedule, comp, time_budget_hours=cfg.time_budget_hours,
                               cost_budget_usd=cfg.cost_budget_usd)
        if cfg.what_if:
            from shoestring.assess.whatif import plan_variants

            if say:
                say(f"what-if: re-planning {plan['model']} on {len(cfg.devices)} GPU types and other settings")
            wi = plan_variants(plan_art, ds, cfg.devices)  # type: ignore[arg-type]
            facts_c.baseline, facts_c.variants = wi.baseline, wi.variants
            out["what_if"] = {"seconds": round(wi.seconds, 2), "baseline": _plan_row({}, wi.baseline),
                              "variants": [_plan_row(v.change, v.plan) for v in wi.variants]}
        out["compute_bottleneck"] = assess_compute(facts_c).as_dict()
        out["applied_optimisations"] = applied_optimisations(facts_c)
    return out


def _plan_row(change: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    p = plan["predicted"]
    return {"change": change, "device": plan["device"]["name"], "method": plan["method"], "precision": plan["precision"],
            "fits": plan["fits"], "reason": plan.get("reason", ""), "micro_batch_size": plan["micro_batch_size"],
            "grad_accum": plan["grad_accum"], "activation_checkpointing": plan["activation_checkpointing"],
            "peak_memory_bytes": p["peak_memory_bytes"], "usable_bytes": plan["device"]["usable_bytes"],
            "hours": p["total_seconds"] / 3600, "usd": p["cost_usd"], "usd_per_hour": plan["device"]["usd_per_hour"]}


def build(cfg: AssessConfig, ctx: StageContext) -> dict[str, Any]:
    from shoestring.core.artifact import atomic_write_json

    doc = assess(cfg, ctx.inputs, say=ctx.console.print)
    atomic_write_json(ctx.out_dir / "assessment.json", doc)
    stats: dict[str, Any] = {}
    for key in ("data_barrier", "compute_bottleneck"):
        if key in doc:
            wall = doc[key]
            stats[key] = None if wall["score"] is None else round(wall["score"], 4)
            stats[f"{key}_pillars"] = {k: None if v is None else round(v, 4) for k, v in wall["pillars"].items()}
            best = wall["best_change"]
            stats[f"{key}_best_change"] = f"{best['action']}: {best['effect']}" if best else None
    return stats


def summarize(artifact: Artifact, console: Console) -> None:
    from rich.table import Table

    doc = json.loads(artifact.file("assessment.json").read_text())
    for key in ("data_barrier", "compute_bottleneck"):
        wall = doc.get(key)
        if not wall:
            continue
        score = "not measured" if wall["score"] is None else f"{wall['score']:.2f}"
        table = Table(title=f"{wall['name']}: {score} (0 = no obstacle, 1 = a wall)")
        for col in ("pillar", "component", "measured", "score"):
            table.add_column(col, justify="right" if col in ("measured", "score") else "left")
        for c in wall["components"]:
            measured = "-" if c["value"] is None else f"{c['value']:.3g} {c['unit']}"
            table.add_row(c["pillar"], c["label"], measured, "-" if c["score"] is None else f"{c['score']:.2f}")
        console.print(table)
        best = wall["best_change"]
        if best:
            console.print(f"[bold]change that lowers it most[/] ({best['basis']}): {best['action']} -> {best['effect']}; "
                          f"score {best['before']:.2f} -> {best['after']:.2f}")
