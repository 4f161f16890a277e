"""Sequential recommendation (next-item prediction) for ``shoestring train``.

Task ``sequential-recommendation``: GRU4Rec-style and SASRec-style models (and a popularity
baseline) trained on behaviour logs - MovieLens-100k shipped by the recbole wheel, or a
curated event dataset with ``user_id``/``item_id``/``timestamp`` - and evaluated
leave-last-out with full ranking over the whole catalogue (no sampled negatives).

Artifact payload (``model/``): ``model.safetensors``, ``shoestring_model.json`` (architecture,
hyper-parameters, item ids), ``sequences.jsonl`` (each user's chronological items, so the
split can be rebuilt), ``users.jsonl`` (user attributes for group analyses), ``items.jsonl``
(item metadata). Load it with :func:`load_recommender`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from shoestring.core.artifact import atomic_write_json, atomic_write_text
from shoestring.core.config import StageConfig
from shoestring.core.errors import ShoestringError
from shoestring.core.jsonl import read_jsonl
from shoestring.train.tabular_fit import small_model_folder, small_model_task

if TYPE_CHECKING:
    import torch

    from shoestring.core.workspace import StageContext
    from shoestring.train.recsys_data import EventLog, SplitSequences

__all__ = [
    "RecsysOptions",
    "Recommender",
    "full_ranks",
    "load_recommender",
    "rank_metrics",
    "save_recommender",
    "train_recommender",
    "training_windows",
    "write_test_ranks",
]

MODEL_FORMAT = "shoestring.recsys"


class RecsysOptions(StageConfig):
    """Knobs specific to ``task: sequential-recommendation`` (common ones live in TrainConfig)."""

    architecture: Literal["sasrec", "gru", "popularity"] = "sasrec"
    """Model: 'sasrec' (causal self-attention), 'gru' (GRU4Rec-style recurrent) or 'popularity' (baseline)."""
    source: Literal["movielens-100k", "dataset"] = "dataset"
    """Where events come from: 'movielens-100k' (bundled with recbole) or 'dataset' (the input artifact of events)."""
    max_len: int = Field(50, ge=2)
    """Longest history fed to the model, in items (older events are cut; training uses all of them in windows)."""
    hidden_size: int = Field(64, ge=4)
    """Item embedding / hidden width, in units."""
    num_layers: int = Field(2, ge=1)
    """Transformer blocks (sasrec) or stacked GRU layers (gru)."""
    num_heads: int = Field(1, ge=1)
    """Attention heads per block (sasrec only)."""
    min_user_events: int = Field(5, ge=3)
    """Users with fewer events are skipped (they cannot give train/validation/test items)."""
    rating_threshold: float | None = None
    """If set, keep only events whose rating is >= this value (None keeps every interaction)."""
    user_field: str | None = None
    """Dataset column holding the user id (None: user_id or user)."""
    item_field: str | None = None
    """Dataset column holding the item id (None: item_id or item)."""
    time_field: str | None = None
    """Dataset column holding the event time, a number or ISO-8601 text (None: timestamp, time or ts)."""
    top_k: int = Field(10, ge=1)
    """Cut-off K for HR@K and NDCG@K."""
    baseline: bool = True
    """Also score a popularity baseline on the same split and report it beside the model."""


# ----------------------------------------------------------------------------- evaluation


def rank_metrics(ranks: Sequence[float], k: int) -> dict[str, float]:
    """HR@K, NDCG@K and MRR from 1-based ranks of the held-out item (one per user)."""
    n = max(1, len(ranks))
    return {
        f"hr@{k}": sum(1.0 for r in ranks if r <= k) / n,
        f"ndcg@{k}": sum(1.0 / math.log2(r + 1.0) for r in ranks if r <= k) / n,
        "mrr": sum(1.0 / r for r in ranks) / n,
        "users": float(len(ranks)),
    }


def _pad_left(histories: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    import torch

    out = torch.zeros(len(histories), max_len, dtype=torch.long)  # (B, L)
    for i, h in enumerate(histories):
        tail = list(h)[-max_len:]
        if tail:
            out[i, max_len - len(tail) :] = torch.tensor(tail, dtype=torch.long)
    return out


def full_ranks(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    cases: Sequence[tuple[Sequence[int], int]],
    max_len: int,
    exclude_seen: bool = True,
    batch_size: int = 256,
) -> list[float]:
    """1-based rank of each target among all items (ties share the mean rank).

    ``score_fn`` maps left-padded histories ``(B, L)`` to scores ``(B, N+1)`` (column 0 =
    padding). Items already in the history are excluded (except the target itself, which
    logs with repeat consumption may contain).
    """
    import torch

    ranks: list[float] = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        scores = score_fn(_pad_left([h for h, _ in chunk], max_len)).float().clone()  # (B, N+1)
        scores[:, 0] = float("-inf")
        targets = torch.tensor([t for _, t in chunk])
        if exclude_seen:
            longest = max(1, max(len(h) for h, _ in chunk))
            seen = torch.zeros(len(chunk), longest, dtype=torch.long)  # (B, H), 0 = padding column
            for i, (h, _) in enumerate(chunk):
                seen[i, : len(h)] = torch.as_tensor(list(h), dtype=torch.long)
            scores.scatter_(1, seen, float("-inf"))
        target_scores = scores.gather(1, targets[:, None])  # (B, 1)
        scores[torch.arange(len(chunk)), targets] = target_scores[:, 0]  # un-exclude the target
        greater = (scores > target_scores).sum(1).float()
        ties = (scores == target_scores).sum(1).float() - 1.0
        ranks.extend((1.0 + greater + 0.5 * ties).tolist())
    return ranks


def popularity_counts(split: SplitSequences) -> torch.Tensor:
    """Training-part interaction counts per item index ``(N+1,)``, padding = 0."""
    import torch

    counts = torch.zeros(split.num_items + 1)
    for i in range(len(split.users)):
        for item in split.train(i):
            counts[item] += 1
    return counts


# ------------------------------------------------------------------------------- training


def training_windows(split: SplitSequences, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training position as (input window, next-item targets), left-padded ``(W, L)``."""
    inputs, targets = [], []
    for i in range(len(split.users)):
        seq = split.train(i)
        src, tgt = seq[:-1], seq[1:]
        for end in range(len(src), 0, -max_len):
            lo = max(0, end - max_len)
            inputs.append(src[lo:end])
            targets.append(tgt[lo:end])
    if not inputs:
        raise ShoestringError("no user has >= 2 training events; use a larger log or lower recsys.min_user_events")
    return _pad_left(inputs, max_len), _pad_left(targets, max_len)


def _load_log(cfg: Any, ctx: StageContext) -> EventLog:
    from shoestring.train.recsys_data import load_event_artifact, load_movielens_100k

    opts: RecsysOptions = cfg.recsys
    if opts.source == "movielens-100k":
        return load_movielens_100k(opts.rating_threshold)
    art = ctx.inputs.get("dataset")
    if art is None:
        raise ShoestringError(
            "sequential-recommendation needs events: pass --dataset <curated event dataset> "
            "or set recsys.source: movielens-100k"
        )
    log = load_event_artifact(art.path, opts.user_field, opts.item_field, opts.time_field)
    if opts.rating_threshold is not None:
        log.events = [e for e in log.events if e.rating is None or e.rating >= opts.rating_threshold]
    return log


@small_model_task
def train_recommender(cfg: Any, ctx: StageContext) -> dict[str, Any]:
    """Train a next-item recommender from ``cfg.recsys``; write ``model/`` and return stats."""
    import torch
    from torch.utils.data import TensorDataset

    from shoestring.train.recsys_data import leave_last_out
    from shoestring.train.recsys_models import build_recommender_model
    from shoestring.train.tabular_fit import fit, fit_settings, write_loss_png, write_metrics_jsonl

    opts: RecsysOptions = cfg.recsys
    log = _load_log(cfg, ctx)
    split = leave_last_out(log, opts.min_user_events)
    k = opts.top_k
    hparams = {
        "max_len": opts.max_len,
        "hidden_size": opts.hidden_size,
        "num_layers": opts.num_layers,
        "num_heads": opts.num_heads,
        "dropout": cfg.dropout if cfg.dropout is not None else 0.2,
    }
    val_cases = [split.validation_case(i) for i in range(len(split.users))]
    test_cases = [split.test_case(i) for i in range(len(split.users))]
    counts = popularity_counts(split)

    def pop_scores(seqs: torch.Tensor) -> torch.Tensor:
        return counts.expand(seqs.shape[0], -1)

    stats: dict[str, Any] = {
        "architecture": opts.architecture,
        "source": log.source,
        "read": log.read,
        "quarantined": log.quarantined,
        "quarantine_reasons": log.quarantine_reasons,
        "events": len(log.events),
        "users": len(split.users),
        "skipped_users": split.skipped_users,
        "items": split.num_items,
        "split": "leave-last-out, full ranking",
    }
    if opts.baseline or opts.architecture == "popularity":
        pop = rank_metrics(full_ranks(pop_scores, test_cases, opts.max_len), k)
        stats["popularity_test"] = pop
    rows: list[dict[str, Any]] = []
    if opts.architecture == "popularity":
        state = {"counts": counts}
        stats["test"] = stats["popularity_test"]
        stats["validation"] = rank_metrics(full_ranks(pop_scores, val_cases, opts.max_len), k)
    else:
        if cfg.privacy is not None:
            raise ShoestringError(
                "DP-SGD is supported for classification and tabular tasks, not recommendation; drop privacy"
            )
        torch.manual_seed(cfg.seed)
        model = build_recommender_model(opts.architecture, split.num_items, hparams)
        inputs, targets = training_windows(split, opts.max_len)

        def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return m.loss(batch[0], batch[1])  # type: ignore[operator]

        def validate(m: torch.nn.Module) -> dict[str, float]:
            return rank_metrics(full_ranks(m.score_last, val_cases, opts.max_len), k)  # type: ignore[arg-type]

        settings = fit_settings(cfg, lr=1e-3, batch_size=128, patience=10, console=ctx.console, suggested_epochs=30)
        result = fit(
            model,
            TensorDataset(inputs, targets),
            loss_fn,
            validate,
            monitor=f"ndcg@{k}",
            higher_is_better=True,
            settings=settings,
            work_dir=ctx.work_dir,
            console=ctx.console,
        )
        model.eval()
        with torch.no_grad():
            ranks = full_ranks(model.score_last, test_cases, opts.max_len)
        stats["test"] = rank_metrics(ranks, k)
        stats.update(result.stats())
        stats.update(
            {
                "train_windows": int(inputs.shape[0]),
                "parameters": sum(p.numel() for p in model.parameters()),
                "settings": {
                    "lr": settings.lr,
                    "batch_size": settings.batch_size,
                    "epochs": settings.epochs,
                    "optimizer": settings.optimizer,
                    "patience": settings.patience,
                },
            }
        )
        state = {k2: v.detach().contiguous() for k2, v in model.state_dict().items()}
        rows = result.rows
        write_test_ranks(ctx.out_dir / "test_ranks.jsonl", split, ranks)
    save_recommender(ctx.out_dir / "model", opts.architecture, hparams, split, log, state)
    if rows:
        write_metrics_jsonl(ctx.out_dir / "metrics.jsonl", rows)
        write_loss_png(ctx.out_dir / "loss.png", rows, f"ndcg@{k}", f"{opts.architecture} on {log.source}")
    else:
        write_metrics_jsonl(
            ctx.out_dir / "metrics.jsonl", [{"epoch": 0, **{f"val_{a}": b for a, b in stats["validation"].items()}}]
        )
    ctx.extra_manifest["task"] = "sequential-recommendation"
    return stats


def write_test_ranks(path: Path, split: SplitSequences, ranks: Sequence[float]) -> None:
    """Per-user rank of the held-out test item, one JSON line each (``test_ranks.jsonl``)."""
    rows = [
        {
            "user_id": u,
            "test_item": split.item_ids[split.sequences[i][-1]],
            "rank": r,
            "history_len": len(split.sequences[i]) - 1,
        }
        for i, (u, r) in enumerate(zip(split.users, ranks, strict=True))
    ]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def save_recommender(
    folder: Path,
    arch: str,
    hparams: dict[str, Any],
    split: SplitSequences,
    log: EventLog,
    state: dict[str, torch.Tensor],
) -> None:
    """Write a recommender ``model/`` folder that :func:`load_recommender` reads (and evaluate/serve)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"))
    atomic_write_json(
        folder / "shoestring_model.json",
        {
            "format": MODEL_FORMAT,
            "version": 1,
            "task": "sequential-recommendation",
            "architecture": arch,
            "hparams": hparams,
            "num_items": split.num_items,
            "item_ids": split.item_ids[1:],
            "source": log.source,
        },
    )
    atomic_write_text(
        folder / "sequences.jsonl",
        "".join(
            json.dumps({"user_id": u, "items": [split.item_ids[j] for j in s]}) + "\n"
            for u, s in zip(split.users, split.sequences, strict=True)
        ),
    )
    atomic_write_text(
        folder / "users.jsonl", "".join(json.dumps({"user_id": u, **log.users.get(u, {})}) + "\n" for u in split.users)
    )
    known = set(split.item_ids[1:])
    atomic_write_text(
        folder / "items.jsonl",
        "".join(json.dumps({"item_id": i, **meta}) + "\n" for i, meta in log.items.items() if i in known),
    )


# -------------------------------------------------------------------------------- loading


def _model_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return read_jsonl(path, strict=True, fix="re-run training")


class Recommender:
    """A trained next-item recommender, ready to score histories of original item ids."""

    def __init__(self, folder: Path) -> None:
        from safetensors.torch import load_file

        from shoestring.train.recsys_models import build_recommender_model

        meta = json.loads((folder / "shoestring_model.json").read_text())
        if meta.get("format") != MODEL_FORMAT:
            raise ShoestringError(f"{folder} is not a Shoestring recommender (format {meta.get('format')!r})")
        self.architecture: str = meta["architecture"]
        self.hparams: dict[str, Any] = meta["hparams"]
        self.max_len: int = int(self.hparams["max_len"])
        self.item_ids: list[str] = list(meta["item_ids"])
        """Column j of :meth:`score_next` is ``item_ids[j]``."""
        self.index = {item: j + 1 for j, item in enumerate(self.item_ids)}
        state = load_file(str(folder / "model.safetensors"))
        self.model: torch.nn.Module | None = None
        self.counts: torch.Tensor | None = None
        if self.architecture == "popularity":
            self.counts = state["counts"]
        else:
            self.model = build_recommender_model(self.architecture, len(self.item_ids), self.hparams)
            self.model.load_state_dict(state)
            self.model.eval()
        self.sequences = {r["user_id"]: r["items"] for r in _model_rows(folder / "sequences.jsonl")}
        """user id -> whole chronological item history seen at training time."""
        self.users = {
            r["user_id"]: {k: v for k, v in r.items() if k != "user_id"} for r in _model_rows(folder / "users.jsonl")
        }
        """user id -> attributes (MovieLens: age, gender, occupation, zip_code)."""
        self.items = {
            r["item_id"]: {k: v for k, v in r.items() if k != "item_id"} for r in _model_rows(folder / "items.jsonl")
        }
        """item id -> metadata (MovieLens: movie_title, release_year, class)."""

    def _encode(self, history: Sequence[Any]) -> list[int]:
        # Items unseen at training time carry no embedding; they are skipped.
        return [self.index[str(i)] for i in history if str(i) in self.index]

    def _scores(self, padded: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.no_grad():
            if self.counts is not None:
                return self.counts.expand(padded.shape[0], -1)
            assert self.model is not None
            return self.model.score_last(padded)  # type: ignore[operator]

    def score_next(self, histories: Sequence[Sequence[Any]]) -> torch.Tensor:
        """Next-item scores ``(B, num_items)`` for each history (oldest first); higher = more likely."""
        padded = _pad_left([self._encode(h) for h in histories], self.max_len)
        return self._scores(padded)[:, 1:]

    def recommend(self, history: Sequence[Any], k: int = 10, exclude_seen: bool = True) -> list[tuple[str, float]]:
        """Top-``k`` (item_id, score) to follow ``history`` (item ids, oldest first)."""
        import torch

        scores = self.score_next([history])[0].clone()  # (N,)
        if exclude_seen:
            seen = [self.index[str(i)] - 1 for i in history if str(i) in self.index]
            if seen:
                scores[torch.tensor(seen)] = float("-inf")
        k = min(k, int(torch.isfinite(scores).sum()))
        top = torch.topk(scores, k)
        return [(self.item_ids[j], float(s)) for s, j in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    def recommend_for_user(self, user_id: str, k: int = 10, exclude_seen: bool = True) -> list[tuple[str, float]]:
        """Top-``k`` for a user known from training, from their whole history."""
        if str(user_id) not in self.sequences:
            raise ShoestringError(f"unknown user {user_id!r}; pass the user's item history instead")
        return self.recommend(self.sequences[str(user_id)], k, exclude_seen)

    def test_cases(self) -> list[tuple[str, list[str], str]]:
        """Leave-last-out test cases as (user_id, history item ids, held-out item id)."""
        return [(u, s[:-1], s[-1]) for u, s in self.sequences.items() if len(s) >= 3]

    def evaluate(self, k: int = 10, users: Sequence[str] | None = None) -> dict[str, float]:
        """Full-ranking HR@K / NDCG@K / MRR on the test cases (optionally a subset of users)."""
        wanted = set(users) if users is not None else None
        cases = [
            (self._encode(h), self.index[t])
            for u, h, t in self.test_cases()
            if (wanted is None or u in wanted) and t in self.index
        ]
        return rank_metrics(full_ranks(self._scores, cases, self.max_len), k)


def load_recommender(artifact_path: str | Path) -> Recommender:
    """Load a trained recommender from a model artifact folder (or its ``model/`` folder)."""
    return Recommender(small_model_folder(artifact_path, "sequential-recommendation"))
