"""The workspace: where artifacts live, how stage hashes are computed, and caching.

Layout of a workspace folder::

    artifacts/<stage>-<hash16>/   finished artifacts (payload + manifest.json)
    tmp/<stage>-<hash16>.<pid>/   an artifact being written (renamed into artifacts/)
    work/<stage>-<hash16>/        durable scratch for resume (checkpoints, shards);
                                  survives a kill, removed once the artifact is committed
    <id> -> artifacts/...         a symlink per recipe stage id, for humans

Same stage + same config + same inputs (by content) = same hash = the stage is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from shoestring.core.artifact import (
    MANIFEST,
    Artifact,
    canonical_json,
    commit_artifact,
    hash_path,
    library_versions,
)
from shoestring.core.config import ArtifactInput, HashedPath, NotHashed, StageConfig, iter_marked_fields
from shoestring.core.errors import ShoestringError
from shoestring.core.processes import pid_alive

__all__ = ["Stage", "StageContext", "StageResult", "Workspace", "check_entry_name", "input_fields", "stage_hash"]

_ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_RESERVED = frozenset({"artifacts", "tmp", "work", "runs", "run.json"})


def check_entry_name(name: str, where: str) -> str:
    """``name`` if it can name an entry directly inside a workspace; else one line saying why not.

    Stage ids become ``<workspace>/<id>`` links: a ``/``, a ``..`` or an absolute path would
    point a link (and a later write through it) outside the workspace, so they are refused.
    """
    if not _ENTRY_NAME.fullmatch(name) or ".." in name:
        raise ShoestringError(
            f"{where}: '{name}' is not a plain name (letters, digits, '_', '-', '.'; no '/', '..' or absolute path); "
            "rename it: a stage id names a link inside the workspace, never a path"
        )
    if name in _RESERVED:
        raise ShoestringError(f"{where}: '{name}' is a folder of the workspace itself; pick another stage id")
    return name


def input_fields(cfg_cls: type[StageConfig]) -> dict[str, ArtifactInput]:
    """Top-level fields of a config that reference input artifacts."""
    out = {}
    for name, f in cfg_cls.model_fields.items():
        for m in f.metadata:
            if isinstance(m, ArtifactInput):
                out[name] = m
    return out


@dataclass(frozen=True)
class Stage:
    """A loaded stage (see :mod:`shoestring.core.registry`): its name, typed config and build function."""

    name: str
    kind: str
    config: type[StageConfig]
    schema_version: int
    summary: str
    build: Callable[[Any, StageContext], dict[str, Any]]
    stale: Callable[[Artifact], str | None] | None = None
    """Why a cached artifact of this stage must be rebuilt (None: reuse it); see :mod:`shoestring.core.registry`."""


@dataclass
class StageContext:
    """What a stage's ``build`` gets besides its config."""

    workspace: Workspace
    stage: Stage
    hash: str
    out_dir: Path
    """Temporary payload folder; renamed into place when ``build`` returns."""
    work_dir: Path
    """Durable scratch (checkpoints); survives a kill so the next run can resume."""
    inputs: dict[str, Artifact]
    """Input artifacts by config field name."""
    console: Console
    extra_manifest: dict[str, Any] = field(default_factory=dict)
    """Extra top-level manifest entries a stage wants recorded (e.g. ``predicted``)."""


@dataclass(frozen=True)
class StageResult:
    artifact: Artifact
    cached: bool
    seconds: float


def stage_hash(stage: Stage, cfg: StageConfig, inputs: Mapping[str, Artifact]) -> tuple[str, dict[str, Any]]:
    """Content hash of (stage, schema, config, input artifact hashes, hashed files).

    Returns the hex digest and the hashed payload (kept in the manifest for audit).
    """
    inp = input_fields(type(cfg))
    config = cfg.model_dump(mode="json")
    for name in inp:
        if name in inputs:
            config.pop(name, None)
    for dotted, _, _ in iter_marked_fields(cfg, NotHashed):
        _drop_dotted(config, dotted)
    files = {}
    for dotted, value, _ in iter_marked_fields(cfg, HashedPath):
        if value is None:
            continue
        p = Path(value)
        if not p.exists():
            raise ShoestringError(f"{stage.name}: {dotted}: file not found: {p}; fix the path")
        files[dotted] = hash_path(p)
    payload = {
        "stage": stage.name,
        "schema_version": stage.schema_version,
        "config": config,
        "inputs": {k: a.hash for k, a in sorted(inputs.items())},
        "files": files,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest(), payload


def _drop_dotted(tree: Any, dotted: str) -> None:
    """Delete ``a.b[2].c`` from a nested dict/list dump (no-op when a step is missing)."""
    steps = [p for p in re.split(r"\.|\[(\d+)\]", dotted) if p]
    node = tree
    for step in steps[:-1]:
        if isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        elif isinstance(node, dict) and step in node:
            node = node[step]
        else:
            return
    if isinstance(node, dict):
        node.pop(steps[-1], None)


class Workspace:
    """A folder of artifacts with content-hash caching."""

    def __init__(self, root: str | Path, console: Console | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.console = console or Console(stderr=True, soft_wrap=True)
        probe = self.root / "tmp" / f".write-probe-{os.getpid()}"
        try:
            for sub in ("artifacts", "tmp", "work"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            with contextlib.suppress(OSError):
                probe.unlink()  # a full disk creates it, then refuses its two bytes
            if err.errno in (errno.ENOSPC, errno.EDQUOT):  # writable, but full: another folder is not the only fix
                raise ShoestringError(
                    f"workspace {self.root} is full ({err.strerror}): free space on that disk (or pass --workspace "
                    "DIR on another) and re-run the same command"
                ) from None
            raise ShoestringError(
                f"workspace {self.root} is not writable ({err.strerror}); pass --workspace DIR with a writable folder"
            ) from None

    # -- lookup -----------------------------------------------------------------------
    def artifact_dir(self, stage: str, digest: str) -> Path:
        return self.root / "artifacts" / f"{stage}-{digest[:16]}"

    def find(self, stage: str, digest: str) -> Artifact | None:
        d = self.artifact_dir(stage, digest)
        return Artifact.load(d) if (d / MANIFEST).is_file() else None

    def resolve_input(
        self, ref: str, marker: ArtifactInput, refs: Mapping[str, Artifact], where: str
    ) -> Artifact | None:
        """Resolve a reference: a recipe stage id, or an artifact folder path.

        Returns None when the marker allows external values (e.g. a model hub id) and the
        reference is not an artifact.
        """
        if ref in refs:
            art = refs[ref]
        elif (Path(ref) / MANIFEST).is_file():
            art = Artifact.load(ref)
        elif marker.external_ok:
            return None
        else:
            known = ", ".join(refs) or "none yet"
            raise ShoestringError(
                f"{where}: '{ref}' is neither an earlier stage id ({known}) nor an artifact folder; fix the reference"
            )
        if marker.kind not in ("*", art.kind) and not (marker.kind == "model" and art.kind in MODEL_KINDS):
            raise ShoestringError(f"{where}: '{ref}' is a {art.kind} artifact, but a {marker.kind} artifact is needed")
        return art

    def link(self, name: str, art: Artifact) -> None:
        """Point ``<root>/<name>`` at an artifact (atomic symlink swap); ``name`` must be a plain name."""
        check_entry_name(name, "workspace link")
        link = self.root / name
        tmp = self.root / f".{name}.link-{os.getpid()}"
        try:
            for old in self.root.glob(f".{name}.link-*"):  # ours, or a killed run's between symlink and rename
                pid = old.name.rpartition("-")[2]
                if not (pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid), since=old)):
                    old.unlink()
            os.symlink(os.path.relpath(art.path, self.root), tmp)
            os.replace(tmp, link)
        except OSError:
            pass  # a link is a convenience; the artifact itself is what counts

    # -- running ----------------------------------------------------------------------
    def run(
        self,
        stage: Stage,
        cfg: StageConfig,
        inputs: Mapping[str, Artifact] | None = None,
        *,
        force: bool = False,
        label: str | None = None,
    ) -> StageResult:
        """Run ``stage`` unless an artifact with the same hash exists; return it."""
        inputs = dict(inputs or {})
        digest, hashed = stage_hash(stage, cfg, inputs)
        name = label or stage.name
        final = self.artifact_dir(stage.name, digest)
        if not force:
            found = self.find(stage.name, digest)
            why = stage.stale(found) if found is not None and stage.stale is not None else None
            if found is not None and why is None:
                # A run killed between committing the artifact and removing its scratch left work/ behind.
                shutil.rmtree(self.root / "work" / f"{stage.name}-{digest[:16]}", ignore_errors=True)
                self.console.print(f"[green]✓[/] {name:<10} [cyan]cached[/]  {found.path}")
                return StageResult(found, cached=True, seconds=0.0)
            if found is not None:
                self.console.print(f"[yellow]↻[/] {name:<10} cached artifact no longer holds: {why}")
                self._discard(final)
        elif final.exists():
            self._discard(final)

        key = f"{stage.name}-{digest[:16]}"
        self._clear_stale_tmp(key)
        work = self.root / "work" / key
        resumed = work.exists() and any(work.iterdir())
        work.mkdir(parents=True, exist_ok=True)  # before tmp/: a refused scratch folder leaves no empty tmp folder
        tmp = self.root / "tmp" / f"{key}.{os.getpid()}"
        tmp.mkdir(parents=True)
        note = " (resuming)" if resumed else ""
        self.console.print(f"[yellow]▶[/] {name:<10} running{note}")
        ctx = StageContext(self, stage, digest, tmp, work, inputs, self.console)
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        try:
            stats = stage.build(cfg, ctx) or {}
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, OSError) and err.filename is None:
                err.filename = str(self.root)  # a failed write or close names no file; say which disk filled
            raise
        seconds = time.perf_counter() - t0
        manifest = {
            "kind": stage.kind,
            "stage": stage.name,
            "schema_version": stage.schema_version,
            "hash": digest,
            "config": cfg.model_dump(mode="json"),
            "hashed": hashed,
            "inputs": {k: {"hash": a.hash, "kind": a.kind, "path": str(a.path)} for k, a in inputs.items()},
            "lineage": _lineage(inputs),
            "stats": stats,
            "timings": {
                "started": started.isoformat(),
                "seconds": round(seconds, 3),
                "resumed": resumed,
            },
            "versions": library_versions(),
            **ctx.extra_manifest,
        }
        art = commit_artifact(tmp, final, manifest)
        shutil.rmtree(work, ignore_errors=True)
        self.console.print(f"[green]✓[/] {name:<10} done in {seconds:.1f}s  {art.path}")
        return StageResult(art, cached=False, seconds=seconds)

    def _discard(self, final: Path) -> None:
        """Delete a finished artifact; renamed out of artifacts/ first, so a kill mid-delete leaves no
        half artifact visible (the folder in tmp/ is cleared by the next run of the same stage)."""
        trash = self.root / "tmp" / f"{final.name}.discard-{os.getpid()}"
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _clear_stale_tmp(self, key: str) -> None:
        for d in (self.root / "tmp").glob(f"{key}.*"):
            pid = d.suffix.lstrip(".")
            if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid), since=d):
                raise ShoestringError(
                    f"another shoestring process (pid {pid}) is writing {key}; wait for it or kill it"
                )
            shutil.rmtree(d, ignore_errors=True)


MODEL_KINDS = ("model", "compressed-model")


def _lineage(inputs: Mapping[str, Artifact]) -> list[str]:
    seen: list[str] = []
    for a in inputs.values():
        for h in [a.hash, *a.manifest.get("lineage", [])]:
            if h not in seen:
                seen.append(h)
    return seen
