"""The `shoestring` command: a thin layer over the library.

Stage verbs (curate, plan, train, evaluate, compress, export, report) are generated from
their typed configs; the modules in ``EXTRA_VERBS`` add verbs of their own through ``register(app)``.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import re
import sys
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shoestring.core.cli_support import add_stage_command
from shoestring.core.errors import ShoestringError
from shoestring.core.registry import STAGES

__all__ = ["app", "main"]

app = typer.Typer(
    name="shoestring",
    help="Raw data to a trained, compressed, evaluated and served model - and the compute bill before you pay it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True, soft_wrap=True)  # never break artifact paths

# Modules that add verbs of their own through `register(app)`: models list, fill-mask /
# embed / classify, recommend, serve, ui. A module listed here must exist; a failing import
# is a bug to see, not a verb to hide.
EXTRA_VERBS = (
    "models.cli",
    "train.cli",
    "train.recsys_cli",
    "serve.cli",
    "ui.cli",
)


@app.command("run")
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML file (see `shoestring recipes list`)."),
    workspace: Path | None = typer.Option(None, "--workspace", "-w", help="Override the recipe's workspace folder."),
    force: list[str] = typer.Option([], "--force", help="Stage id to re-run even if cached (repeatable)."),
    only: list[str] = typer.Option([], "--only", help="Run up to this stage id (repeatable)."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a recipe key: STAGE_ID.KEY=VALUE (YAML value; repeatable), e.g. train.max_steps=5."
    ),
    cluster: str | None = typer.Option(
        None, "--cluster", help="Run the heavy stages on a Ray cluster: auto, host:port or ray://host:port "
        "(local = this machine); overrides the recipe's `cluster.address`."
    ),
) -> None:
    """Run a recipe: every stage in order, reusing cached artifacts, resuming after a kill."""
    from shoestring.core.recipe import run_recipe

    results = run_recipe(
        recipe, workspace=workspace, force=set(force), only=set(only) or None, overrides=set_, cluster=cluster
    )
    cached = sum(r.cached for r in results.values())
    total = sum(r.seconds for r in results.values())
    err_console.print(f"[bold]{len(results)} stages[/] ({cached} cached) in {total:.1f}s")
    for sid, r in results.items():
        typer.echo(f"{sid}\t{r.artifact.path}")


recipes_app = typer.Typer(help="Shipped recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")


def recipe_dirs() -> list[Path]:
    """`./recipes` and the recipes folder of this source tree (for editable installs)."""
    here = Path(__file__).resolve().parents[2] / "recipes"
    out = [Path.cwd() / "recipes"]
    if here.resolve() != out[0].resolve():
        out.append(here)
    return [d for d in out if d.is_dir()]


@recipes_app.command("list")
def recipes_list() -> None:
    """List recipes with their description and stages."""
    import yaml

    table = Table(title="Recipes")
    for col in ("recipe", "stages", "description"):
        table.add_column(col)
    seen = set()
    for d in recipe_dirs():
        for f in sorted(d.glob("*.yaml")):
            if f.name in seen:
                continue
            seen.add(f.name)
            try:
                raw = yaml.safe_load(f.read_text()) or {}
                stages = ", ".join(raw.get("stages", {}))
                desc = str(raw.get("description", ""))
            except yaml.YAMLError:
                stages, desc = "?", "[red]malformed YAML[/]"
            table.add_row(str(f.relative_to(Path.cwd()) if f.is_relative_to(Path.cwd()) else f), stages, desc)
    Console().print(table)


for _name in STAGES:
    add_stage_command(app, _name, err_console)

for _pkg in EXTRA_VERBS:
    importlib.import_module(f"shoestring.{_pkg}").register(app)


def _click_exceptions() -> tuple[tuple[type[BaseException], ...], ...]:
    """(Exit, Abort, ClickException) from click and from Typer's vendored copy of it."""
    mods = [click.exceptions]
    with contextlib.suppress(ImportError):  # Typer >= 0.20 ships its own click under typer._click
        mods.append(importlib.import_module("typer._click.exceptions"))
    return tuple(tuple(getattr(m, n) for m in mods if hasattr(m, n)) for n in ("Exit", "Abort", "ClickException"))


_RERUN = "and re-run the same command; finished stages are kept"
_DISK_ERRORS = {
    errno.ENOSPC: ("no space left on device writing {path}", "free space on that disk (or point -w at another)"),
    errno.EDQUOT: ("disk quota exceeded writing {path}", "free space within your quota (or point -w at another disk)"),
    errno.EROFS: ("read-only file system at {path}", "make it writable (or point -w at a writable folder)"),
    errno.EACCES: ("permission denied on {path}", "make it writable for you (or point -w at a folder you own)"),
    errno.EPERM: ("operation not permitted on {path}", "make it writable for you (or point -w at a folder you own)"),
}


def disk_error_line(err: BaseException) -> str | None:
    """The one line for a full, read-only or forbidden disk (None: another error, a bug to show).

    An ``OSError`` says it by its errno; a Rust-backed writer (safetensors, tokenizers) only in
    its message, as "(os error 28)". A permission error names its path or it is not the user's
    disk but our bug.
    """
    if isinstance(err, OSError):
        code, path = err.errno, err.filename if err.filename is not None else err.filename2
    elif m := re.search(r"\(os error (\d+)\)", str(err)):
        code, path = int(m[1]), None
    else:
        return None
    if code not in _DISK_ERRORS or (path is None and code in (errno.EACCES, errno.EPERM)):
        return None
    what, fix = _DISK_ERRORS[code]
    return f"{what.format(path=path if path is not None else 'the workspace')}: {fix} {_RERUN}"


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    exit_types, abort_types, click_errors = _click_exceptions()
    # bitsandbytes (imported by transformers/peft) warns on every CPU import that an optional
    # hub-downloaded 4-bit kernel is missing; QLoRA needs CUDA anyway, so it is only noise.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        # Typer turns Ctrl-C into exit code 130 and, outside standalone mode, returns it.
        code = app(standalone_mode=False)
    except ShoestringError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except exit_types as ex:
        sys.exit(ex.exit_code)  # type: ignore[attr-defined]
    except abort_types:
        err_console.print("aborted; re-run the same command to resume from the last finished step")
        sys.exit(130)
    except click_errors as ex:
        ex.show()  # type: ignore[attr-defined]
        sys.exit(ex.exit_code)  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        code = 130
    except Exception as err:  # a full or read-only disk is the user's to fix; anything else is a bug to see
        line = disk_error_line(err)
        if line is None:
            raise
        err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    if isinstance(code, int) and code:
        if code == 130:
            err_console.print("interrupted; re-run the same command to resume from the last finished step")
        sys.exit(code)


if __name__ == "__main__":
    main()
