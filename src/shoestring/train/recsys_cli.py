"""`shoestring recommend`: top-K next items from a trained recommender artifact.

Wired by ``shoestring.train.cli.register`` calling :func:`register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shoestring.core.errors import ShoestringError

__all__ = ["recommend", "register"]


def recommend(
    model: Annotated[Path, typer.Argument(help="Model artifact folder from `shoestring train --task sequential-recommendation`.")],
    user: Annotated[str | None, typer.Option("--user", "-u", help="A user id seen at training time: recommend after their whole history.")] = None,
    history: Annotated[str | None, typer.Option("--history", help="Comma-separated item ids, oldest first (instead of --user).")] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="How many items to return.")] = 10,
    include_seen: Annotated[bool, typer.Option("--include-seen", help="Allow items already in the history.")] = False,
) -> None:
    """Recommend the next items for a user or an item history, with scores and titles."""
    from shoestring.train.recsys import load_recommender

    if (user is None) == (history is None):
        raise ShoestringError("give exactly one of --user USER_ID or --history ITEM,ITEM,...")
    rec = load_recommender(model)
    if user is not None:
        items = rec.recommend_for_user(user, k, exclude_seen=not include_seen)
        hist = rec.sequences[str(user)]
    else:
        hist = [h.strip() for h in (history or "").split(",") if h.strip()]
        unknown = [h for h in hist if h not in rec.index]
        if unknown:
            Console(stderr=True).print(f"[yellow]warning:[/] {len(unknown)} item(s) unknown to the model were skipped: {unknown[:5]}")
        items = rec.recommend(hist, k, exclude_seen=not include_seen)
    table = Table(title=f"{rec.architecture}: top {k} after {len(hist)} item(s)")
    for col in ("rank", "item_id", "score", "title"):
        table.add_column(col)
    for rank, (item, score) in enumerate(items, 1):
        meta = rec.items.get(item, {})
        table.add_row(str(rank), item, f"{score:.3f}", str(meta.get("movie_title", meta.get("title", ""))))
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the `recommend` verb to the CLI."""
    app.command("recommend")(recommend)
