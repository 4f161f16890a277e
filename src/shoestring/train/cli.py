"""Extra verbs of the training package: `shoestring fill-mask` and `shoestring embed`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from shoestring.core.errors import ShoestringError

__all__ = ["register"]


def fill_mask_cmd(
    text: str = typer.Argument(..., help="Text with one [MASK] (or the model's own mask token)."),
    model: str = typer.Option(
        "all-minilm-l6-v2", "--model", "-m", help="Masked-LM model: packaged name, folder, hub id or model artifact."
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", help="How many candidate tokens to show."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Predict the masked word: top-k tokens with their probabilities."""
    from shoestring.models.inference import fill_mask

    preds = fill_mask(model, text, top_k)
    if as_json:
        typer.echo(json.dumps(preds, indent=2))
        return
    table = Table(title=f"fill-mask · {model}")
    for col in ("rank", "token", "probability", "sequence"):
        table.add_column(col)
    for i, p in enumerate(preds, 1):
        table.add_row(str(i), p["token"], f"{p['score']:.4f}", p["sequence"])
    Console().print(table)


def embed_cmd(
    texts: list[str] = typer.Argument(None, help="Texts to embed (or use --input)."),
    model: str = typer.Option(
        "all-minilm-l6-v2", "--model", "-m", help="Encoder or decoder: packaged name, folder, hub id or model artifact."
    ),
    input_file: Path | None = typer.Option(
        None, "--input", "-i", help="JSONL file; embeds each record's --text-field."
    ),
    text_field: str = typer.Option("text", "--text-field", help="Record field holding the text (with --input)."),
    output: Path = typer.Option(
        Path("embeddings.npy"), "--output", "-o", help="Where to write the (N, hidden) float32 array (.npy)."
    ),
    pooling: str = typer.Option(
        "auto", "--pooling", help="auto (mean for encoders, last token for decoders), mean, cls or last."
    ),
    layer: int = typer.Option(-1, "--layer", help="Hidden-state layer to pool (-1 = last, 0 = embeddings)."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="L2-normalise each vector."),
    tokens: bool = typer.Option(
        False, "--tokens", help="Export per-token hidden states (.npz, one array per text) instead of pooled vectors."
    ),
) -> None:
    """Export sentence embeddings or per-token hidden states of any encoder or decoder."""
    import numpy as np

    from shoestring.models.inference import embed, hidden_states

    items = list(texts or [])
    if input_file is not None:
        from shoestring.train.data import read_records

        if not input_file.is_file():
            raise ShoestringError(f"input file not found: {input_file}")
        items += [str(r[text_field]) for r in read_records(input_file) if isinstance(r.get(text_field), str)]
    if not items:
        raise ShoestringError("nothing to embed; pass texts as arguments or --input FILE.jsonl")
    if pooling not in ("auto", "mean", "cls", "last"):
        raise ShoestringError(f"--pooling must be auto, mean, cls or last (got {pooling})")
    output.parent.mkdir(parents=True, exist_ok=True)
    if tokens:
        arrays = hidden_states(model, items, layer)
        target = output.with_suffix(".npz")
        named: dict[str, Any] = {f"text_{i}": a for i, a in enumerate(arrays)}
        np.savez(target, **named)
        typer.echo(f"{target}\t{len(arrays)} texts, hidden {arrays[0].shape[1]}")
        return
    vecs = embed(model, items, pooling=pooling, layer=layer, normalize=normalize)  # type: ignore[arg-type]
    np.save(output, vecs.astype(np.float32))
    typer.echo(f"{output}\t{vecs.shape[0]}x{vecs.shape[1]}")


def register(app: typer.Typer) -> None:
    app.command("fill-mask", help="Predict a masked word with a BERT-style model (top-k tokens and probabilities).")(
        fill_mask_cmd
    )
    app.command("embed", help="Export sentence embeddings / hidden states of any encoder or decoder.")(embed_cmd)
