"""What a federated task is: the contract and the values that cross it.

A task owns its data and model and knows how to

* split the data into clients (:mod:`shoestring.federate.partition`),
* produce the tensors that travel (the recommender's weights, a LoRA model's adapters + head),
* train them locally on one client's data with the project's own trainers,
* score a set of tensors on held-out records (one score per unit, so intervals and per-client
  tables come from the same numbers), and
* save them as an ordinary model artifact.

Every process builds the same task from the same :class:`Job` (a JSON file in the stage's work
folder), so partitions and initial weights agree everywhere; :func:`shoestring.federate.loader.load_task`
builds it. The task kinds (``recsys_task``, ``text_tasks``) import these names; nothing here imports
them, so the arrows point one way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from shoestring.core.artifact import atomic_write_json, canonical_json

if TYPE_CHECKING:
    from shoestring.federate.config import FederateConfig

__all__ = ["ClientUpdate", "FederatedTask", "Job", "Scores", "State"]

State = dict[str, np.ndarray]
"""Named tensors that travel between server and clients, in a fixed (sorted-name) order."""


@dataclass(frozen=True)
class Job:
    """Everything a process needs to rebuild the task: the config, where the data is, where to write."""

    config: dict[str, Any]
    """``FederateConfig.model_dump(mode="json")``."""
    dataset: str | None
    """Dataset artifact folder (None: the recommender's bundled MovieLens)."""
    model: str | None
    """Resolved base model spec (classification / sft)."""
    work_dir: str
    """The stage's durable work folder: checkpoints, round log, results."""
    noise: dict[str, float] = field(default_factory=dict)
    """DP-SGD noise multiplier per partition id (client-side privacy), fixed before round 1."""
    delta: dict[str, float] = field(default_factory=dict)
    """DP delta per partition id."""

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical_json(self.__dict__).encode()).hexdigest()[:16]

    def cfg(self) -> FederateConfig:
        from shoestring.federate.config import FederateConfig

        return FederateConfig.model_validate(self.config)

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.__dict__)

    @classmethod
    def load(cls, path: str | Path) -> Job:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass
class ClientUpdate:
    """A client's reply to one training round."""

    state: State
    num_examples: int
    """Weight of this update in the average (training examples / positions)."""
    metrics: dict[str, float] = field(default_factory=dict)
    privacy: tuple[float, float, int] | None = None
    """(noise multiplier, sample rate, steps) of this round's DP-SGD, for the accountant."""


@dataclass
class Scores:
    """Per-unit held-out scores of one model: ``values[metric][i]`` for unit ``i``."""

    values: dict[str, np.ndarray]
    client: np.ndarray
    """Client index of every scored unit."""
    headline: str
    """The metric that stands for quality (ndcg@10, accuracy, loss)."""
    higher_is_better: bool = True


class FederatedTask(Protocol):
    """The contract between the Flower apps / baselines and one kind of model and data."""

    clients: list[str]

    def partition_summary(self) -> list[dict[str, Any]]:
        """Per client: units, records, label mix (goes into the manifest)."""
        ...

    def initial_state(self) -> State:
        """The travelling tensors of the initial global model (same in every process)."""
        ...

    def client_examples(self, client: int) -> int:
        """Training examples a client holds (the FedAvg weight of its updates)."""
        ...

    def train_client(self, client: int, state: State, *, seed: int, epochs: int, proximal_mu: float,
                     noise: float | None, delta: float | None) -> ClientUpdate:  # fmt: skip
        """Local training from ``state`` on the client's training data; returns the new tensors."""
        ...

    def evaluate(self, state: State, split: str = "test", clients: list[int] | None = None) -> Scores:
        """Scores of ``state`` on the held-out units of ``split`` (of the given clients; None = all)."""
        ...

    def train_baseline(self, clients: list[int] | None, *, epochs: int, patience: int, seed: int,
                       work_dir: Path) -> State:  # fmt: skip
        """Ordinary (non-federated) training on the pooled data of ``clients`` (None = all), early
        stopping on their validation units; the centralised and local-only baselines."""
        ...

    def save(self, state: State, out_dir: Path) -> dict[str, Any]:
        """Write the model artifact payload; returns manifest extras (task, base_model, ...)."""
        ...

    def size_bytes(self) -> dict[str, int]:
        """Bytes of the travelling tensors and of the full model (fp32)."""
        ...

    def tensor_numels(self) -> list[int]:
        """Element count of every travelling tensor (for the traffic prediction)."""
        ...
