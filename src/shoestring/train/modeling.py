"""Build the model to train (pretrained or from config; full, LoRA, QLoRA or frozen) and its loss.

The loss is computed in :class:`LossModule` rather than by the model so that

* only positions that carry a label go through the language-model head (on SFT data most
  positions are prompt tokens; the 49k-way head is a fifth of a small model's compute), and
* the module returns the *sum* of token losses and the token count, so gradient
  accumulation can divide by the real number of label tokens across all micro-batches
  (and ranks) instead of averaging per-micro-batch means.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

__all__ = ["LossModule", "build_model", "count_trainable", "init_mlm_head", "mlm_head", "trainable_state"]

_TASK_LOADER = {
    "sft": "causal-lm",
    "causal-lm": "causal-lm",
    "masked-lm": "masked-lm",
    "classification": "classification",
}
_DROPOUT_KEYS = (
    "attention_dropout",
    "attention_probs_dropout_prob",
    "hidden_dropout_prob",
    "hidden_dropout",
    "dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
)


def build_model(
    spec: str,
    task: str,
    method: str,
    *,
    from_scratch: bool,
    config_overrides: dict[str, Any],
    dropout: float | None,
    lora: Any,
    trainable_layers: int,
    num_labels: int | None,
    id2label: dict[int, str] | None,
    device: str,
    seed: int,
) -> PreTrainedModel:
    """Load or initialise the model for ``task`` and apply ``method``."""
    import torch
    import transformers

    from shoestring.models import load_config, load_model, resolve_model

    ref = resolve_model(spec)
    if ref.adapter:
        raise ShoestringError(
            f"'{spec}' is a LoRA adapter artifact; train from its base model ({ref.base}) or merge it first"
        )
    overrides = dict(config_overrides)
    if dropout is not None:
        cfg0 = load_config(ref)
        overrides.update({k: dropout for k in _DROPOUT_KEYS if hasattr(cfg0, k)})
    if task == "classification":
        overrides["num_labels"] = num_labels or 2
        if id2label:
            overrides["id2label"] = {int(k): v for k, v in id2label.items()}
            overrides["label2id"] = {v: int(k) for k, v in id2label.items()}
    loader_task = _TASK_LOADER[task]
    quant: dict[str, Any] = {}
    if method == "qlora":
        quant = _qlora_kwargs(device)
    torch.manual_seed(seed)
    if from_scratch:
        cfg = load_config(ref)
        for k, v in overrides.items():
            setattr(cfg, k, v)
        auto = {
            "causal-lm": transformers.AutoModelForCausalLM,
            "masked-lm": transformers.AutoModelForMaskedLM,
            "classification": transformers.AutoModelForSequenceClassification,
        }[loader_task]
        model = auto.from_config(cfg)
    elif loader_task == "masked-lm":
        loaded: Any = load_model(ref, loader_task, **overrides, output_loading_info=True)  # type: ignore[arg-type]
        model, info = loaded
        missing = [k for k in info.get("missing_keys", ()) if "position_ids" not in k]
        # A sentence encoder (e.g. all-MiniLM) ships without its MLM head: the loop then
        # initialises the head from the corpus (init_mlm_head) instead of leaving it random.
        setattr(model, "shoestring_untrained_head", bool(missing))  # noqa: B010
    else:
        model = load_model(ref, loader_task, **overrides, **quant)  # type: ignore[arg-type]
    if not quant:
        model = model.to(device)
    # A KV cache is useless in training and, when present, transformers skips the
    # packed-sequence (position-id reset) mask, letting packed documents attend to each other.
    model.config.use_cache = False
    if getattr(model.config, "pad_token_id", None) is None and task == "classification":
        model.config.pad_token_id = model.config.eos_token_id
    if method in ("lora", "qlora"):
        model = _apply_lora(model, task, lora, kbit=method == "qlora")
    elif method == "frozen":
        _freeze_lower(model, trainable_layers)
    return model


def _qlora_kwargs(device: str) -> dict[str, Any]:
    """4-bit NF4 loading through bitsandbytes; only where CUDA is present."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise ShoestringError(
            "method qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); on CPU use method: lora "
            "(same adapter, full-precision base)"
        )
    try:
        from transformers import BitsAndBytesConfig
    except ImportError:  # pragma: no cover - transformers always has it
        raise ShoestringError("qlora needs transformers with BitsAndBytesConfig") from None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ShoestringError("method qlora needs bitsandbytes; run `pip install 'shoestring[qlora]'`") from None
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
    )
    return {"quantization_config": bnb, "device_map": {"": torch.cuda.current_device()}}


def _apply_lora(model: PreTrainedModel, task: str, opts: Any, *, kbit: bool) -> PreTrainedModel:
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if kbit:
        # Casts norms to fp32 and enables input grads so checkpointed 4-bit layers backprop.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    task_type = {
        "sft": TaskType.CAUSAL_LM,
        "causal-lm": TaskType.CAUSAL_LM,
        "classification": TaskType.SEQ_CLS,
        "masked-lm": TaskType.TOKEN_CLS,
    }[task]
    targets = opts.target_modules
    if isinstance(targets, list) and "all-linear" in targets:
        targets = "all-linear"  # peft only understands the shorthand as a plain string
    cfg = LoraConfig(
        r=opts.r,
        lora_alpha=opts.alpha,
        lora_dropout=opts.dropout,
        target_modules=targets,
        task_type=task_type if task != "masked-lm" else None,
    )
    with warnings.catch_warnings():
        # peft calls a transformers property deprecated in 5.x; not actionable for users.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, cfg)  # type: ignore[return-value]


def _freeze_lower(model: PreTrainedModel, trainable_layers: int) -> None:
    """Freeze everything but the top ``trainable_layers`` blocks, final norm and head."""
    import torch

    layers: torch.nn.ModuleList | None = None
    for mod in model.modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 1:
            layers = mod
            break
    if layers is None:
        raise ShoestringError("method frozen: could not find the model's list of layers; use method: lora")
    for p in model.parameters():
        p.requires_grad_(False)
    keep = list(layers)[len(layers) - trainable_layers :] if trainable_layers else []
    for block in keep:
        for p in block.parameters():
            p.requires_grad_(True)
    in_layers = {id(p) for p in layers.parameters()}
    embed = model.get_input_embeddings()
    embed_ids = {id(p) for p in embed.parameters()} if embed is not None else set()
    # Everything after the layer stack (final norm, pooler, heads) trains; embeddings do not
    # (with tied embeddings the head is the embedding matrix, which then stays frozen too).
    for p in model.parameters():
        if id(p) not in in_layers and id(p) not in embed_ids:
            p.requires_grad_(True)


def count_trainable(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Named trainable tensors (what a checkpoint must store to resume)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def mlm_head(core: torch.nn.Module) -> torch.nn.Module | None:
    """The masked-LM head applied to the encoder's last hidden states (``cls`` for BERT,
    ``lm_head`` for RoBERTa-style models), or None for a layout we do not know."""
    for name in ("cls", "lm_head"):
        head = getattr(core, name, None)
        if head is not None and getattr(core, "base_model_prefix", None):
            return head  # type: ignore[no-any-return]
    return None


def init_mlm_head(model: torch.nn.Module, token_counts: torch.Tensor) -> list[str]:
    """Give an untrained BERT-style MLM head a sensible start; returns what was set.

    * the transform's dense layer starts as the identity (the encoder's last hidden state
      passes through GELU + LayerNorm instead of a random projection), so the tied decoder
      first scores tokens by similarity to the word embeddings;
    * the decoder bias starts at the log unigram frequency of the training tokens
      (add-one smoothed), so the first steps need not spend updates learning token
      frequencies and the gradient goes to context from step 1.
    """
    import torch

    core = _core_lm(model)
    head = mlm_head(core)
    done: list[str] = []
    if head is None:
        return done
    transform = getattr(getattr(head, "predictions", head), "transform", None)
    dense = getattr(transform, "dense", None) or getattr(head, "dense", None)
    with torch.no_grad():
        if isinstance(dense, torch.nn.Linear) and dense.in_features == dense.out_features:
            dense.weight.copy_(torch.eye(dense.in_features, dtype=dense.weight.dtype))
            if dense.bias is not None:
                dense.bias.zero_()
            done.append("transform=identity")
        out = core.get_output_embeddings()
        bias = getattr(out, "bias", None)
        if bias is not None and bias.numel() == token_counts.numel():
            prior = (token_counts.double() + 1.0).log() - (token_counts.double() + 1.0).sum().log()
            bias.copy_(prior.to(bias.dtype))
            done.append("decoder_bias=log_unigram")
    return done


def _core_lm(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model under PEFT wrappers."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model  # type: ignore[return-value]


class LossModule:
    """Factory for the task's loss ``nn.Module`` (kept a plain class so torch loads lazily)."""

    @staticmethod
    def create(model: torch.nn.Module, task: str) -> torch.nn.Module:
        import torch
        import torch.nn.functional as F

        class _Loss(torch.nn.Module):
            """forward(batch) -> (sum of token losses, number of label tokens)."""

            def __init__(self, model: torch.nn.Module, task: str) -> None:
                super().__init__()
                self.model = model
                self.task = task

            def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                if self.task == "classification":
                    out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                    y = batch["class_labels"]
                    return F.cross_entropy(out.logits.float(), y, reduction="sum"), torch.tensor(y.numel())
                if self.task == "masked-lm":
                    return self._masked(batch)
                return self._causal(batch)

            def _masked(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
                labels = batch["labels"]
                keep = labels != -100
                core = _core_lm(self.model)
                head = mlm_head(core)
                if head is None:  # unknown head layout: full logits, then select
                    out = self.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
                    logits = out.logits[keep].float()
                else:
                    # Encoder once, then the head (transform + V-way decoder) only at the ~15%
                    # selected positions: the decoder is most of an MLM step's FLOPs otherwise.
                    body = getattr(core, core.base_model_prefix)
                    hidden = body(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))[0]
                    logits = head(hidden[keep]).float()  # (N, V)
                return F.cross_entropy(logits, labels[keep], reduction="sum"), keep.sum()

            def _causal(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
                core = _core_lm(self.model)
                body = getattr(core, core.base_model_prefix)
                kwargs = {"input_ids": batch["input_ids"]}
                for k in ("attention_mask", "position_ids"):
                    if k in batch:
                        kwargs[k] = batch[k]
                hidden = body(**kwargs, use_cache=False).last_hidden_state  # (B, T, C)
                targets = batch["labels"][:, 1:]  # (B, T-1): token t+1 is predicted at t
                keep = targets != -100
                h = hidden[:, :-1][keep]  # (N, C): only positions with a target
                logits = core.get_output_embeddings()(h).float()  # (N, V)
                return F.cross_entropy(logits, targets[keep], reduction="sum"), keep.sum()

        return _Loss(model, task)
