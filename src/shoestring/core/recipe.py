"""Recipes: YAML files that chain stages. ``shoestring run recipe.yaml``.

A recipe::

    name: quickstart
    description: raw data to an evaluated LoRA fine-tune
    workspace: .shoestring/quickstart     # relative to the current directory
    stages:
      data:                 # a stage id; the stage type defaults to the id
        stage: curate
        sources: [...]
      train:
        dataset: data       # an input: an earlier stage id or an artifact folder
        ...

Every stage config is validated before anything runs, so a typo in the last stage fails
in a second, not after an hour of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shoestring.core.artifact import Artifact
from shoestring.core.cluster import ClusterConfig, place_on_cluster, using_cluster
from shoestring.core.config import StageConfig, load_yaml, parse_config
from shoestring.core.errors import ShoestringError
from shoestring.core.registry import get_stage
from shoestring.core.runs import RunRecord
from shoestring.core.workspace import Stage, StageResult, Workspace, check_entry_name, input_fields

__all__ = ["PlannedStage", "Recipe", "apply_overrides", "load_recipe", "run_recipe"]


class Recipe(BaseModel):
    """The top level of a recipe file."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = "recipe"
    """Name shown in logs and reports."""
    description: str = ""
    """One line shown by `shoestring recipes list`."""
    workspace: str = ".shoestring"
    """Folder for artifacts, relative to the current directory."""
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    """Where the heavy stages run: `{address: local}` (this machine), `auto`, `host:port` or `ray://host:port`
    (a Ray cluster: curation on Ray Data, training on Ray Train); `--cluster` overrides it."""
    stages: dict[str, dict[str, Any]] = Field(min_length=1)
    """Stage id -> stage config (`stage:` names the stage type; defaults to the id)."""


@dataclass(frozen=True)
class PlannedStage:
    id: str
    stage: Stage
    config: StageConfig


def apply_overrides(raw: Any, overrides: list[str], where: str) -> Any:
    """Apply ``--set id.key=value`` overrides (value parsed as YAML) to a raw recipe."""
    if not overrides:
        return raw
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), dict):
        return raw  # validation reports the real problem
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ShoestringError(f"--set '{item}': expected STAGE_ID.KEY=VALUE, e.g. --set train.max_steps=5")
        sid = parts[0]
        if sid not in raw["stages"]:
            raise ShoestringError(f"--set '{item}': no stage id '{sid}' in {where}; ids: {', '.join(raw['stages'])}")
        node = raw["stages"][sid] = dict(raw["stages"][sid] or {})
        for part in parts[1:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            node[parts[-1]] = value
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, list[PlannedStage]]:
    """Parse and validate a recipe and every stage config in it (nothing runs)."""
    p = Path(path)
    raw = apply_overrides(load_yaml(p), overrides or [], str(p))
    recipe = parse_config(Recipe, raw, str(p))  # type: ignore[type-var]
    planned: list[PlannedStage] = []
    seen: set[str] = set()
    for sid, body in recipe.stages.items():
        where = f"{p}: stages.{sid}"
        check_entry_name(str(sid), f"{p}: stages")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ShoestringError(f"{where} must be a mapping of config keys, got {type(body).__name__}")
        body = dict(body)
        stage_name = str(body.pop("stage", sid))
        try:
            stage = get_stage(stage_name)
        except ShoestringError as err:
            raise ShoestringError(f"{where}: {err}") from None
        cfg = parse_config(stage.config, body, where)
        for fname, marker in input_fields(stage.config).items():
            ref = getattr(cfg, fname)
            if isinstance(ref, str) and ref not in seen and not marker.external_ok and not Path(ref).is_dir():
                known = ", ".join(sorted(seen)) or "none"
                hint = (
                    "it lives in another recipe's workspace: run that recipe first (the quickstart: `make demo`)"
                    if "/" in ref and ".shoestring" in Path(ref).parts
                    else "fix the reference"
                )
                raise ShoestringError(
                    f"{where}.{fname}: '{ref}' is neither an earlier stage id (earlier: {known}) "
                    f"nor an artifact folder; {hint}"
                )
        planned.append(PlannedStage(sid, stage, cfg))
        seen.add(sid)
    return recipe, planned


def run_recipe(
    path: str | Path,
    *,
    workspace: str | Path | None = None,
    force: set[str] | None = None,
    only: set[str] | None = None,
    overrides: list[str] | None = None,
    cluster: str | None = None,
) -> dict[str, StageResult]:
    """Run every stage of a recipe in order, reusing cached artifacts.

    ``force``: stage ids to re-run even when cached. ``only``: run up to and including
    these ids (earlier stages they need are still resolved from cache or run).
    ``overrides``: ``STAGE_ID.KEY=VALUE`` strings applied before validation. ``cluster``: an address
    that replaces the recipe's ``cluster.address``; on a cluster, stages that can run on Ray do.
    Progress (stage started / finished / failed with its one-line error) is written to
    ``<workspace>/runs/<run_id>.json`` and ``run.json`` as it happens (:mod:`shoestring.core.runs`).
    """
    recipe, planned = load_recipe(path, overrides)
    if cluster is not None:
        try:
            recipe.cluster = ClusterConfig(address=cluster)
        except ValidationError as err:
            raise ShoestringError(f"--cluster: {err.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    if recipe.cluster.enabled:
        planned = [PlannedStage(ps.id, ps.stage, place_on_cluster(ps.config)) for ps in planned]
    ws = Workspace(workspace or recipe.workspace)
    force = force or set()
    unknown = (force | (only or set())) - {ps.id for ps in planned}
    if unknown:
        raise ShoestringError(f"no stage id {sorted(unknown)} in {path}; ids: {', '.join(ps.id for ps in planned)}")
    with using_cluster(recipe.cluster, ws.console):
        return _run_planned(path, recipe, planned, ws, force, only, overrides)


def _run_planned(path: str | Path, recipe: Recipe, planned: list[PlannedStage], ws: Workspace, force: set[str],
                 only: set[str] | None, overrides: list[str] | None) -> dict[str, StageResult]:  # fmt: skip
    results: dict[str, StageResult] = {}
    arts: dict[str, Artifact] = {}
    last_needed = max((i for i, ps in enumerate(planned) if only is None or ps.id in only), default=-1)
    record = RunRecord(
        ws.root,
        str(path),
        recipe.name,
        {ps.id: ps.stage.name for ps in planned},
        overrides=list(overrides or []),
        force=sorted(force),
        only=sorted(only or []),
    )
    for ps in planned[: last_needed + 1]:
        record.stage_started(ps.id)
        try:
            inputs: dict[str, Artifact] = {}
            for fname, marker in input_fields(ps.stage.config).items():
                ref = getattr(ps.config, fname)
                if ref is None:
                    continue
                art = ws.resolve_input(str(ref), marker, arts, f"{path}: stages.{ps.id}.{fname}")
                if art is not None:
                    inputs[fname] = art
            res = ws.run(ps.stage, ps.config, inputs, force=ps.id in force, label=ps.id)
        except BaseException as err:
            record.stage_failed(ps.id, err)
            raise
        ws.link(ps.id, res.artifact)
        results[ps.id] = res
        arts[ps.id] = res.artifact
        record.stage_finished(ps.id, res.artifact.path, res.artifact.kind, res.cached, res.seconds)
    record.finished()
    return results
