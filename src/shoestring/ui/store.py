"""What the dashboard reads: workspaces, their run records and artifacts, and lineage.

Read-only over the files the stages write (``manifest.json``, ``runs/*.json``, payloads),
re-read on every request (small files), so the pages always show what is on disk now.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoestring.core.artifact import MANIFEST
from shoestring.core.errors import ShoestringError
from shoestring.core.jsonl import read_jsonl as core_read_jsonl
from shoestring.core.runs import list_runs

__all__ = ["ArtifactView", "Store", "WorkspaceView", "lineage_graph"]

MAX_DEPTH = 3
"""How deep below a root folder to look for workspaces."""


@dataclass(frozen=True)
class ArtifactView:
    """One finished artifact as the dashboard shows it."""

    ws: str
    """Id of the workspace it lives in."""
    name: str
    """Folder name, ``<stage>-<hash16>``."""
    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", "?"))

    @property
    def stage(self) -> str:
        return str(self.manifest.get("stage", self.name.split("-")[0]))

    @property
    def hash(self) -> str:
        return str(self.manifest.get("hash", ""))

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.manifest.get("stats") or {})

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest.get("config") or {})

    @property
    def url(self) -> str:
        return f"/ws/{self.ws}/a/{self.name}"

    @property
    def started(self) -> str:
        return str((self.manifest.get("timings") or {}).get("started", ""))

    def json_file(self, name: str) -> Any:
        p = self.path / name
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

    def jsonl(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        return read_jsonl(self.path / name, limit)


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a torn last line (being written) is skipped."""
    return core_read_jsonl(path, limit=limit, missing_ok=True)


@dataclass(frozen=True)
class WorkspaceView:
    id: str
    """Short stable id for URLs (hash of the resolved path)."""
    root: Path
    label: str
    """Path as shown, relative to the dashboard's folder where possible."""

    def runs(self) -> list[dict[str, Any]]:
        return list_runs(self.root)

    def run(self, run_id: str) -> dict[str, Any]:
        for r in self.runs():
            if str(r.get("run_id")) == run_id:
                return r
        raise ShoestringError(f"no run '{run_id}' in workspace {self.label}")

    def artifacts(self) -> list[ArtifactView]:
        out = []
        adir = self.root / "artifacts"
        for d in sorted(adir.iterdir()) if adir.is_dir() else []:
            mf = d / MANIFEST
            if not mf.is_file():
                continue
            try:
                manifest = json.loads(mf.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                continue
            out.append(ArtifactView(self.id, d.name, d, manifest))
        return sorted(out, key=lambda a: a.started, reverse=True)

    def links(self) -> dict[str, str]:
        """Recipe stage id -> artifact folder name (the workspace's symlinks)."""
        out = {}
        for p in self.root.iterdir():
            if p.is_symlink() and not p.name.startswith("."):
                target = Path(os.readlink(p))
                if target.parts[:1] == ("artifacts",) and len(target.parts) == 2:
                    out[p.name] = target.name
        return out


def _ws_id(root: Path) -> str:
    return hashlib.sha1(str(root).encode()).hexdigest()[:10]


class Store:
    """The workspaces under the dashboard's root folders."""

    def __init__(self, roots: Iterable[str | Path], base: Path | None = None) -> None:
        self.base = (base or Path.cwd()).resolve()
        self.roots = [(self.base / Path(r)).resolve() for r in roots]

    def workspaces(self) -> list[WorkspaceView]:
        found: dict[Path, None] = {}
        for root in self.roots:
            for d in _walk(root, MAX_DEPTH):
                if (d / "artifacts").is_dir() or (d / "run.json").is_file():
                    found[d] = None
        return [WorkspaceView(_ws_id(d), d, self._label(d)) for d in sorted(found)]

    def _label(self, d: Path) -> str:
        try:
            return str(d.relative_to(self.base))
        except ValueError:
            return str(d)

    def workspace(self, ws_id: str) -> WorkspaceView:
        for ws in self.workspaces():
            if ws.id == ws_id:
                return ws
        raise ShoestringError(f"no workspace '{ws_id}' under {', '.join(map(str, self.roots))}")

    def workspace_of(self, root: Path) -> WorkspaceView:
        root = Path(root).resolve()
        return WorkspaceView(_ws_id(root), root, self._label(root))

    def artifact(self, ws_id: str, name: str) -> ArtifactView:
        ws = self.workspace(ws_id)
        if "/" in name or name.startswith("."):
            raise ShoestringError(f"bad artifact name '{name}'")
        d = ws.root / "artifacts" / name
        try:
            manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            raise ShoestringError(f"no artifact '{name}' in workspace {ws.label}") from None
        return ArtifactView(ws.id, name, d, manifest)

    def artifact_at(self, path: str | Path) -> ArtifactView | None:
        """The artifact at a folder path (as manifests record their inputs), if it is readable."""
        p = Path(path).resolve()
        try:
            manifest = json.loads((p / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return ArtifactView(_ws_id(p.parent.parent), p.name, p, manifest)

    def all_artifacts(self, kinds: tuple[str, ...] | None = None) -> list[ArtifactView]:
        out = [a for ws in self.workspaces() for a in ws.artifacts() if kinds is None or a.kind in kinds]
        return sorted(out, key=lambda a: a.started, reverse=True)

    def consumers(self, art: ArtifactView, kinds: tuple[str, ...] | None = None) -> list[ArtifactView]:
        """Artifacts (in any workspace) that took ``art`` as an input."""
        return [a for a in self.all_artifacts(kinds)
                if any(v.get("hash") == art.hash for v in (a.manifest.get("inputs") or {}).values())]


def _walk(root: Path, depth: int) -> Iterable[Path]:
    if not root.is_dir():
        return
    yield root
    if depth == 0:
        return
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return
    for child in children:
        if child.name in ("artifacts", "tmp", "work", "runs", "mlruns", "ui"):
            continue
        yield from _walk(child, depth - 1)


def lineage_graph(store: Store, arts: list[ArtifactView]) -> tuple[list[ArtifactView], list[tuple[str, str, str]]]:
    """The artifacts and every input they came from (transitively): nodes and (from, to, input name) edges by hash."""
    nodes: dict[str, ArtifactView] = {}
    edges: list[tuple[str, str, str]] = []
    todo = list(arts)
    while todo:
        a = todo.pop()
        if a.hash in nodes:
            continue
        nodes[a.hash] = a
        for field_name, ref in sorted((a.manifest.get("inputs") or {}).items()):
            edges.append((str(ref.get("hash")), a.hash, field_name))
            src = store.artifact_at(ref.get("path", ""))
            if src is not None and src.hash == ref.get("hash"):
                todo.append(src)
    known = set(nodes)
    return list(nodes.values()), [e for e in edges if e[0] in known]
