"""Federated next-item recommendation: each client holds some users' whole histories.

Data and models are the training package's: MovieLens-100k from the recbole wheel or a curated
event log (:mod:`shoestring.train.recsys_data`), the leave-last-out split, GRU4Rec / SASRec
(:mod:`shoestring.train.recsys_models`) trained by the shared epoch loop
(:func:`shoestring.train.tabular_fit.fit`). The unit of partitioning is the user; the item
catalogue (ids and metadata, public in a real deployment) is shared by every client, so every
client's model scores the same items. The whole model travels.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shoestring.core.errors import ShoestringError
from shoestring.federate.partition import partition_units
from shoestring.federate.tasks import ClientUpdate, Job, Scores, State

if TYPE_CHECKING:
    import torch

    from shoestring.train.recsys_data import SplitSequences

__all__ = ["RecsysTask"]

DEFAULT_LABEL = "occupation"
"""User attribute skewed by ``partition: dirichlet`` when ``partition_label`` is unset (MovieLens)."""


class RecsysTask:
    """Users partitioned into clients; one recommender trained across them."""

    def __init__(self, job: Job) -> None:
        from shoestring.train.recsys_data import leave_last_out, load_event_artifact, load_movielens_100k

        self.job = job
        cfg = self.cfg = job.cfg()
        opts = self.opts = cfg.recsys
        if opts.architecture == "popularity":
            raise ShoestringError("federate: recsys.architecture popularity has nothing to train; use gru or sasrec")
        if opts.source == "movielens-100k":
            log = load_movielens_100k(opts.rating_threshold)
        elif job.dataset is None:
            raise ShoestringError("federate: recommendation needs `dataset:` (an event log) or recsys.source: movielens-100k")
        else:
            log = load_event_artifact(Path(job.dataset), opts.user_field, opts.item_field, opts.time_field)
            if opts.rating_threshold is not None:
                log.events = [e for e in log.events if e.rating is None or e.rating >= opts.rating_threshold]
        self.log = log
        self.split = split = leave_last_out(log, opts.min_user_events)
        attrs = [log.users.get(u, {}) for u in split.users]
        labels = column = None
        if cfg.partition == "dirichlet":
            name = cfg.partition_label or DEFAULT_LABEL
            labels = [a.get(name) for a in attrs]
            if all(v is None for v in labels):
                raise ShoestringError(f"federate: users have no '{name}' attribute to skew; set partition_label "
                                      "to a user attribute or use partition: iid")  # fmt: skip
        elif cfg.partition == "column":
            name = str(cfg.partition_column)
            column = [u if name in ("user", "user_id") else attrs[i].get(name) for i, u in enumerate(split.users)]
            if all(v is None for v in column):
                raise ShoestringError(f"federate: users have no '{name}' attribute; set partition_column to one they have")
        self.labels = labels
        self.part = partition_units(len(split.users), cfg.partition, cfg.clients, labels=labels, column_values=column,
                                    alpha=cfg.alpha, min_units=cfg.min_client_units, seed=cfg.partition_seed)  # fmt: skip
        self.clients = self.part.clients
        self.unit_client = np.asarray(self.part.assignment)
        self.k = opts.top_k
        self.hparams = {"max_len": opts.max_len, "hidden_size": opts.hidden_size, "num_layers": opts.num_layers,
                        "num_heads": opts.num_heads, "dropout": cfg.dropout if cfg.dropout is not None else 0.2}  # fmt: skip
        self._windows: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._initial: State | None = None

    # -- data ---------------------------------------------------------------------------
    def _subsplit(self, clients: list[int] | None) -> SplitSequences:
        from shoestring.train.recsys_data import SplitSequences

        keep = [i for i in range(len(self.split.users)) if clients is None or self.unit_client[i] in clients]
        return SplitSequences(self.split.item_ids, [self.split.users[i] for i in keep],
                              [self.split.sequences[i] for i in keep])  # fmt: skip

    def _train_windows(self, clients: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        from shoestring.train.recsys import training_windows

        key = tuple(clients) if clients is not None else (-1,)
        if key not in self._windows:
            self._windows[key] = training_windows(self._subsplit(clients), self.opts.max_len)
        return self._windows[key]

    def partition_summary(self) -> list[dict[str, Any]]:
        events = [len(s) for s in self.split.sequences]
        rows = self.part.counts(self.labels, events)
        for r in rows:
            r["users"] = r.pop("units")
            r["events"] = r.pop("records")
        return rows

    def client_examples(self, client: int) -> int:
        return int((self._train_windows([client])[1] != 0).sum())

    # -- model --------------------------------------------------------------------------
    def _model(self, state: State | None) -> torch.nn.Module:
        import torch

        from shoestring.train.recsys_models import build_recommender_model

        torch.manual_seed(self.cfg.seed)
        model = build_recommender_model(self.opts.architecture, self.split.num_items, self.hparams)
        if state is not None:
            model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
        return model

    @staticmethod
    def _state(model: torch.nn.Module) -> State:
        return {k: v.detach().cpu().numpy().copy() for k, v in sorted(model.state_dict().items())}

    def initial_state(self) -> State:
        if self._initial is None:
            self._initial = self._state(self._model(None))
        return dict(self._initial)  # read-only: callers copy before changing a tensor

    def size_bytes(self) -> dict[str, int]:
        n = sum(int(a.nbytes) for a in self.initial_state().values())
        return {"travelling": n, "full_model": n}

    def tensor_numels(self) -> list[int]:
        return [int(a.size) for a in self.initial_state().values()]

    def _settings(self, epochs: int, seed: int, patience: int | None = None) -> Any:
        from shoestring.train.tabular_fit import FitSettings

        lr = self.cfg.lr or (3e-3 if self.opts.architecture == "gru" else 1e-3)
        return FitSettings(epochs=epochs, batch_size=self.cfg.local_batch_size or 64, lr=lr,
                           optimizer=self.cfg.optimizer, seed=seed, patience=patience, keep_checkpoints=1)  # fmt: skip

    def train_client(self, client: int, state: State, *, seed: int, epochs: int, proximal_mu: float,
                     noise: float | None, delta: float | None) -> ClientUpdate:  # fmt: skip
        from torch.utils.data import TensorDataset

        from shoestring.train.tabular_fit import fit, torch_threads

        model = self._model(state)
        inputs, targets = self._train_windows([client])
        anchor = [p.detach().clone() for p in model.parameters()]

        def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            loss = m.loss(batch[0], batch[1])  # type: ignore[operator]
            if proximal_mu > 0:  # FedProx: stay near the global model
                loss = loss + 0.5 * proximal_mu * sum(((p - a) ** 2).sum() for p, a in zip(m.parameters(), anchor, strict=True))
            return loss

        with torch_threads(self.cfg.threads):
            result = fit(model, TensorDataset(inputs, targets), loss_fn, None, monitor="", higher_is_better=True,
                         settings=self._settings(epochs, seed), work_dir=Path(self.job.work_dir) / "no-checkpoints")  # fmt: skip
        losses = [r["train_loss"] for r in result.rows if "train_loss" in r]
        return ClientUpdate(self._state(model), int((targets != 0).sum()),
                            {"train-loss": float(losses[-1]) if losses else float("nan"), "steps": float(result.steps)})

    # -- evaluation ---------------------------------------------------------------------
    def _cases(self, split: str, clients: list[int] | None) -> tuple[list[tuple[list[int], int]], np.ndarray]:
        idx = [i for i in range(len(self.split.users)) if clients is None or self.unit_client[i] in clients]
        case = self.split.test_case if split == "test" else self.split.validation_case
        return [case(i) for i in idx], self.unit_client[idx]

    def _ranks(self, model: torch.nn.Module, cases: list[tuple[list[int], int]]) -> np.ndarray:
        import torch

        from shoestring.train.recsys import full_ranks
        from shoestring.train.tabular_fit import torch_threads

        model.eval()
        with torch.no_grad(), torch_threads(self.cfg.threads):
            return np.asarray(full_ranks(model.score_last, cases, self.opts.max_len))  # type: ignore[arg-type]

    def evaluate(self, state: State, split: str = "test", clients: list[int] | None = None) -> Scores:
        cases, owner = self._cases(split, clients)
        ranks = self._ranks(self._model(state), cases)
        k = self.k
        values = {f"ndcg@{k}": np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0),
                  f"hr@{k}": (ranks <= k).astype(np.float64), "mrr": 1.0 / ranks}  # fmt: skip
        return Scores(values, owner, f"ndcg@{k}")

    def train_baseline(self, clients: list[int] | None, *, epochs: int, patience: int, seed: int,
                       work_dir: Path) -> State:  # fmt: skip
        from torch.utils.data import TensorDataset

        from shoestring.train.recsys import rank_metrics
        from shoestring.train.tabular_fit import fit, torch_threads

        model = self._model(None)
        inputs, targets = self._train_windows(clients)
        val_cases, _ = self._cases("validation", clients)

        def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return m.loss(batch[0], batch[1])  # type: ignore[operator]

        def validate(m: torch.nn.Module) -> dict[str, float]:
            return rank_metrics(list(self._ranks(m, val_cases)), self.k)

        with torch_threads(self.cfg.threads):
            fit(model, TensorDataset(inputs, targets), loss_fn, validate, monitor=f"ndcg@{self.k}",
                higher_is_better=True, settings=self._settings(epochs, seed, patience), work_dir=work_dir)  # fmt: skip
        return self._state(model)

    # -- output -------------------------------------------------------------------------
    def save(self, state: State, out_dir: Path) -> dict[str, Any]:
        import torch

        from shoestring.train.recsys import save_recommender, write_test_ranks
        from shoestring.train.recsys_data import EventLog

        model = self._model(state)
        cases, _ = self._cases("test", None)
        ranks = self._ranks(model, cases)
        users = {u: {**self.log.users.get(u, {}), "client": self.clients[int(self.unit_client[i])]}
                 for i, u in enumerate(self.split.users)}  # fmt: skip
        log = EventLog(events=[], users=users, items=self.log.items, source=self.log.source)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
        save_recommender(out_dir / "model", self.opts.architecture, self.hparams, self.split, log, tensors)
        write_test_ranks(out_dir / "test_ranks.jsonl", self.split, list(ranks))
        return {"task": "sequential-recommendation"}
