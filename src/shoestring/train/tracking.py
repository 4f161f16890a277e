"""Training metrics: metrics.jsonl rows, a loss-curve PNG, TensorBoard and (optionally) MLflow.

Rows live in memory and are stored inside every checkpoint, so a resumed run continues the
exact same curve; the artifact's ``metrics.jsonl`` is written once at the end. While a run
trains, ``live_path`` (the stage's work folder ``metrics.live.jsonl``) gets each row as it is
logged, flushed at once, so ``shoestring ui`` can draw the curves live.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shoestring.core.artifact import atomic_path, atomic_write_text

__all__ = ["LIVE_META", "LIVE_ROWS", "MetricsLog", "plot_loss"]

LIVE_ROWS = "metrics.live.jsonl"
"""Rows appended as they are logged, in the train stage's work folder."""
LIVE_META = "metrics.live.meta.json"
"""``{"total_steps", "max_minutes", "start_step"}`` of the live run, beside :data:`LIVE_ROWS`."""


class MetricsLog:
    """Collects metric rows and mirrors them to TensorBoard / MLflow when enabled."""

    def __init__(
        self,
        rows: list[dict[str, Any]] | None = None,
        *,
        tensorboard_dir: Path | None = None,
        mlflow_uri: str | None = None,
        mlflow_experiment: str = "shoestring",
        run_name: str = "train",
        params: dict[str, Any] | None = None,
        live_path: Path | None = None,
        live_meta: dict[str, Any] | None = None,
    ) -> None:
        self.rows: list[dict[str, Any]] = list(rows or [])
        self._live = live_path
        if live_path is not None:  # a resumed run starts from its checkpoint's rows, not the killed run's tail
            atomic_write_text(live_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows))
            # total steps and time limit beside the rows, so a reader can give an ETA
            atomic_write_text(live_path.with_name(LIVE_META), json.dumps(live_meta or {}, sort_keys=True))
        self._tb: Any = None
        self._mlflow: Any = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(tensorboard_dir))
        if mlflow_uri is not None:
            self._mlflow = _start_mlflow(mlflow_uri, mlflow_experiment, run_name, params or {})
        for row in self.rows:  # replay earlier rows after a resume so every sink has the full curve
            self._mirror(row)

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._mirror(row)
        if self._live is not None:
            with open(self._live, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, sort_keys=True) + "\n")

    def _mirror(self, row: dict[str, Any]) -> None:
        step = int(row.get("step", 0))
        scalars = {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, int | float)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"train/{k}" if not k.startswith("val") else f"val/{k}", v, step)
        if self._mlflow is not None:
            self._mlflow.log_metrics(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()

    def write_jsonl(self, path: Path) -> None:
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows))


def _start_mlflow(uri: str, experiment: str, run_name: str, params: dict[str, Any]) -> Any:
    from shoestring.core.errors import ShoestringError

    try:
        import mlflow
    except ImportError:
        raise ShoestringError("tracking.mlflow needs mlflow; run `pip install 'shoestring[track]'`") from None
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    mlflow.start_run(run_name=run_name)
    flat = {k: (json.dumps(v) if isinstance(v, dict | list) else v) for k, v in params.items()}
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
    return mlflow


def plot_loss(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Train loss per step (and validation loss where measured) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    va = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if tr:
        ax.plot(*zip(*tr, strict=True), label="train loss", linewidth=1)
    if va:
        ax.plot(*zip(*va, strict=True), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
