"""`TrainConfig`: the one schema behind the `train` recipe stage, `shoestring train` flags and the API.

Fields left at ``None`` are resolved at run time in this order: the value you set, then the
plan artifact's value (``plan:``), then the built-in default (see :func:`resolve_settings`).
A value you set that differs from the plan is kept and reported as a deviation.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from shoestring.core.config import ArtifactInput, NotHashed, StageConfig
from shoestring.train.privacy import PrivacyOptions
from shoestring.train.recsys import RecsysOptions
from shoestring.train.tabular import TabularOptions

__all__ = ["LoraOptions", "TrackingOptions", "TrainConfig", "LM_TASKS", "Task", "Method", "Precision"]

Task = Literal[
    "sft",
    "causal-lm",
    "masked-lm",
    "classification",
    "sequential-recommendation",
    "tabular-classification",
]
LM_TASKS = ("sft", "causal-lm", "masked-lm", "classification")
Method = Literal["full", "lora", "qlora", "frozen"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class LoraOptions(StageConfig):
    """LoRA adapter settings (used by ``method: lora`` and ``method: qlora``)."""

    r: int = Field(16, ge=1)
    """Rank of the low-rank update matrices."""
    alpha: int = Field(32, ge=1)
    """Scaling numerator: the update is multiplied by alpha / r."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout probability on the LoRA input."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. [q_proj, v_proj]) or 'all-linear' (every linear layer but the output head)."""


class TrackingOptions(StageConfig):
    """Where training metrics go besides the artifact's metrics.jsonl and loss.png."""

    tensorboard: bool = True
    """Write TensorBoard event files into the artifact's tensorboard/ folder."""
    mlflow: bool = False
    """Also log params and metrics to MLflow."""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking URI; default is a local file store at <workspace>/mlruns."""
    mlflow_experiment: str = "shoestring"
    """MLflow experiment name."""


class TrainConfig(StageConfig):
    """Train or fine-tune a model: SFT, causal/masked-LM pretraining, classification, recsys, tabular."""

    dataset: Annotated[str | None, ArtifactInput("dataset")] = None
    """Dataset artifact (a recipe stage id or an artifact folder) with train.jsonl / validation.jsonl."""
    plan: Annotated[str | None, ArtifactInput("plan")] = None
    """Plan artifact from `shoestring plan`; unset knobs are taken from it and deviations are warned about."""
    model: Annotated[str | None, ArtifactInput("model", external_ok=True)] = None
    """Base model: packaged name (smollm2-135m-instruct), folder, .gguf, hub id or model artifact. Default: the plan's."""
    task: Task | None = None
    """What to train. Default: the plan's task, else sft."""
    method: Method | None = None
    """full = all weights, lora = PEFT LoRA, qlora = 4-bit base + LoRA (CUDA only), frozen = train the top layers only. Default: the plan's, else lora."""
    from_scratch: bool = False
    """Initialise weights randomly from the model's config (pretraining) instead of loading them."""
    config_overrides: dict[str, Any] = Field(default_factory=dict)
    """Model config keys to override before building (e.g. {num_hidden_layers: 4}); mainly for from_scratch."""
    lora: LoraOptions = LoraOptions.model_validate({})
    """LoRA settings (YAML / --config only)."""
    trainable_layers: int = Field(2, ge=0)
    """method=frozen: number of top transformer layers left trainable (the head always trains)."""

    # -- data ---------------------------------------------------------------------------
    text_source: Literal["dataset", "python-docs"] = "dataset"
    """Where text comes from: the dataset artifact, or Python's own reference documentation
    (pydoc_data.topics, ~80 topics, no internet) as a built-in pretraining corpus (5% held out)."""
    text_field: str = "text"
    """Record field holding plain text (causal-lm, masked-lm, classification)."""
    messages_field: str = "messages"
    """Record field holding a chat as a list of {role, content} (sft)."""
    label_field: str = "label"
    """Record field holding the class label (classification)."""
    max_examples: int | None = Field(None, ge=1)
    """Use at most this many training records (the first ones in file order)."""
    val_max_examples: int = Field(256, ge=0)
    """Evaluate on at most this many validation records (0 = no validation)."""
    seq_len: int | None = Field(None, ge=8)
    """Tokens per sequence (longer documents are truncated). Default: the plan's, else 512."""
    packing: bool = True
    """Pack several documents per row instead of padding. causal-lm/sft: attention never crosses
    documents; masked-lm: consecutive paragraphs share a row BERT-style ([CLS] a [SEP] b [SEP])."""
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0)
    """masked-lm: fraction of tokens selected for prediction (80% [MASK], 10% random, 10% kept)."""

    # -- optimisation -------------------------------------------------------------------
    micro_batch_size: int | None = Field(None, ge=1)
    """Rows per forward/backward pass. Default: the plan's, else 8."""
    grad_accum: int | None = Field(None, ge=1)
    """Micro-batches per optimizer step; the loss is normalised by the real token count over all of them. Default: the plan's, else 1."""
    precision: Precision = "auto"
    """fp32, bf16 (autocast, fp32 master weights; works on CPU), fp16 (CUDA only). auto = the plan's,
    else bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), fp32 otherwise."""
    activation_checkpointing: bool | None = None
    """Recompute activations in backward to save memory (slower). Default: the plan's, else off."""
    epochs: float | None = Field(None, gt=0)
    """Passes over the training data (fractions allowed); max_steps / max_minutes / early stopping
    stop earlier. Default by task: 1 for sft / causal-lm / masked-lm / classification (pretrained
    models), 30 for sequential-recommendation and 40 for tabular-classification (small models
    trained from scratch need many passes; early stopping on validation, patience 10 and 8
    epochs, ends them sooner)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps."""
    max_minutes: float | None = Field(None, gt=0)
    """Stop after this many minutes of training (wall clock, excluding model loading)."""
    lr: float | None = Field(None, gt=0)
    """Peak learning rate. Default: 2e-4 for lora/qlora, 5e-5 for full/frozen fine-tuning, 1e-3 from scratch."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """Optimizer."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay (AdamW) or L2 (SGD); not applied to biases and norms."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warmup, down to 10% of the peak (constant: no decay)."""
    warmup_steps: int | None = Field(None, ge=0)
    """Linear warmup steps. Default: 5% of the total steps."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this (null = no clipping)."""
    dropout: float | None = Field(None, ge=0, lt=1)
    """Override the model's dropout probabilities (attention/hidden) for training."""
    seed: int = 0
    """Seed for weight init, data order, masking and dropout."""

    # -- evaluation, checkpoints, tracking -----------------------------------------------
    eval_every: int | None = Field(None, ge=1)
    """Compute validation loss every this many steps (default: 4 times per run and at the end)."""
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop when validation loss has not improved for this many evaluations."""
    checkpoint_every: int = Field(50, ge=1)
    """Write a resumable checkpoint (safetensors + JSON) every this many steps."""
    keep_checkpoints: int = Field(2, ge=1)
    """Keep only the newest N checkpoints."""
    log_every: int = Field(1, ge=1)
    """Append a metrics.jsonl row every this many steps."""
    tracking: TrackingOptions = TrackingOptions.model_validate({})
    """TensorBoard / MLflow settings (YAML / --config only)."""
    progress: bool = True
    """Show a progress bar with tokens/s and ETA."""

    # -- where it runs --------------------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = CUDA when available, else CPU."""
    executor: Literal["local", "torchrun", "ray"] = "local"
    """local = this process; torchrun = N processes (DDP/FSDP) via torch.distributed.run; ray = Ray Train workers."""
    devices: int = Field(1, ge=1)
    """Number of training processes (torchrun / ray); one per GPU on CUDA, gloo processes on CPU."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Data-parallel strategy when devices > 1."""
    bound_allocator: Annotated[bool | None, NotHashed()] = None
    """CPU runs: fix glibc's mmap threshold at 64 KiB before the model loads, so peak RSS follows
    live tensors (what the planner predicts) at the cost of page faults on every large allocation
    (measured: 1.1-1.9x slower steps, up to 46% less peak RSS). Default (auto): bounded only when
    the plan's predicted peak, times the 2x that glibc's default heap can add (measured up to
    1.85x), would not fit in 80% of the memory available now; true/false force it."""
    fast_paths: bool = True
    """Shoestring's measured fast paths: per-document attention for packed rows, frozen LoRA base
    weights cast once under autocast, and (CPU) vectorised LoRA dropout masks. Same maths; the
    dropout masks come from a different random stream. false = stock transformers/peft code."""
    threads: int | None = Field(None, ge=1)
    """CPU threads per process (torch.set_num_threads); default: torch's choice."""

    # -- options of the other tasks --------------------------------------------------------
    num_labels: int | None = Field(None, ge=2)
    """classification: number of classes (default: inferred from the training labels)."""
    recsys: RecsysOptions = RecsysOptions.model_validate({})
    """task sequential-recommendation: model and data settings (YAML / --config only)."""
    tabular: TabularOptions = TabularOptions.model_validate({})
    """task tabular-classification: model and data settings (YAML / --config only)."""
    privacy: PrivacyOptions | None = None
    """DP-SGD (opacus) settings; when set, training is differentially private (YAML / --config only)."""
