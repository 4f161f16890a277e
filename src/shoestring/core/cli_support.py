"""Build a Typer command from a stage config, so flags, YAML keys and ``--help`` agree.

Scalar fields (str, int, float, bool, Path, Literal, Enum, and lists of these) become
``--kebab-case`` flags whose help is the field's docstring. Nested fields are set in a
YAML file passed with ``--config``; flags override the file.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import typer
from pydantic.fields import FieldInfo
from rich.console import Console

from shoestring.core.config import StageConfig, load_yaml, parse_config
from shoestring.core.errors import NotBuiltError, ShoestringError
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace, input_fields

__all__ = ["add_stage_command", "config_from_flags", "flag_type", "not_built_command", "options_signature"]

C = TypeVar("C", bound=StageConfig)
RESERVED = {"config", "workspace", "force"}
_SCALARS = (str, int, float, bool, Path)


def flag_type(annotation: Any) -> tuple[Any, str] | None:
    """Map a field annotation to a Typer-compatible type (+ a help suffix), or None."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return flag_type(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return flag_type(args[0])
        if all(a in _SCALARS for a in args):
            return str, ""
        return None
    if origin is Literal:
        choices = get_args(annotation)
        return str, f" One of: {', '.join(map(str, choices))}."
    if origin in (list, tuple) and get_args(annotation):
        inner = flag_type(get_args(annotation)[0])
        if inner is None or get_origin(inner[0]) is not None:
            return None
        return list[inner[0]], " Repeat the flag for several values."  # type: ignore[valid-type]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation, ""
    if annotation in _SCALARS:
        return annotation, ""
    return None


def _field_help(field: FieldInfo, suffix: str) -> str:
    text = (field.description or "").strip()
    default = field.get_default(call_default_factory=True)
    if not field.is_required() and default not in (None, [], {}):
        d = default.value if isinstance(default, enum.Enum) else default
        text += f" \\[default: {d}]"  # escaped: Typer's rich help would read "[default: 8600]" as markup and drop it
    return (text + suffix).strip()


def _config_param(what: str) -> inspect.Parameter:
    return inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(None, "--config", "-c", help=f"YAML file with {what}; flags override it."),
        annotation=typing.Optional[Path],  # noqa: UP045 - Typer needs a runtime type
    )


def _field_params(cfg_cls: type[StageConfig], skip: set[str]) -> tuple[list[inspect.Parameter], dict[str, str]]:
    """One keyword-only ``--kebab-case`` option per scalar field not in ``skip`` (bools get a
    ``--no-`` form), and each field's flag."""
    params: list[inspect.Parameter] = []
    flag_names: dict[str, str] = {}
    for name, field in cfg_cls.model_fields.items():
        mapped = flag_type(field.annotation)
        if name in skip or mapped is None:
            continue
        ftype, suffix = mapped
        flag = "--" + name.replace("_", "-")
        flag_names[name] = flag
        decls = [f"{flag}/--no-{name.replace('_', '-')}"] if ftype is bool else [flag]
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, *decls, help=_field_help(field, suffix)),
                annotation=typing.Optional[ftype],  # noqa: UP045
            )
        )
    return params, flag_names


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _file_and_flags(
    cfg_file: Path | None, flags: dict[str, Any], verb: str, drop: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The keys of the ``--config`` file (less ``drop``) with the flags that were given on top."""
    data: dict[str, Any] = {}
    if cfg_file is not None:
        loaded = load_yaml(cfg_file)
        if loaded is not None and not isinstance(loaded, dict):
            raise ShoestringError(f"{cfg_file} must be a mapping of {verb} keys")
        data.update(loaded or {})
        for key in drop:
            data.pop(key, None)
    for key, value in flags.items():
        if value is None or (isinstance(value, list) and not value):
            continue
        data[key] = [_plain(v) for v in value] if isinstance(value, list) else _plain(value)
    return data


def options_signature(cfg_cls: type[StageConfig], leading: tuple[inspect.Parameter, ...] = ()) -> inspect.Signature:
    """``--config FILE`` plus one option per scalar field of a long-running verb's config (serve, ui).

    ``leading`` parameters (e.g. a positional argument) come first; their fields get no option.
    """
    fields, _ = _field_params(cfg_cls, skip={p.name for p in leading})
    return inspect.Signature([*leading, _config_param("these keys"), *fields])


def config_from_flags(cfg_cls: type[C], verb: str, kwargs: dict[str, Any], required: dict[str, str] | None = None) -> C:
    """The config of ``shoestring VERB`` from its ``--config`` file (kwargs["config"]) and flags (flags win).

    ``required``: key -> the one-line error when neither the file nor a flag sets it.
    """
    cfg_file = kwargs.pop("config", None)
    data = _file_and_flags(cfg_file, kwargs, verb)
    for key, message in (required or {}).items():
        if not data.get(key):
            raise ShoestringError(message)
    return parse_config(cfg_cls, data, f"shoestring {verb}", as_flags=cfg_file is None)


def _signature_for(cfg_cls: type[StageConfig]) -> tuple[inspect.Signature, dict[str, str]]:
    taken = RESERVED & set(cfg_cls.model_fields)
    if taken:
        raise TypeError(f"{cfg_cls.__name__}.{min(taken)}: '{min(taken)}' is reserved for the CLI")
    fields, flag_names = _field_params(cfg_cls, skip=set())
    params = [
        _config_param("this stage's keys"),
        inspect.Parameter(
            "workspace",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(Path(".shoestring"), "--workspace", "-w", help="Folder for artifacts."),
            annotation=Path,
        ),
        inspect.Parameter(
            "force",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(False, "--force", help="Re-run even if a cached artifact exists."),
            annotation=bool,
        ),
        *fields,
    ]
    return inspect.Signature(params), flag_names


def add_stage_command(app: typer.Typer, name: str, console: Console | None = None) -> None:
    """Register ``shoestring <name>`` built from the stage's config (or a not-built stub)."""
    try:
        stage = get_stage(name)
    except NotBuiltError as err:
        not_built_command(app, name, str(err))
        return
    console = console or Console(stderr=True, soft_wrap=True)
    sig, flag_names = _signature_for(stage.config)

    def command(**kwargs: Any) -> None:
        cfg_file = kwargs.pop("config")
        ws_root = kwargs.pop("workspace")
        force = kwargs.pop("force")
        data = _file_and_flags(cfg_file, kwargs, name, drop=("stage",))
        cfg = parse_config(stage.config, data, f"shoestring {name}", as_flags=cfg_file is None)
        ws = Workspace(ws_root, console=console)
        inputs = {}
        for fname, marker in input_fields(stage.config).items():
            ref = getattr(cfg, fname)
            if ref is None:
                continue
            art = ws.resolve_input(str(ref), marker, {}, f"shoestring {name} {flag_names.get(fname, fname)}")
            if art is not None:
                inputs[fname] = art
        result = ws.run(stage, cfg, inputs, force=force)
        ws.link(f"last-{name}", result.artifact)
        summarize = getattr(_stage_module(name), "summarize", None)
        if summarize is not None:
            summarize(result.artifact, Console())
        typer.echo(str(result.artifact.path))

    command.__signature__ = sig  # type: ignore[attr-defined]
    command.__name__ = name
    command.__doc__ = stage.summary
    app.command(name, help=stage.summary)(command)


def _stage_module(name: str) -> Any:
    import importlib

    from shoestring.core.registry import STAGES

    return importlib.import_module(STAGES[name])


def not_built_command(app: typer.Typer, name: str, message: str) -> None:
    """A verb that honestly says it is not built yet, and exits 2."""

    def command() -> None:
        raise NotBuiltError(message)

    command.__name__ = name
    app.command(name, help=f"(not built yet) {message}")(command)
