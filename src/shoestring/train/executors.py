"""Where a language-model run executes: this process, torchrun processes, or Ray Train workers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoestring.core.errors import NotBuiltError
from shoestring.train.config import TrainConfig
from shoestring.train.loop import Paths, train_language_model
from shoestring.train.settings import Settings

if TYPE_CHECKING:
    from shoestring.core.workspace import StageContext

__all__ = ["run_training"]


def _paths(cfg: TrainConfig, ctx: StageContext) -> Paths:
    ds = ctx.inputs.get("dataset")
    return Paths(
        dataset=ds.path if ds is not None else None,
        out_dir=ctx.out_dir,
        work_dir=ctx.work_dir,
        mlflow_default=(ctx.workspace.root / "mlruns").as_uri(),
    )


def run_training(cfg: TrainConfig, s: Settings, ctx: StageContext, meter: Any) -> dict[str, Any]:
    """Run the loop with ``cfg.executor`` and return rank 0's stats."""
    if cfg.executor == "local" or (cfg.devices == 1 and cfg.executor != "ray"):
        return train_language_model(cfg, s, _paths(cfg, ctx), ctx.console, meter)
    raise NotBuiltError(f"executor {cfg.executor} is not built yet")
