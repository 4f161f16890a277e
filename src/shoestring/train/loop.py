"""The language-model training loop: one function, readable in one sitting.

``train_language_model`` runs in every process of a run (1 locally; N under torchrun or
Ray Train, where ``torch.distributed`` is already initialised). Rank 0 writes checkpoints,
metrics and the final model; every rank computes on its own slice of each step's rows.

Determinism (what makes SIGKILL + resume reproduce the same loss curve): the data order of
epoch ``e`` is a permutation drawn from ``(seed, e)``; masked-LM masking uses a generator
seeded by ``(seed, step, micro-batch)``; dropout uses torch's global RNG, whose state is
saved in every checkpoint with the model, optimizer and step.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoestring.core.errors import ShoestringError
from shoestring.train import data as D
from shoestring.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from shoestring.train.config import TrainConfig
from shoestring.train.schedule import lr_at
from shoestring.train.settings import Settings
from shoestring.train.tracking import LIVE_ROWS, MetricsLog

if TYPE_CHECKING:
    import torch
    from rich.console import Console

__all__ = ["Paths", "train_language_model"]


@dataclass
class Paths:
    dataset: Path | None
    out_dir: Path
    work_dir: Path
    mlflow_default: str | None = None
    """file: URI of the workspace's MLflow store (used when tracking.mlflow_tracking_uri is unset)."""


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(values: list[float]) -> list[float]:
    """Sum floats across ranks (identity when not distributed)."""
    import torch
    import torch.distributed as dist

    if _dist()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def _load_data(cfg: TrainConfig, s: Settings, tok: Any, dataset: Path | None) -> dict[str, Any]:
    if cfg.text_source == "python-docs":
        train_recs, val_recs = D.python_docs_records()
        train_recs = train_recs[: cfg.max_examples] if cfg.max_examples else train_recs
        val_recs = val_recs[: cfg.val_max_examples]
    elif dataset is None:
        raise ShoestringError("train: no dataset; set `dataset:` to a curate stage id or a dataset artifact folder")
    else:
        train_recs = D.read_records(dataset / "train.jsonl", cfg.max_examples)
        if not train_recs:
            raise ShoestringError(f"{dataset}/train.jsonl has no records; check the curate stage's output")
        val_recs = D.read_records(dataset / "validation.jsonl", cfg.val_max_examples) if cfg.val_max_examples else []
    label_to_id = None
    if s.task == "classification":
        labels = sorted({str(r[cfg.label_field]) for r in train_recs if r.get(cfg.label_field) is not None})
        if len(labels) < 2:
            raise ShoestringError(
                f"classification needs at least 2 distinct '{cfg.label_field}' values in train.jsonl; set label_field"
            )
        label_to_id = {lab: i for i, lab in enumerate(labels)}
    kw = dict(
        task=s.task,
        seq_len=s.seq_len,
        text_field=cfg.text_field,
        messages_field=cfg.messages_field,
        label_field=cfg.label_field,
        label_to_id=label_to_id,
    )
    train_ex, skipped = D.build_examples(train_recs, tok, **kw)  # type: ignore[arg-type]
    val_ex, _ = D.build_examples(val_recs, tok, **kw)  # type: ignore[arg-type]
    if not train_ex:
        field = cfg.messages_field if s.task == "sft" else cfg.text_field
        raise ShoestringError(
            f"no usable training records for task {s.task} (field '{field}' missing or empty in all "
            f"{len(train_recs)} records); set {('messages_field' if s.task == 'sft' else 'text_field')}"
        )
    packed = cfg.packing and s.task in ("sft", "causal-lm")
    make_rows: Any = (lambda ex: D.pack_examples(ex, s.seq_len)) if packed else D.pad_rows
    if cfg.packing and s.task == "masked-lm":
        make_rows = lambda ex: D.concat_segments(ex, s.seq_len, tok.cls_token_id)  # noqa: E731
    return {
        "train": make_rows(train_ex),
        "val": make_rows(val_ex) if val_ex else [],
        "packed": packed,
        "records": len(train_recs),
        "skipped": skipped,
        "examples": len(train_ex),
        "label_to_id": label_to_id,
    }


def _optimizer(cfg: TrainConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    import torch

    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr, foreach=True)


def _autocast(s: Settings) -> Any:
    import contextlib

    import torch

    if s.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if s.precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda" if s.device == "cuda" else "cpu", dtype=dtype)


def _step_rows(rows: list[D.Row], perm: list[int], idx: int, per_step: int, rank: int, world: int) -> list[D.Row]:
    chosen = [rows[i] for i in perm[idx * per_step : (idx + 1) * per_step]]
    return chosen[rank::world]


def _to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if k != "real_tokens"}


def evaluate_loss(
    lossmod: torch.nn.Module, rows: list[D.Row], cfg: TrainConfig, s: Settings, tok: Any, packed: bool, pad_id: int
) -> float | None:
    """Mean validation loss per label token over this rank's share, summed across ranks."""
    import torch

    rank, world = _dist()
    mine = rows[rank::world]
    total, count = 0.0, 0.0
    lossmod.eval()
    with torch.no_grad(), _autocast(s):
        for i, mb in enumerate(D.iter_microbatches(mine, s.micro_batch_size)):
            batch = D.collate(mb, pad_id, packed=packed)
            if s.task == "masked-lm":
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * i + 17)
                D.mask_tokens(batch, tok, cfg.mlm_probability, gen)
            loss_sum, n = lossmod(**_to_device(batch, s.device))
            total += float(loss_sum)
            count += float(n)
    lossmod.train()
    total, count = _all_sum([total, count])
    return total / count if count else None


def train_language_model(cfg: TrainConfig, s: Settings, paths: Paths, console: Console, meter: Any) -> dict[str, Any]:
    """Train ``s.model`` for ``s.task`` and write the model artifact payload (rank 0).

    When distributed, every rank returns ``_weights_sha256`` (a digest of its final
    weights: ranks must agree); rank 0 also returns the stats.
    """
    import numpy as np
    import torch

    from shoestring.models import load_tokenizer
    from shoestring.train.fastpath import restore_attention
    from shoestring.train.modeling import LossModule, build_model, count_trainable, init_mlm_head
    from shoestring.train.output import make_progress, save_outputs, wrap_distributed

    rank, world = _dist()
    t_start = time.perf_counter()
    clock = {"eval_seconds": 0.0, "eval_passes": 0, "checkpoint_seconds": 0.0, "checkpoints": 0}
    """Wall time outside the optimizer steps (what a run's total adds to steps x step)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tok = load_tokenizer(s.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    pad_id = int(tok.pad_token_id)
    if s.task == "masked-lm" and tok.mask_token_id is None:
        raise ShoestringError(f"task masked-lm needs a tokenizer with a mask token; {s.model} has none")
    data = _load_data(cfg, s, tok, paths.dataset)
    rows, val_rows, packed = data["train"], data["val"], data["packed"]
    if len(rows) < world:
        raise ShoestringError(
            f"{len(rows)} training rows cannot feed {world} processes; use fewer devices or more data"
        )
    per_step = s.micro_batch_size * s.grad_accum * world
    # One process: the last, partial step is kept so every row is seen once per epoch. Several
    # processes: whole steps only, so no rank ever waits on a rank that has no batch.
    steps_per_epoch = max(1, len(rows) // per_step if world > 1 else math.ceil(len(rows) / per_step))
    total_steps = max(1, math.ceil(steps_per_epoch * (cfg.epochs if cfg.epochs is not None else 1.0)))
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(0.05 * total_steps)
    eval_every = cfg.eval_every or max(1, total_steps // 4)
    id2label = {i: lab for lab, i in data["label_to_id"].items()} if data["label_to_id"] else None

    model = build_model(
        s.model, s.task, s.method,
        from_scratch=cfg.from_scratch, config_overrides=cfg.config_overrides, dropout=cfg.dropout,
        lora=cfg.lora, trainable_layers=cfg.trainable_layers,
        num_labels=cfg.num_labels or (len(id2label) if id2label else None), id2label=id2label,
        device=s.device, seed=cfg.seed,
    )  # fmt: skip
    head_init: list[str] = []
    if s.task == "masked-lm" and getattr(_core_model(model), "shoestring_untrained_head", False):
        # Deterministic from the data, so a resumed run rebuilds the same start (its trained
        # values then come from the checkpoint).
        head_init = init_mlm_head(model, _token_counts(rows, len(tok), tok.all_special_ids))
        if rank == 0 and head_init:
            console.print(f"masked-lm head was untrained; initialised: {', '.join(head_init)}")
    if s.activation_checkpointing:
        core: Any = getattr(model, "get_base_model", lambda: model)()
        if hasattr(core, "activation_checkpointing_enable"):  # transformers >= 5 name
            core.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            core.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    attention_was, fast = _apply_fast_paths(cfg, s, model, packed) if cfg.fast_paths else (None, {})
    trainable, total_params = count_trainable(model)
    model.train()
    lossmod = LossModule.create(model, s.task)
    runner: Any = wrap_distributed(lossmod, cfg.strategy, s.device) if world > 1 else lossmod
    fsdp = world > 1 and cfg.strategy == "fsdp"
    if fsdp and rank == 0:
        console.print("[yellow]note:[/] FSDP runs write no resumable checkpoints (sharded optimizer state); use ddp")
    optimizer = _optimizer(cfg, runner if fsdp else model, s.lr)
    scaler = torch.amp.GradScaler("cuda") if s.precision == "fp16" else None

    ckpt_root = paths.work_dir / "checkpoints"
    state: dict[str, Any] = {"rows": [], "best_val": None, "bad_evals": 0, "train_seconds": 0.0, "tokens": 0}
    start_step = 0
    found = latest_checkpoint(ckpt_root)
    if found is not None:
        state = load_checkpoint(found, model, optimizer, s.device)
        start_step = int(state["step"])
        if rank == 0:
            console.print(f"[yellow]resuming[/] from checkpoint at step {start_step} ({found})")
    resumed_from = start_step
    log = None
    if rank == 0:
        tb = paths.out_dir / "tensorboard" if cfg.tracking.tensorboard else None
        ml = (cfg.tracking.mlflow_tracking_uri or paths.mlflow_default) if cfg.tracking.mlflow else None
        params = {"model": s.model, "task": s.task, "method": s.method, "lr": s.lr, "seq_len": s.seq_len,
                  "micro_batch_size": s.micro_batch_size, "grad_accum": s.grad_accum, "precision": s.precision}  # fmt: skip
        log = MetricsLog(
            state["rows"],
            tensorboard_dir=tb,
            mlflow_uri=ml,
            mlflow_experiment=cfg.tracking.mlflow_experiment,
            params=params,
            live_path=paths.work_dir / LIVE_ROWS,
            live_meta={"total_steps": total_steps, "max_minutes": cfg.max_minutes, "start_step": start_step},
        )

    step_times: list[float] = []
    tokens_seen = int(state["tokens"])
    train_seconds = float(state["train_seconds"])
    stopped_by = "epochs" if cfg.max_steps is None or total_steps < cfg.max_steps else "max_steps"
    progress = make_progress(console, enabled=cfg.progress and rank == 0)
    task_id = progress.add_task("train", total=total_steps, completed=start_step, tps="-")
    perm_epoch, perm = -1, list(range(len(rows)))
    last_val_step = -1
    step = start_step
    setup_seconds = time.perf_counter() - t_start
    with progress:
        while step < total_steps:
            t0 = time.perf_counter()
            epoch, idx = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:
                perm = [int(i) for i in np.random.default_rng([cfg.seed, epoch]).permutation(len(rows))]
                perm_epoch = epoch
            lr = lr_at(step, total_steps, warmup, s.lr, cfg.schedule)
            for g in optimizer.param_groups:
                g["lr"] = lr
            batches = [D.collate(mb, pad_id, packed=packed) for mb in
                       D.iter_microbatches(_step_rows(rows, perm, idx, per_step, rank, world), s.micro_batch_size)]  # fmt: skip
            if s.task == "masked-lm":
                for j, b in enumerate(batches):
                    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * step + j)
                    D.mask_tokens(b, tok, cfg.mlm_probability, gen)
            local_labels = sum(_label_count(b, s.task) for b in batches)
            label_tokens, real_tokens = _all_sum([local_labels, sum(float(b["real_tokens"]) for b in batches)])
            loss_total = 0.0
            for j, b in enumerate(batches):
                sync = j == len(batches) - 1
                ctx_sync = runner.no_sync() if world > 1 and not sync and hasattr(runner, "no_sync") else _null()
                with ctx_sync, _autocast(s):
                    loss_sum, _n = runner(**_to_device(b, s.device))
                # Divide by the token count of the whole step (all micro-batches, all ranks);
                # DDP averages gradients over ranks, so multiply back by the world size.
                loss = loss_sum / max(label_tokens, 1.0) * world
                (scaler.scale(loss) if scaler else loss).backward()
                loss_total += float(loss_sum.detach())
            if scaler:
                scaler.unscale_(optimizer)
            if cfg.max_grad_norm and fsdp:
                runner.clip_grad_norm_(cfg.max_grad_norm)  # the norm must span every rank's shard
            elif cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            (loss_total,) = _all_sum([loss_total])
            step += 1
            dt = time.perf_counter() - t0
            step_times.append(dt)
            train_seconds += dt
            tokens_seen += int(real_tokens)
            row: dict[str, Any] = {"step": step, "loss": loss_total / max(label_tokens, 1.0), "lr": lr,
                                   "tokens": tokens_seen, "step_seconds": round(dt, 4),
                                   "tokens_per_second": round(real_tokens / dt, 1)}  # fmt: skip
            stop = False
            if val_rows and (step % eval_every == 0 or step == total_steps):
                t_eval = time.perf_counter()
                val = evaluate_loss(runner, val_rows, cfg, s, tok, packed, pad_id)
                clock["eval_seconds"] += time.perf_counter() - t_eval
                clock["eval_passes"] += 1
                last_val_step = step
                if val is not None:
                    row["val_loss"] = val
                    best = state["best_val"]
                    if best is None or val < best - 1e-6:
                        state["best_val"], state["bad_evals"] = val, 0
                    else:
                        state["bad_evals"] += 1
                    if cfg.early_stopping_patience and state["bad_evals"] >= cfg.early_stopping_patience:
                        stop, stopped_by = True, "early_stopping"
            if log is not None and (step % cfg.log_every == 0 or "val_loss" in row or step == total_steps):
                log.log(row)
            if cfg.max_minutes is not None and train_seconds >= cfg.max_minutes * 60:
                stop, stopped_by = True, "max_minutes"
            (stop_f,) = _all_sum([1.0 if stop else 0.0])  # every rank stops if any rank must
            stop = stop_f > 0
            progress.update(task_id, advance=1, tps=f"{real_tokens / dt:,.0f}")
            if step % cfg.checkpoint_every == 0 and step < total_steps and not stop and not fsdp:
                t_ckpt = time.perf_counter()
                state.update(rows=log.rows if log else [], train_seconds=train_seconds, tokens=tokens_seen)
                if rank == 0:
                    save_checkpoint(ckpt_root, step, model, optimizer, state, cfg.keep_checkpoints)
                _barrier()
                clock["checkpoint_seconds"] += time.perf_counter() - t_ckpt
                clock["checkpoints"] += 1
            if stop:
                break
    if val_rows and last_val_step != step:
        t_eval = time.perf_counter()
        val = evaluate_loss(runner, val_rows, cfg, s, tok, packed, pad_id)
        clock["eval_seconds"] += time.perf_counter() - t_eval
        clock["eval_passes"] += 1
        if val is not None and log is not None:
            if log.rows and log.rows[-1]["step"] == step:
                log.rows[-1]["val_loss"] = val
            else:
                log.log({"step": step, "val_loss": val})
    with _full_params(runner, fsdp):  # collective under FSDP: every rank enters
        extra = {"_weights_sha256": _weights_digest(model)} if world > 1 else {}
        if rank == 0:
            assert log is not None
            restore_attention(model, attention_was)
            save_outputs(model, tok, s, data, log, paths.out_dir)
    if rank != 0:
        return extra
    assert log is not None
    losses = [r["loss"] for r in log.rows if "loss" in r]
    vals = [r["val_loss"] for r in log.rows if "val_loss" in r]
    stats: dict[str, Any] = {
        "task": s.task, "method": s.method, "model": s.model, "device": s.device, "precision": s.precision,
        "world_size": world, "strategy": cfg.strategy if world > 1 else "single",
        "steps": step, "total_steps_planned": total_steps, "stopped_by": stopped_by, "resumed_from_step": resumed_from,
        "records": data["records"], "records_skipped": data["skipped"], "examples": data["examples"],
        "rows": len(rows), "packed": packed, "seq_len": s.seq_len, "micro_batch_size": s.micro_batch_size,
        "grad_accum": s.grad_accum, "activation_checkpointing": s.activation_checkpointing, "lr": s.lr,
        "trainable_parameters": trainable, "parameters": total_params, "mlm_head_init": head_init or None,
        "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None,
        "train_loss_last10_mean": statistics.fmean(losses[-10:]) if losses else None,
        "val_loss": vals[-1] if vals else None, "best_val_loss": min(vals) if vals else None,
        "tokens": tokens_seen, "train_seconds": round(train_seconds, 3),
        "tokens_per_second": round(tokens_seen / train_seconds, 1) if train_seconds else None,
        "step_seconds": round(statistics.median(step_times), 4) if step_times else None,
        "peak_memory_bytes": int(meter.peak_bytes), "resident_peak_bytes": int(meter.peak_absolute_bytes),
        "rss_at_start_bytes": int(meter.baseline_bytes), "deviations": s.deviations, "fast_paths": fast or None,
        "setup_seconds": round(setup_seconds, 3), "val_rows": len(val_rows),
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in clock.items()},
        "run_seconds": round(time.perf_counter() - t_start, 3),
    }  # fmt: skip
    for key in ("peak_memory_bytes", "resident_peak_bytes", "step_seconds", "total_seconds", "cost_usd"):
        if key in s.predicted:
            stats[f"predicted_{key}"] = s.predicted[key]
    return {**stats, **extra}


def _apply_fast_paths(cfg: TrainConfig, s: Settings, model: Any, packed: bool) -> tuple[str | None, dict[str, Any]]:
    """Switch on the fast paths of :mod:`shoestring.train.fastpath` that apply to this run.

    Returns the attention implementation to restore before saving (None: unchanged) and what
    was switched on (for the stats).
    """
    import torch

    from shoestring.train.fastpath import fast_lora_dropout, hoist_frozen_casts, use_packed_attention

    done: dict[str, Any] = {}
    attention_was = None
    if packed and s.task in ("sft", "causal-lm") and not cfg.privacy:
        attention_was = use_packed_attention(model)
        done["packed_attention"] = attention_was is not None
    if s.method == "lora":
        if s.device == "cpu":
            done["lora_dropout_modules"] = fast_lora_dropout(model) or None
        if s.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if s.precision == "bf16" else torch.float16
            done["frozen_weights_cast_once_bytes_saved"] = hoist_frozen_casts(model, dtype) or None
    return attention_was, {k: v for k, v in done.items() if v}


def _core_model(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _token_counts(rows: list[D.Row], vocab: int, special: list[int]) -> torch.Tensor:
    """How often each token id occurs in the training rows (for the MLM head's bias prior).

    Special tokens ([CLS], [SEP], [PAD], [MASK]) are never prediction targets: count 0.
    """
    import torch

    counts = torch.zeros(vocab, dtype=torch.float64)
    for r in rows:
        ids = torch.tensor(r.input_ids, dtype=torch.long)
        counts += torch.bincount(ids[ids < vocab], minlength=vocab).double()[:vocab]
    counts[[i for i in special if i < vocab]] = 0.0
    return counts


def _full_params(runner: Any, fsdp: bool) -> Any:
    """Under FSDP, gather the full parameters (for saving and digests)."""
    if not fsdp:
        return _null()
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP.summon_full_params(runner, writeback=False)


def _weights_digest(model: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _label_count(batch: dict[str, torch.Tensor], task: str) -> float:
    """Number of targets the loss sums over in this micro-batch."""
    if task == "classification":
        return float(batch["class_labels"].numel())
    return float((batch["labels"] != D.IGNORE).sum())


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
