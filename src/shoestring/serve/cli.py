"""``shoestring serve MODEL``: flags generated from :class:`ServeConfig` (same keys as ``--config``)."""

from __future__ import annotations

import enum
import inspect
import typing
from pathlib import Path
from typing import Any

import typer

from shoestring.core.cli_support import flag_type
from shoestring.core.config import load_yaml, parse_config
from shoestring.core.errors import ShoestringError
from shoestring.serve.config import ServeConfig

__all__ = ["register"]

_HELP = "Serve a model over an OpenAI-compatible HTTP API with dynamic batching, a bounded queue, auth and metrics."


def _signature() -> inspect.Signature:
    params = [
        inspect.Parameter(
            "model",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=typer.Argument(None, help=ServeConfig.model_fields["model"].description, show_default=False),
            annotation=typing.Optional[str],  # noqa: UP045 - Typer needs a runtime type
        ),
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--config", "-c", help="YAML file with serve keys; flags override it."),
            annotation=typing.Optional[Path],  # noqa: UP045
        ),
    ]
    for name, field in ServeConfig.model_fields.items():
        mapped = flag_type(field.annotation)
        if name == "model" or mapped is None:
            continue
        ftype, suffix = mapped
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        shown = f" Default: {default}." if default not in (None, [], {}) else ""
        help_text = f"{field.description or ''}{shown}{suffix}".strip()
        decls = [f"{flag}/--no-{name.replace('_', '-')}"] if ftype is bool else [flag]
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, *decls, help=help_text),
                annotation=typing.Optional[ftype],  # noqa: UP045
            )
        )
    return inspect.Signature(params)


def serve_command(**kwargs: Any) -> None:
    from shoestring.serve.server import serve

    cfg_file = kwargs.pop("config")
    data: dict[str, Any] = {}
    if cfg_file is not None:
        loaded = load_yaml(cfg_file)
        if loaded is not None and not isinstance(loaded, dict):
            raise ShoestringError(f"{cfg_file} must be a mapping of serve keys")
        data.update(loaded or {})
    for key, value in kwargs.items():
        if value is None or (isinstance(value, list) and not value):
            continue
        data[key] = value.value if isinstance(value, enum.Enum) else value
    if not data.get("model"):
        raise ShoestringError("shoestring serve: pass the MODEL to serve (a packaged name, a folder or a model artifact)")
    serve(parse_config(ServeConfig, data, "shoestring serve", as_flags=cfg_file is None))


serve_command.__signature__ = _signature()  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    app.command("serve", help=_HELP)(serve_command)
