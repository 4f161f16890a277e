"""Federated text tasks on Hugging Face models: classification and chat SFT, usually with LoRA.

The records of a curated dataset (all three splits) are the units: partitioned together, so
each client keeps its own training, validation and test records. Models come from
:func:`shoestring.train.modeling.build_model` (peft LoRA); with ``method: lora`` only the
trainable tensors - the adapters and, for classification, the head - travel and are averaged;
the frozen base is loaded by every client from the same files. Local training is the shared
epoch loop (:func:`shoestring.train.tabular_fit.fit`) - the one ``train``'s DP-SGD
classification uses - so client-side DP-SGD is Opacus with per-example positions, as there.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shoestring.core.errors import ShoestringError
from shoestring.federate.partition import partition_units
from shoestring.federate.tasks import ClientUpdate, Job, Scores, State

if TYPE_CHECKING:
    import torch

__all__ = ["ClassificationTask", "SFTTask"]

SPLITS = ("train", "validation", "test")


def _column(rec: dict[str, Any], name: str) -> Any:
    """A record's value of ``name``; ``source`` falls back to the curated id's ``source:`` prefix."""
    value = rec.get(name)
    if value is None and name == "source" and isinstance(rec.get("id"), str) and ":" in rec["id"]:
        return rec["id"].split(":", 1)[0]
    return value


class _TextTask:
    """Records -> clients, a base model built once per process, trainable tensors that travel."""

    hf_task = ""
    headline = ""
    higher_is_better = True

    def __init__(self, job: Job) -> None:
        from shoestring.train import data as D

        self.job = job
        cfg = self.cfg = job.cfg()
        if job.dataset is None:
            raise ShoestringError(f"federate: task {cfg.task} needs `dataset:` (a curated dataset artifact)")
        if job.model is None:
            raise ShoestringError(f"federate: task {cfg.task} needs `model:`")
        self.spec = job.model
        self.records: list[dict[str, Any]] = []
        self.split_of: list[str] = []
        for split in SPLITS:
            recs = D.read_records(Path(job.dataset) / f"{split}.jsonl")
            self.records += recs
            self.split_of += [split] * len(recs)
        if not any(s == "train" for s in self.split_of):
            raise ShoestringError(f"federate: {job.dataset} has no train.jsonl records")
        labels = column = None
        if cfg.partition == "dirichlet":
            name = cfg.partition_label or cfg.label_field
            labels = [self._label_for_skew(r, name) for r in self.records]
        elif cfg.partition == "column":
            column = [_column(r, str(cfg.partition_column)) for r in self.records]
            if all(v is None for v in column):
                raise ShoestringError(f"federate: no record has '{cfg.partition_column}'; set partition_column")
        self.part = partition_units(len(self.records), cfg.partition, cfg.clients, labels=labels, column_values=column,
                                    alpha=cfg.alpha, min_units=cfg.min_client_units, seed=cfg.partition_seed)  # fmt: skip
        self.labels = labels
        self.clients = self.part.clients
        self.unit_client = np.asarray(self.part.assignment)
        self._base: torch.nn.Module | None = None
        self._tok: Any = None
        self._initial: State | None = None
        self._tensors: dict[tuple[str, tuple[int, ...]], tuple[torch.Tensor, ...]] = {}

    def _label_for_skew(self, rec: dict[str, Any], name: str) -> str | None:
        return None if rec.get(name) is None else str(rec[name])

    # -- data ---------------------------------------------------------------------------
    def _records(self, split: str, clients: list[int] | None) -> tuple[list[dict[str, Any]], np.ndarray]:
        idx = [i for i, s in enumerate(self.split_of) if s == split and (clients is None or self.unit_client[i] in clients)]
        if split == "train" and self.cfg.max_records_per_client and clients is not None:
            keep: list[int] = []
            for c in clients:
                keep += [i for i in idx if self.unit_client[i] == c][: self.cfg.max_records_per_client]
            idx = sorted(keep)
        return [self.records[i] for i in idx], self.unit_client[idx]

    def tokenizer(self) -> Any:
        if self._tok is None:
            from shoestring.models import load_tokenizer

            tok = load_tokenizer(self.spec)
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token or tok.unk_token
            self._tok = tok
        return self._tok

    def tensors(self, split: str, clients: list[int] | None) -> tuple[torch.Tensor, ...]:
        key = (split, tuple(clients) if clients is not None else (-1,))
        if key not in self._tensors:
            self._tensors[key] = self._make_tensors(self._records(split, clients)[0])
        return self._tensors[key]

    def _make_tensors(self, records: list[dict[str, Any]]) -> tuple[torch.Tensor, ...]:  # pragma: no cover
        raise NotImplementedError

    def partition_summary(self) -> list[dict[str, Any]]:
        rows = self.part.counts(self.labels)
        for r in rows:
            r["records"] = r.pop("units")
            mine = [s for s, c in zip(self.split_of, self.unit_client, strict=True) if c == r["partition_id"]]
            r["splits"] = {s: mine.count(s) for s in SPLITS}
        return rows

    def client_examples(self, client: int) -> int:
        return int(self.tensors("train", [client])[0].shape[0])

    # -- model --------------------------------------------------------------------------
    def _build(self) -> torch.nn.Module:  # pragma: no cover
        raise NotImplementedError

    def base(self) -> torch.nn.Module:
        if self._base is None:
            self._base = self._build()
        return self._base

    def _model(self, state: State | None) -> torch.nn.Module:
        import torch

        model = copy.deepcopy(self.base())
        if state is not None:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in state.items():
                    params[name].copy_(torch.from_numpy(np.asarray(value)))
        return model

    @staticmethod
    def _state(model: torch.nn.Module) -> State:
        return {n: p.detach().cpu().numpy().copy() for n, p in sorted(model.named_parameters()) if p.requires_grad}

    def initial_state(self) -> State:
        if self._initial is None:
            self._initial = self._state(self.base())
        return dict(self._initial)  # read-only: callers copy before changing a tensor

    def size_bytes(self) -> dict[str, int]:
        full = sum(p.numel() * 4 for p in self.base().parameters())
        return {"travelling": sum(int(a.size) * 4 for a in self.initial_state().values()), "full_model": int(full)}

    def tensor_numels(self) -> list[int]:
        return [int(a.size) for a in self.initial_state().values()]

    def _settings(self, epochs: int, seed: int, patience: int | None = None) -> Any:
        from shoestring.train.tabular_fit import FitSettings

        default_lr = 2e-4 if self.cfg.method == "lora" else 5e-5
        return FitSettings(epochs=epochs, batch_size=self.cfg.local_batch_size or 32, lr=self.cfg.lr or default_lr,
                           optimizer=self.cfg.optimizer, seed=seed, patience=patience, keep_checkpoints=1)  # fmt: skip

    def _loss(self, m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _fit_module(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def train_client(self, client: int, state: State, *, seed: int, epochs: int, proximal_mu: float,
                     noise: float | None, delta: float | None) -> ClientUpdate:  # fmt: skip
        from torch.utils.data import TensorDataset

        from shoestring.train.privacy import PrivacyOptions
        from shoestring.train.tabular_fit import fit, torch_threads

        model = self._model(state)
        anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        data = self.tensors("train", [client])
        privacy = None
        if noise is not None and self.cfg.privacy is not None:
            p = self.cfg.privacy
            privacy = PrivacyOptions(noise_multiplier=noise, delta=delta, max_grad_norm=p.max_grad_norm,
                                     accountant=p.accountant)  # fmt: skip

        def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            loss = self._loss(m, batch)
            if proximal_mu > 0:  # FedProx on the tensors that travel
                loss = loss + 0.5 * proximal_mu * sum(((p - anchor[n]) ** 2).sum()
                                                      for n, p in model.named_parameters() if n in anchor)  # fmt: skip
            return loss

        model.train()
        with torch_threads(self.cfg.threads):
            result = fit(self._fit_module(model), TensorDataset(*data), loss_fn, None, monitor="", higher_is_better=True,
                         settings=self._settings(epochs, seed), work_dir=Path(self.job.work_dir) / "no-checkpoints",
                         privacy=privacy)  # fmt: skip
        losses = [r["train_loss"] for r in result.rows if "train_loss" in r]
        dp = None
        if result.privacy is not None:
            dp = (float(result.privacy["noise_multiplier"]), float(result.privacy["sample_rate"]),
                  int(result.privacy["steps"]))  # fmt: skip
        return ClientUpdate(self._state(model), int(data[0].shape[0]),
                            {"train-loss": float(losses[-1]) if losses else float("nan"), "steps": float(result.steps)},
                            dp)  # fmt: skip

    def train_baseline(self, clients: list[int] | None, *, epochs: int, patience: int, seed: int,
                       work_dir: Path) -> State:  # fmt: skip
        from torch.utils.data import TensorDataset

        from shoestring.train.tabular_fit import fit, torch_threads

        model = self._model(None)
        val = self.tensors("validation", clients)
        has_val = int(val[0].shape[0]) > 0
        sign = 1.0 if self.higher_is_better else -1.0

        def validate(m: torch.nn.Module) -> dict[str, float]:
            return {"score": sign * float(np.mean(self._unit_scores(m, val)[self.headline]))}

        model.train()
        with torch_threads(self.cfg.threads):
            fit(self._fit_module(model), TensorDataset(*self.tensors("train", clients)), self._loss,
                validate if has_val else None, monitor="score", higher_is_better=True,
                settings=self._settings(epochs, seed, patience), work_dir=work_dir)  # fmt: skip
        return self._state(model)

    def _unit_scores(self, model: torch.nn.Module, data: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
        raise NotImplementedError  # pragma: no cover

    def evaluate(self, state: State, split: str = "test", clients: list[int] | None = None) -> Scores:
        from shoestring.train.tabular_fit import torch_threads

        _, owner = self._records(split, clients)
        data = self.tensors(split, clients)
        with torch_threads(self.cfg.threads):
            values = self._unit_scores(self._model(state), data)
        return Scores(values, owner[: len(next(iter(values.values())))], self.headline, self.higher_is_better)


class ClassificationTask(_TextTask):
    """Sequence classification; ``partition: dirichlet`` skews the label mix per client."""

    hf_task = "classification"
    headline = "accuracy"

    def __init__(self, job: Job) -> None:
        super().__init__(job)
        train = [r for r, s in zip(self.records, self.split_of, strict=True) if s == "train"]
        self.label_names = sorted({str(r[self.cfg.label_field]) for r in train if r.get(self.cfg.label_field) is not None})
        if len(self.label_names) < 2:
            raise ShoestringError(f"federate: classification needs >= 2 distinct '{self.cfg.label_field}' values in train.jsonl")
        self.label_to_id = {lab: i for i, lab in enumerate(self.label_names)}

    def _make_tensors(self, records: list[dict[str, Any]]) -> tuple[torch.Tensor, ...]:
        from shoestring.train.dp_classify import classification_tensors

        usable = [r for r in records if str(r.get(self.cfg.label_field)) in self.label_to_id]
        return classification_tensors(usable, self.tokenizer(), text_field=self.cfg.text_field,
                                      label_field=self.cfg.label_field, seq_len=self.cfg.seq_len,
                                      label_to_id=self.label_to_id)  # fmt: skip

    def _records(self, split: str, clients: list[int] | None) -> tuple[list[dict[str, Any]], np.ndarray]:
        recs, owner = super()._records(split, clients)
        keep = [i for i, r in enumerate(recs) if isinstance(r.get(self.cfg.text_field), str)
                and str(r.get(self.cfg.label_field)) in self.label_to_id]  # fmt: skip
        return [recs[i] for i in keep], owner[keep]

    def _build(self) -> torch.nn.Module:
        from shoestring.train.modeling import build_model

        return build_model(self.spec, "classification", self.cfg.method, from_scratch=False, config_overrides={},
                           dropout=self.cfg.dropout, lora=self.cfg.lora, trainable_layers=2,
                           num_labels=len(self.label_names), id2label=dict(enumerate(self.label_names)),
                           device="cpu", seed=self.cfg.seed)  # fmt: skip

    def _loss(self, m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        import torch

        from shoestring.train.privacy import with_per_example_positions

        out = m(**with_per_example_positions({"input_ids": batch[0], "attention_mask": batch[1]}))
        return torch.nn.functional.cross_entropy(out.logits.float(), batch[2])

    def _unit_scores(self, model: torch.nn.Module, data: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
        import torch

        ids, mask, y = data
        correct: list[np.ndarray] = []
        model.eval()
        with torch.no_grad():
            for i in range(0, len(y), 64):
                logits = model(input_ids=ids[i : i + 64], attention_mask=mask[i : i + 64]).logits
                correct.append((logits.argmax(-1) == y[i : i + 64]).numpy().astype(np.float64))
        model.train()
        return {"accuracy": np.concatenate(correct) if correct else np.zeros(0)}

    def save(self, state: State, out_dir: Path) -> dict[str, Any]:
        from shoestring.core.artifact import atomic_write_json

        model = self._model(state)
        kind = "adapter" if self.cfg.method == "lora" else "model"
        model.save_pretrained(out_dir / kind)
        self.tokenizer().save_pretrained(out_dir / kind)
        atomic_write_json(out_dir / kind / "labels.json", self.label_to_id)
        extras: dict[str, Any] = {"task": "classification"}
        if kind == "adapter":
            extras["base_model"] = self.spec
        return extras


class SFTTask(_TextTask):
    """Chat SFT of a causal LM; clients are usually the dataset's sources (``partition_column: source``)."""

    hf_task = "sft"
    headline = "loss"
    higher_is_better = False

    def _label_for_skew(self, rec: dict[str, Any], name: str) -> str | None:
        value = _column(rec, name)
        return None if value is None else str(value)

    def _records(self, split: str, clients: list[int] | None) -> tuple[list[dict[str, Any]], np.ndarray]:
        recs, owner = super()._records(split, clients)
        keep = [i for i, r in enumerate(recs) if isinstance(r.get(self.cfg.messages_field), list)]
        return [recs[i] for i in keep], owner[keep]

    def _make_tensors(self, records: list[dict[str, Any]]) -> tuple[torch.Tensor, ...]:
        import torch

        from shoestring.train import data as D

        tok = self.tokenizer()
        ex, _ = D.build_examples(records, tok, task="sft", seq_len=self.cfg.seq_len, text_field=self.cfg.text_field,
                                 messages_field=self.cfg.messages_field, label_field=self.cfg.label_field)  # fmt: skip
        if not ex:
            z = torch.zeros(0, 1, dtype=torch.long)
            return z, z.clone(), z.clone()
        batch = D.collate(D.pad_rows(ex), int(tok.pad_token_id), packed=True)
        return batch["input_ids"], batch["labels"], batch["position_ids"]

    def _build(self) -> torch.nn.Module:
        from shoestring.train.modeling import LossModule, build_model

        model = build_model(self.spec, "sft", self.cfg.method, from_scratch=False, config_overrides={},
                            dropout=self.cfg.dropout, lora=self.cfg.lora, trainable_layers=2, num_labels=None,
                            id2label=None, device="cpu", seed=self.cfg.seed)  # fmt: skip
        return LossModule.create(model, "sft")

    def _loss(self, m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        total, n = m(input_ids=batch[0], labels=batch[1], position_ids=batch[2])
        return total / n.clamp(min=1)

    def _unit_scores(self, model: torch.nn.Module, data: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
        import torch

        ids, labels, pos = data
        out: list[float] = []
        model.eval()
        with torch.no_grad():
            for i in range(len(ids)):  # one record at a time: its own mean token loss
                total, n = model(input_ids=ids[i : i + 1], labels=labels[i : i + 1], position_ids=pos[i : i + 1])
                out.append(float(total) / max(float(n), 1.0))
        model.train()
        return {"loss": np.asarray(out)}

    def _state(self, model: torch.nn.Module) -> State:  # type: ignore[override]
        return {n.removeprefix("model."): p.detach().cpu().numpy().copy()
                for n, p in sorted(model.named_parameters()) if p.requires_grad}  # fmt: skip

    def _model(self, state: State | None) -> torch.nn.Module:
        if state is None:
            return copy.deepcopy(self.base())
        return super()._model({f"model.{k}": v for k, v in state.items()})

    def save(self, state: State, out_dir: Path) -> dict[str, Any]:
        lossmod = self._model(state)
        model = lossmod.model  # type: ignore[attr-defined]
        kind = "adapter" if self.cfg.method == "lora" else "model"
        model.save_pretrained(out_dir / kind)
        self.tokenizer().save_pretrained(out_dir / kind)
        extras: dict[str, Any] = {"task": "sft"}
        if kind == "adapter":
            extras["base_model"] = self.spec
        return extras
