"""Typed stage configs: one pydantic model is the YAML schema, the CLI flags and the API.

Field docs are attribute docstrings (the string right under a field); they become the
``--help`` text of the matching flag and the JSON-schema description.

Two markers tell the framework how a field takes part in caching:

* ``ArtifactInput(kind)`` - the field names an input artifact (a recipe stage id or an
  artifact folder). Its *content hash*, not its spelling, enters the stage hash.
* ``HashedPath()`` - the field is a file or folder whose *contents* enter the stage hash
  (raw data sources, a jobs file, ...), so editing the data invalidates the cache.
* ``NotHashed()`` - the field changes how a stage runs but not what it produces (worker
  count, executor, chunk size), so it is left out of the stage hash: rerunning with more
  workers reuses the cached artifact. Only mark fields whose output is proven identical.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from shoestring.core.errors import ShoestringError

__all__ = [
    "ArtifactInput",
    "HashedPath",
    "NotHashed",
    "StageConfig",
    "format_validation_error",
    "load_yaml",
    "parse_config",
    "iter_marked_fields",
]

C = TypeVar("C", bound="StageConfig")


@dataclass(frozen=True)
class ArtifactInput:
    """Marks a field that references an input artifact of the given kind.

    ``external_ok``: the value may also be something that is not an artifact (a model
    hub id, a local model folder, a packaged model name); then it is hashed as written.
    """

    kind: str
    external_ok: bool = False


@dataclass(frozen=True)
class HashedPath:
    """Marks a path field whose file (or folder) contents enter the stage hash."""


@dataclass(frozen=True)
class NotHashed:
    """Marks a field that does not change a stage's output; it stays out of the stage hash."""


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are errors, field docstrings are help."""

    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
        protected_namespaces=(),
    )


def iter_marked_fields(model: BaseModel, marker: type, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Yield ``(dotted_name, value, marker_instance)`` for fields carrying ``marker``.

    Walks nested models, lists and dicts so a list of sources with paths is covered.
    """
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        dotted = f"{prefix}{name}"
        found = [m for m in field.metadata if isinstance(m, marker)]
        if found:
            yield dotted, value, found[0]
            continue
        yield from _walk_value(value, marker, dotted)


def _walk_value(value: Any, marker: type, dotted: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(value, BaseModel):
        yield from iter_marked_fields(value, marker, dotted + ".")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk_value(item, marker, f"{dotted}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk_value(item, marker, f"{dotted}.{key}")


def format_validation_error(
    err: ValidationError, where: str, *, as_flags: bool = False, cls: type | None = None
) -> str:
    """Turn a pydantic error into one line that names the key (or flag) and the fix."""
    parts = []
    for e in err.errors()[:3]:
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc) if loc else "(root)"
        shown = f"--{key.replace('_', '-')}" if as_flags and len(loc) == 1 else key
        kind = e["type"]
        if kind == "extra_forbidden":
            valid = ""
            if cls is not None and len(loc) == 1:
                names = sorted(getattr(cls, "model_fields", {}))
                valid = f"; valid keys: {', '.join(names)}"
            parts.append(f"unknown key '{key}' in {where}{valid}")
        elif kind == "missing":
            parts.append(f"{where}: missing required {'flag' if as_flags else 'key'} '{shown}'")
        else:
            got = e.get("input")
            got_s = json.dumps(got, default=str)[:60] if not isinstance(got, Mapping) else "{...}"
            parts.append(f"{where}: {shown}: {e['msg']} (got {got_s})")
    more = len(err.errors()) - 3
    suffix = f" (+{more} more)" if more > 0 else ""
    return "; ".join(parts) + suffix


def parse_config(cls: type[C], data: Mapping[str, Any] | None, where: str, *, as_flags: bool = False) -> C:
    """Validate ``data`` into ``cls``; raise a one-line :class:`ShoestringError` on failure."""
    if data is not None and not isinstance(data, Mapping):
        raise ShoestringError(f"{where} must be a mapping of keys to values, got {type(data).__name__}")
    try:
        return cls.model_validate(dict(data or {}))
    except ValidationError as err:
        raise ShoestringError(format_validation_error(err, where, as_flags=as_flags, cls=cls)) from None


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file; missing or malformed files raise a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise ShoestringError(f"file not found: {p} (check the path; it is read relative to {Path.cwd()})")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ShoestringError(f"{p}: malformed YAML{at}: {problem}; fix the syntax and retry") from None
    except UnicodeDecodeError:
        raise ShoestringError(f"{p}: not UTF-8 text; save the recipe as UTF-8") from None
