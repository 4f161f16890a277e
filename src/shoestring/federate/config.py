"""`FederateConfig`: the one schema behind the `federate` recipe stage, its CLI flags and the API.

Scalar knobs (rounds, clients, strategy, ...) are flags; the nested sections (``privacy``,
``secagg``, ``faults``, ``baselines``, ``recsys``, ``lora``) are set in YAML or ``--config``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from shoestring.core.config import ArtifactInput, NotHashed, StageConfig
from shoestring.train.config import LoraOptions
from shoestring.train.recsys import RecsysOptions

__all__ = [
    "BaselineOptions",
    "FaultOptions",
    "FederateConfig",
    "LocalPrivacyOptions",
    "SecAggOptions",
    "FederatedTaskName",
]

FederatedTaskName = Literal["sequential-recommendation", "classification", "sft"]


class LocalPrivacyOptions(StageConfig):
    """Client-side DP-SGD: every client clips each of its examples' gradients and adds noise
    (Opacus); the budget is per client, over all the rounds it may take part in."""

    target_epsilon: float | None = Field(None, gt=0)
    """Epsilon each client may spend over the whole run (its noise is set so that taking part in
    every round spends exactly this); give this or noise_multiplier."""
    noise_multiplier: float | None = Field(None, ge=0)
    """Fixed Gaussian noise std / max_grad_norm instead of a target; epsilon spent is reported."""
    delta: float | None = Field(None, gt=0, lt=1)
    """Privacy delta per client; None uses 1 / (10 x that client's training examples)."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Per-example gradient clipping bound (L2 norm)."""
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"
    """Opacus accountant that turns (noise, sample rate, steps) of every round into epsilon."""

    @model_validator(mode="after")
    def _one_mode(self) -> LocalPrivacyOptions:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("give exactly one of target_epsilon or noise_multiplier")
        return self


class SecAggOptions(StageConfig):
    """Flower's SecAgg+ protocol: clients upload masked, quantised updates; the server learns
    only their weighted sum. Parameters are those of ``flwr.server.workflow.SecAggPlusWorkflow``."""

    num_shares: float = Field(1.0, gt=0)
    """Shares each client's secret is split into: a fraction (<= 1) of the clients sampled in the
    round, or a whole number of neighbours (> 2)."""
    reconstruction_threshold: float = Field(0.6, gt=0)
    """Shares needed to reconstruct a secret: a fraction (<= 1) of num_shares or a number."""
    clipping_range: float = Field(8.0, gt=0)
    """Each weighted parameter is clipped to [-clipping_range, clipping_range] before quantisation."""
    quantization_range: int = Field(4_194_304, gt=0)
    """Integer levels of the quantiser (2**22 by default)."""
    max_weight: float | None = Field(None, gt=0)
    """Largest client weight (training examples) the protocol expects; None: the largest client's count."""


class FaultOptions(StageConfig):
    """Failure injection (simulation and loopback deployment): seeded per (round, client), so a
    run shows how the server copes with real-world clients."""

    dropout: float = Field(0.0, ge=0, lt=1)
    """Fraction of the clients sampled in a round that crash before replying (error reply)."""
    straggler: float = Field(0.0, ge=0, lt=1)
    """Fraction that reply only after round_timeout_s (their update arrives too late and is ignored)."""
    corrupt: float = Field(0.0, ge=0, lt=1)
    """Fraction that send an update with NaN and Inf values."""
    wrong_shape: float = Field(0.0, ge=0, lt=1)
    """Fraction that send an update whose first tensor has the wrong shape."""
    seed: int = 0
    """Seed of the fault draws."""

    @property
    def any(self) -> bool:
        return bool(self.dropout or self.straggler or self.corrupt or self.wrong_shape)


class BaselineOptions(StageConfig):
    """The comparisons written next to the federated model, on the same held-out records."""

    centralised: bool = True
    """Train one model on all clients' training data pooled (what federation tries to match)."""
    local_only: bool = True
    """Train one model per client on its own data alone; reported as the mean over clients."""
    epochs: int | None = Field(None, ge=1)
    """Epochs of each baseline (early stopping on its validation data ends them sooner);
    None: rounds x local_epochs, the passes a client makes over its data when it takes part in every round."""
    patience: int = Field(3, ge=1)
    """Early-stopping patience (epochs without validation improvement) of the baselines."""
    max_local_clients: int | None = Field(None, ge=1)
    """Train local-only models for at most this many clients (the largest ones first); None: all."""


class FederateConfig(StageConfig):
    """Federated training with Flower: clients are partitions of a dataset; only model updates travel."""

    dataset: Annotated[str | None, ArtifactInput("dataset")] = None
    """Curated dataset artifact (recipe stage id or folder) whose records are partitioned into clients
    (recommendation may use recsys.source: movielens-100k instead)."""
    task: FederatedTaskName = "sequential-recommendation"
    """What the federation trains: a next-item recommender, a text classifier (LoRA adapters travel)
    or a chat model by SFT (LoRA adapters travel)."""
    model: Annotated[str | None, ArtifactInput("model", external_ok=True)] = None
    """Base model for classification / sft: packaged name (all-minilm-l6-v2, smollm2-135m-instruct), folder or hub id."""
    method: Literal["lora", "full"] = "lora"
    """classification / sft: lora = only adapters (and the classification head) train and travel; full = every weight."""
    lora: LoraOptions = LoraOptions.model_validate({})
    """LoRA settings of classification / sft (YAML / --config only)."""
    recsys: RecsysOptions = RecsysOptions.model_validate({"architecture": "gru"})
    """Recommendation: model and data settings, as in `shoestring train` (YAML / --config only)."""
    text_field: str = "text"
    """Record field holding the text (classification)."""
    label_field: str = "label"
    """Record field holding the class label (classification)."""
    messages_field: str = "messages"
    """Record field holding a chat as a list of {role, content} (sft)."""
    seq_len: int = Field(128, ge=8)
    """Tokens per example (classification / sft); longer ones are truncated."""
    dropout: float | None = Field(None, ge=0, lt=1)
    """Dropout probability while training (recommendation default 0.2; text models keep their own)."""
    max_records_per_client: int | None = Field(None, ge=1)
    """Use at most this many training records per client (classification / sft), to bound local work."""

    # -- who the clients are ------------------------------------------------------------
    clients: int = Field(10, ge=2)
    """Number of clients (ignored by partition: column, where each distinct value is a client)."""
    partition: Literal["iid", "dirichlet", "column"] = "dirichlet"
    """How units (users for recommendation, records otherwise) go to clients: iid = uniformly at random;
    dirichlet = label skew, each client's label mix drawn from Dirichlet(alpha); column = one client per
    value of partition_column (source, site, user, ...)."""
    partition_column: str | None = None
    """partition: column - the record (or, recommendation, user-attribute) field whose values are the clients."""
    partition_label: str | None = None
    """partition: dirichlet - the field whose mix is skewed (default: label_field; recommendation: the
    user attribute 'occupation')."""
    alpha: float = Field(0.5, gt=0)
    """Dirichlet concentration: small (0.1) = each client sees few labels, large (100) = nearly IID."""
    min_client_units: int = Field(3, ge=1)
    """Every client gets at least this many units (users or records); Dirichlet draws are repeated until so."""
    partition_seed: int = 0
    """Seed of the partition."""

    # -- the federation -----------------------------------------------------------------
    strategy: Literal["fedavg", "fedprox", "fedadam", "fedyogi"] = "fedavg"
    """Flower strategy that aggregates the updates: fedavg, fedprox (clients add a proximal term),
    fedadam / fedyogi (adaptive server optimisers over the averaged update)."""
    proximal_mu: float = Field(0.01, ge=0)
    """fedprox: weight mu of the proximal term mu/2 ||w - w_global||^2 in each client's loss."""
    server_lr: float = Field(0.01, gt=0)
    """fedadam / fedyogi: server learning rate (eta)."""
    server_tau: float = Field(1e-3, gt=0)
    """fedadam / fedyogi: adaptivity (tau), the epsilon of the server optimiser."""
    rounds: int = Field(20, ge=1)
    """Federated rounds."""
    fraction_train: float = Field(1.0, gt=0, le=1)
    """Fraction of clients sampled for training each round (at least min_clients_per_round)."""
    fraction_evaluate: float = Field(0.0, ge=0, le=1)
    """Fraction of clients that also evaluate the global model on their own validation data each round
    (federated evaluation); 0 = only the held-out evaluation by the server."""
    min_clients_per_round: int = Field(2, ge=1)
    """Fewest clients sampled in a round."""
    local_epochs: int = Field(1, ge=1)
    """Passes a sampled client makes over its training data per round."""
    local_batch_size: int | None = Field(None, ge=1)
    """Examples per local optimiser step (default: 32; recommendation: 64 windows)."""
    lr: float | None = Field(None, gt=0)
    """Local learning rate (default: recommendation 3e-3, classification / sft LoRA 2e-4 ... see docs)."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """Local optimiser (a fresh one each round)."""
    round_timeout_s: float = Field(600.0, gt=0)
    """Seconds the server waits for a round's replies; later replies are dropped and counted."""
    eval_every: int = Field(1, ge=1)
    """Score the global model on the held-out records every this many rounds (and after the last)."""
    seed: int = 0
    """Seed of local data order, dropout and client sampling."""

    # -- privacy and robustness ---------------------------------------------------------
    privacy: LocalPrivacyOptions | None = None
    """Client-side DP-SGD (YAML / --config only); epsilon per client and overall go in the manifest."""
    secure_aggregation: bool = False
    """Use Flower's SecAgg+: the server only ever sees the sum of the masked client updates."""
    secagg: SecAggOptions = SecAggOptions.model_validate({})
    """SecAgg+ parameters (YAML / --config only)."""
    faults: FaultOptions = FaultOptions.model_validate({})
    """Failure injection for robustness runs (YAML / --config only)."""
    baselines: BaselineOptions = BaselineOptions.model_validate({})
    """Centralised and local-only comparisons (YAML / --config only)."""

    # -- where it runs ------------------------------------------------------------------
    engine: Literal["simulation", "deployment"] = "simulation"
    """simulation = Flower's simulation engine (Ray actors on this machine); deployment = a Flower
    SuperLink and one SuperNode per client as separate processes talking gRPC/HTTP (loopback unless
    superlink is set)."""
    superlink: Annotated[str | None, NotHashed()] = None
    """deployment: host:port of a running SuperLink whose SuperNodes are already connected
    (node config partition-id=i num-partitions=n); None = start SuperLink and SuperNodes on 127.0.0.1."""
    port: Annotated[int, NotHashed()] = Field(18300, ge=1024, le=65000)
    """deployment on loopback: the SuperLink's port; SuperNode i listens on port + 1 + i."""
    workers: Annotated[int, NotHashed()] = Field(2, ge=1)
    """simulation: Ray actors running clients at once (one CPU each)."""
    threads: Annotated[int | None, NotHashed()] = Field(None, ge=1)
    """CPU threads per client process (default 1: these models are small)."""

    @model_validator(mode="after")
    def _consistent(self) -> FederateConfig:
        if self.partition == "column" and not self.partition_column:
            raise ValueError("partition: column needs partition_column (the field whose values are the clients)")
        if self.secure_aggregation and self.min_clients_per_round < 2:
            raise ValueError("secure_aggregation needs min_clients_per_round >= 2 (a sum of one update is that update)")
        return self
