"""``shoestring serve MODEL``: flags generated from :class:`ServeConfig` (same keys as ``--config``)."""

from __future__ import annotations

import inspect
import typing
from typing import Any

import typer

from shoestring.core.cli_support import config_from_flags, options_signature
from shoestring.serve.config import ServeConfig

__all__ = ["register"]

_HELP = "Serve a model over an OpenAI-compatible HTTP API with dynamic batching, a bounded queue, auth and metrics."

_MODEL = inspect.Parameter(
    "model",
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    default=typer.Argument(None, help=ServeConfig.model_fields["model"].description, show_default=False),
    annotation=typing.Optional[str],  # noqa: UP045 - Typer needs a runtime type
)


def serve_command(**kwargs: Any) -> None:
    from shoestring.serve.server import serve

    need = {"model": "shoestring serve: pass the MODEL to serve (a packaged name, a folder or a model artifact)"}
    serve(config_from_flags(ServeConfig, "serve", kwargs, required=need))


serve_command.__signature__ = options_signature(ServeConfig, (_MODEL,))  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    app.command("serve", help=_HELP)(serve_command)
