"""Epoch loop for the small non-Hugging-Face networks (tabular MLPs, recommenders).

Shared by ``tabular-classification`` and ``sequential-recommendation``: mini-batch
gradient descent with warmup + decay, optional DP-SGD (Opacus), validation every epoch,
early stopping on a named validation metric, resumable checkpoints in ``ctx.work_dir``
(safetensors + JSON via :mod:`shoestring.train.checkpoint`), ``metrics.jsonl`` rows and a
loss-curve PNG. Common knobs come from :class:`~shoestring.train.config.TrainConfig`.

Determinism: data order and dropout are seeded from ``(seed, epoch)``, so a run killed and
resumed from an epoch-end checkpoint continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.core.artifact import atomic_path, atomic_write_bytes, atomic_write_text
from shoestring.core.errors import ShoestringError
from shoestring.train.schedule import lr_at

if TYPE_CHECKING:
    import torch
    from rich.console import Console
    from torch.utils.data import TensorDataset

    from shoestring.core.workspace import StageContext
    from shoestring.train.privacy import PrivacyOptions

__all__ = [
    "FitResult",
    "FitSettings",
    "fit",
    "fit_settings",
    "small_model_folder",
    "small_model_task",
    "torch_threads",
    "warn_unsupported",
    "write_loss_png",
    "write_metrics_jsonl",
]


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (default 1), restoring the previous count after.

    These models' ops are too small to amortise thread synchronisation: on a busy 2-core
    machine a digits MLP step took 0.48 s with 2 threads and 0.012 s with 1.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class FitSettings:
    """Resolved optimisation settings (units: steps are optimizer steps)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "constant"
    warmup_steps: int | None = None
    max_grad_norm: float | None = None
    max_steps: int | None = None
    max_minutes: float | None = None
    patience: int | None = None
    seed: int = 0
    keep_checkpoints: int = 2
    log_every: int = 1


def fit_settings(
    cfg: Any,
    *,
    lr: float,
    batch_size: int,
    patience: int | None,
    console: Console | None = None,
    suggested_epochs: int = 30,
) -> FitSettings:
    """Read the common TrainConfig knobs; task defaults fill the ones left unset (None).

    ``epochs`` unset means the task's ``suggested_epochs`` (an unset field is None, so it
    hashes differently from an explicit ``epochs: 1``); fractions round up. Early stopping
    (``patience``, on by default for these tasks) usually ends the run sooner.
    """
    explicit: set[str] = set(getattr(cfg, "model_fields_set", set()))
    epochs = cfg.epochs if cfg.epochs is not None else suggested_epochs
    if cfg.epochs is None and console is not None:
        console.print(
            f"epochs not set: training up to {suggested_epochs} epochs (the task default) "
            f"with early stopping (patience {cfg.early_stopping_patience or patience})"
        )
    return FitSettings(
        epochs=max(1, math.ceil(epochs)),
        batch_size=cfg.micro_batch_size or batch_size,
        lr=cfg.lr or lr,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        schedule=cfg.schedule if "schedule" in explicit else "constant",
        warmup_steps=cfg.warmup_steps,
        max_grad_norm=cfg.max_grad_norm if "max_grad_norm" in explicit else None,
        max_steps=cfg.max_steps,
        max_minutes=cfg.max_minutes,
        patience=cfg.early_stopping_patience or patience,
        seed=cfg.seed,
        keep_checkpoints=cfg.keep_checkpoints,
        log_every=cfg.log_every,
    )


def warn_unsupported(cfg: Any, console: Console | None) -> None:
    """Say which common TrainConfig knobs these small-model tasks do not use, if the user set them."""
    if console is None:
        return
    explicit: set[str] = set(getattr(cfg, "model_fields_set", set()))
    notes = []
    if "device" in explicit and cfg.device == "cuda":
        notes.append("device=cuda (these models train on CPU)")
    if "grad_accum" in explicit and (cfg.grad_accum or 1) > 1:
        notes.append("grad_accum (raise micro_batch_size instead)")
    if "executor" in explicit and cfg.executor != "local":
        notes.append(f"executor={cfg.executor} (single process)")
    if "precision" in explicit and cfg.precision not in ("auto", "fp32"):
        notes.append(f"precision={cfg.precision} (fp32)")
    if notes:
        console.print(f"[yellow]warning:[/] {cfg.task} ignores: {'; '.join(notes)}")


def small_model_task(
    train: Callable[[Any, StageContext], dict[str, Any]],
) -> Callable[[Any, StageContext], dict[str, Any]]:
    """A small-model trainer as the train stage runs it: first say which common knobs the task
    ignores (:func:`warn_unsupported`), then train with ``cfg.threads`` torch threads."""

    @functools.wraps(train)
    def run(cfg: Any, ctx: StageContext) -> dict[str, Any]:
        warn_unsupported(cfg, ctx.console)
        with torch_threads(cfg.threads):
            return train(cfg, ctx)

    return run


def small_model_folder(artifact_path: str | Path, task: str) -> Path:
    """The folder holding a small model's ``shoestring_model.json``: a model artifact's ``model/``
    or that folder itself; a one-line error naming ``task`` when neither holds one."""
    p = Path(artifact_path)
    for folder in (p / "model", p):
        if (folder / "shoestring_model.json").is_file():
            return folder
    raise ShoestringError(f"{p}: no model/shoestring_model.json; pass a {task} model artifact")


@dataclass
class FitResult:
    """What happened: metrics rows, best validation metrics and why training stopped."""

    rows: list[dict[str, Any]]
    best: dict[str, float]
    best_epoch: int
    epochs_run: int
    steps: int
    train_seconds: float
    stopped: str
    resumed_from_epoch: int | None = None
    privacy: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        """The run's stats as every small-model task reports them (seconds; ``stopped`` = why)."""
        return {
            "validation": self.best,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "steps": self.steps,
            "train_seconds": self.train_seconds,
            "stopped": self.stopped,
            "resumed_from_epoch": self.resumed_from_epoch,
        }


def _make_optimizer(model: torch.nn.Module, s: FitSettings) -> torch.optim.Optimizer:
    import torch

    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            # Biases and norm gains (1-D) are not regularised, as in LM practice.
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if s.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum)
    return torch.optim.AdamW(groups, lr=s.lr)


def fit(
    model: torch.nn.Module,
    train_data: TensorDataset,
    loss_fn: Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
    validate: Callable[[torch.nn.Module], dict[str, float]] | None,
    *,
    monitor: str,
    higher_is_better: bool,
    settings: FitSettings,
    work_dir: Path,
    privacy: PrivacyOptions | None = None,
    console: Console | None = None,
) -> FitResult:
    """Train ``model`` in place; on return it holds the best-validation weights.

    ``loss_fn(model, batch)`` returns the mean loss of a batch (a tuple of tensors from
    ``train_data``); ``validate(model)`` returns metrics including ``monitor``. With
    ``validate=None`` (a federated client's local epochs) nothing is validated, no epoch is
    selected and the model keeps its final weights.
    """
    import torch
    from safetensors.torch import load_file, save_file
    from torch.utils.data import DataLoader

    from shoestring.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    s = settings
    torch.manual_seed(s.seed)
    loader = DataLoader(
        train_data,
        batch_size=s.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(s.seed),
        drop_last=False,
    )
    optimizer = _make_optimizer(model, s)
    session = None
    if privacy is not None:
        from shoestring.train.privacy import make_private

        session = make_private(model, optimizer, loader, privacy, epochs=s.epochs)
        # Opacus' per-example hooks trip a harmless torch warning on every backward.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        model, optimizer, loader = session.model, session.optimizer, session.data_loader
    base_model = session.unwrapped if session is not None else model
    steps_per_epoch = max(1, len(loader))
    total = steps_per_epoch * s.epochs if s.max_steps is None else min(s.max_steps, steps_per_epoch * s.epochs)
    warmup = s.warmup_steps if s.warmup_steps is not None else (int(0.05 * total) if s.schedule != "constant" else 0)

    ckpt_root = work_dir / "checkpoints"
    best_path = work_dir / "best.safetensors"
    rows: list[dict[str, Any]] = []
    start_epoch, step, best_score, best_epoch, bad, elapsed = 0, 0, None, -1, 0, 0.0
    best: dict[str, float] = {}
    resumed = None
    last = latest_checkpoint(ckpt_root)
    if last is not None:
        state = load_checkpoint(last, model, optimizer, "cpu")
        start_epoch, step, rows = state["epoch"], state["step"], state["rows"]
        best_score, best_epoch, bad, elapsed, best = (
            state["best_score"],
            state["best_epoch"],
            state["bad"],
            state["elapsed"],
            state["best"],
        )
        if session is not None:
            from shoestring.train.privacy import restore_accountant

            restore_accountant(session, state.get("accountant", []))
        resumed = start_epoch
        if console is not None:
            console.print(f"resuming from epoch {start_epoch} (step {step}) in {last}")

    stopped = "epochs"
    t0 = time.perf_counter() - elapsed
    epoch = start_epoch
    while epoch < s.epochs and stopped == "epochs":
        # Per-epoch seeds make the data order and dropout masks independent of resumes.
        torch.manual_seed(s.seed * 1_000_003 + epoch)
        gen = torch.Generator().manual_seed(s.seed * 100_003 + epoch)
        sampler: Any = getattr(loader, "batch_sampler", None)
        if session is not None and hasattr(sampler, "generator"):
            sampler.generator = gen
        elif getattr(loader, "generator", None) is not None:
            loader.generator.manual_seed(s.seed * 100_003 + epoch)
        model.train()
        losses: list[float] = []
        for batch in loader:
            if batch[0].shape[0] == 0:  # Poisson sampling can draw an empty batch
                continue
            for g in optimizer.param_groups:
                g["lr"] = s.lr * lr_at(step, total, warmup, 1.0, s.schedule)  # the LM loop's schedule
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, tuple(batch))
            loss.backward()
            if session is None and s.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            if step % s.log_every == 0:
                rows.append({"step": step, "epoch": epoch, "loss": losses[-1], "lr": optimizer.param_groups[0]["lr"]})
            if s.max_steps is not None and step >= s.max_steps:
                stopped = "max_steps"
                break
            if s.max_minutes is not None and time.perf_counter() - t0 > 60 * s.max_minutes:
                stopped = "max_minutes"
                break
        if validate is None:
            rows.append({"step": step, "epoch": epoch + 1, "train_loss": sum(losses) / max(1, len(losses))})
            epoch += 1
            continue
        model.eval()
        with torch.no_grad():
            metrics = validate(base_model)
        score = metrics[monitor]
        row = {
            "step": step,
            "epoch": epoch + 1,
            "train_loss": sum(losses) / max(1, len(losses)),
            **{f"val_{k}": v for k, v in metrics.items()},
        }
        if session is not None:
            from shoestring.train.privacy import epsilon_spent

            row["epsilon"] = epsilon_spent(session)
        rows.append(row)
        improved = best_score is None or (score > best_score if higher_is_better else score < best_score)
        if improved:
            best_score, best_epoch, bad, best = score, epoch + 1, 0, dict(metrics)
            with atomic_path(best_path) as tmp:  # a half-written best model would be loaded at the end
                save_file({k: v.detach().contiguous().clone() for k, v in base_model.state_dict().items()}, str(tmp))
        else:
            bad += 1
            if s.patience is not None and bad >= s.patience:
                stopped = "early_stopping"
        if console is not None:
            console.print(f"epoch {epoch + 1}/{s.epochs}  loss {row['train_loss']:.4f}  val {monitor} {score:.4f}")
        epoch += 1
        state = {
            "epoch": epoch,
            "rows": rows,
            "best_score": best_score,
            "best_epoch": best_epoch,
            "bad": bad,
            "elapsed": time.perf_counter() - t0,
            "best": best,
        }
        if session is not None:
            from shoestring.train.privacy import accountant_history

            state["accountant"] = accountant_history(session)
        save_checkpoint(ckpt_root, step, model, optimizer, state, keep=s.keep_checkpoints)

    if best_path.is_file():
        base_model.load_state_dict(load_file(str(best_path)))
    result = FitResult(
        rows=rows,
        best=best,
        best_epoch=best_epoch,
        epochs_run=epoch,
        steps=step,
        train_seconds=time.perf_counter() - t0,
        stopped=stopped,
        resumed_from_epoch=resumed,
    )
    if session is not None:
        from shoestring.train.privacy import privacy_report

        result.privacy = privacy_report(session)
    return result


def write_metrics_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object per line (step rows have ``loss``, epoch rows ``train_loss``/``val_*``)."""
    atomic_write_text(path, "".join(json.dumps(r, default=float) + "\n" for r in rows))


def write_loss_png(path: Path, rows: list[dict[str, Any]], monitor: str, title: str) -> None:
    """Training loss per step and the monitored validation metric per epoch, as a PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in rows if "loss" in r]
    epochs = [r for r in rows if "train_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, color="tab:blue", label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    key = f"val_{monitor}"
    if epochs and key in epochs[0]:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in epochs], [r[key] for r in epochs], "o-", ms=3, color="tab:orange", label=key)
        ax2.set_ylabel(key)
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
