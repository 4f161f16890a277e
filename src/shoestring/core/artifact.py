"""Artifacts: a folder of payload files plus ``manifest.json``, written atomically.

A stage writes its payload into a temporary folder; :func:`commit_artifact` writes the
manifest last and renames the folder into place, so a crash at any point leaves either a
complete artifact or nothing (a stale temporary folder that the next run removes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from shoestring.core.errors import ShoestringError
from shoestring.core.processes import pid_alive

__all__ = [
    "MANIFEST",
    "Artifact",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "canonical_json",
    "commit_artifact",
    "fsync_dir",
    "hash_path",
    "library_versions",
    "sweep_dead_temps",
]

MANIFEST = "manifest.json"
TRACKED_LIBRARIES = (
    "shoestring",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "safetensors",
    "pyarrow",
    "numpy",
    "pydantic",
)


def canonical_json(obj: Any) -> str:
    """Stable JSON (sorted keys, no spaces) used for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename survives power loss (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, *, folder: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` (``.<name>.tmp-<pid>``) for a writer that takes a file name
    (safetensors, matplotlib, the GGUF exporter, a compiler), or with ``folder`` an empty temporary
    folder; flushed and renamed to ``path`` when the block ends.

    On any failure in the block or the rename (a full disk, Ctrl-C, the writer's own error) the
    temporary is removed and ``path`` keeps its old content; an ``OSError`` without a file name is
    given ``path`` (a failed ``write`` names no file, and "no space left" without a path tells the
    user nothing to free). A folder replaces only an absent or empty ``path``: where another writer
    put one there first (a cache keyed by its source: the same content), that one is kept. A kill
    leaves the temporary; :func:`sweep_dead_temps` removes it once its writer is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)  # left by a killed process that had this pid
    try:
        if folder:
            tmp.mkdir()
        yield tmp
        if folder:
            fsync_dir(tmp)
        else:
            _fsync_file(tmp)
        try:
            os.replace(tmp, path)
        except OSError:
            if not (folder and path.is_dir()):
                raise
            _remove(tmp)  # another writer's folder is in place
    except BaseException as err:
        _remove(tmp)
        if isinstance(err, OSError) and err.filename is None:
            err.filename = str(path)
        raise
    fsync_dir(path.parent)


def sweep_dead_temps(folder: Path, name: str = "*") -> list[Path]:
    """Remove the temporaries :func:`atomic_path` left in ``folder`` for targets named like ``name``
    (a glob; ``*``: every target) whose writing process is gone: killed mid-write, nothing else would
    ever remove them. A live writer's (pid reuse checked) and this process's own are kept.
    Returns the paths removed."""
    removed = []
    for tmp in Path(folder).glob(f".{name}.tmp-*"):
        pid = tmp.name.rpartition(".tmp-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid), since=tmp):
            _remove(tmp)
            removed.append(tmp)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path`: a full disk or a kill leaves ``path``
    with its old content and, but for a kill, no temporary file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str, ensure_ascii=False) + "\n")


def hash_path(path: Path) -> str:
    """SHA-256 over a file's bytes, or over a folder's relative names and file bytes."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        _hash_file_into(h, path)
    elif path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode())
            h.update(b"\0")
            _hash_file_into(h, f)
    else:
        raise ShoestringError(f"cannot hash {path}: no such file or folder")
    return h.hexdigest()


def _hash_file_into(h: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape results, plus Python and the platform."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in TRACKED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass(frozen=True)
class Artifact:
    """A finished artifact on disk. ``manifest`` is the parsed ``manifest.json``."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> Artifact:
        p = Path(path)
        mf = p / MANIFEST
        if not mf.is_file():
            raise ShoestringError(
                f"{p} is not an artifact (no {MANIFEST}); pass an artifact folder written by shoestring"
            )
        try:
            manifest = json.loads(mf.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ShoestringError(f"{mf} is corrupt; delete {p} and re-run the stage") from None
        return cls(p, manifest)

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def hash(self) -> str:
        return str(self.manifest["hash"])

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.manifest.get("stats", {}))

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.manifest.get("config", {}))

    def file(self, name: str) -> Path:
        """Path of a payload file; a missing one is a one-line error."""
        p = self.path / name
        if not p.exists():
            raise ShoestringError(f"artifact {self.path} has no '{name}'; re-run the stage that made it")
        return p


def commit_artifact(tmp_dir: Path, final_dir: Path, manifest: dict[str, Any]) -> Artifact:
    """Write the manifest into ``tmp_dir`` and rename it to ``final_dir`` atomically.

    If that fails (a full disk while writing the manifest), ``tmp_dir`` is removed: a payload
    left in ``tmp/`` would keep holding the space the user is told to free.
    """
    try:
        atomic_write_json(tmp_dir / MANIFEST, manifest)
        fsync_dir(tmp_dir)
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp_dir, final_dir)
        except OSError:
            # Another run committed the same hash first: same hash means same content.
            if not (final_dir / MANIFEST).is_file():
                raise
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    shutil.rmtree(tmp_dir, ignore_errors=True)  # only left when another run committed first
    fsync_dir(final_dir.parent)
    return Artifact.load(final_dir)
