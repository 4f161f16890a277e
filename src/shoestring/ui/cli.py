"""``shoestring ui``: the dashboard; flags generated from :class:`UiConfig` (same keys as ``--config``)."""

from __future__ import annotations

from typing import Any

import typer

from shoestring.core.cli_support import config_from_flags, options_signature
from shoestring.ui.config import UiConfig

__all__ = ["register"]

_HELP = "A live dashboard over runs, data, plans, models and assessments (offline; 127.0.0.1 by default)."


def ui_command(**kwargs: Any) -> None:
    from shoestring.ui.server import serve_ui

    serve_ui(config_from_flags(UiConfig, "ui", kwargs))


ui_command.__signature__ = options_signature(UiConfig)  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    app.command("ui", help=_HELP)(ui_command)
