"""DP-SGD for Hugging Face sequence classification (``task: classification`` + ``privacy:``).

The language-model loop batches by tokens, accumulates gradients and may run on several
processes; DP-SGD needs none of that but does need per-example gradients, Poisson-sampled
batches and an accountant. So a private classification run goes through the same epoch loop
as the tabular and recommender tasks (:func:`shoestring.train.tabular_fit.fit`, which owns
Opacus, resume and early stopping), with a transformers model inside:

* texts are tokenised once and padded to the longest example (<= ``seq_len``), so every
  batch is a plain tensor triple Opacus can sample from;
* every forward passes per-example ``position_ids`` / ``token_type_ids``
  (:func:`with_per_example_positions`), without which Opacus cannot form the position
  embedding's per-example gradient;
* ``method: lora`` trains only the adapters and the classifier head, which keeps the
  per-example gradients small (the 30k x 384 word embedding is frozen); ``method: full``
  also works but stores a per-example copy of every weight's gradient.

The (epsilon, delta) spent is read back from the accountant into the manifest (``privacy``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    import torch

    from shoestring.core.workspace import StageContext
    from shoestring.train.config import TrainConfig
    from shoestring.train.settings import Settings

__all__ = ["classification_tensors", "loss_and_accuracy", "train_dp_classifier"]


def classification_tensors(records: list[dict[str, Any]], tok: Any, *, text_field: str, label_field: str,
                           seq_len: int, label_to_id: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(input_ids, attention_mask, labels), padded to the longest example (records without a
    usable text or a known label are left out). Shared with federated classification."""
    import torch

    from shoestring.train import data as D

    ex, _ = D.build_examples(records, tok, task="classification", seq_len=seq_len, text_field=text_field,
                             messages_field="messages", label_field=label_field,
                             label_to_id=label_to_id)  # fmt: skip
    if not ex:
        return torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    width = max(len(e["input_ids"]) for e in ex)
    ids = torch.full((len(ex), width), int(tok.pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(ex), width), dtype=torch.long)
    for i, e in enumerate(ex):
        ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[i, : len(e["input_ids"])] = 1
    return ids, mask, torch.tensor([e["label"] for e in ex], dtype=torch.long)


def loss_and_accuracy(model: torch.nn.Module, t: tuple[torch.Tensor, ...], batch: int = 64) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on (ids, mask, labels)."""
    import torch
    import torch.nn.functional as F

    from shoestring.train.privacy import with_per_example_positions

    ids, mask, y = t
    loss, correct = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(y), batch):
            out = model(**with_per_example_positions({"input_ids": ids[i : i + batch], "attention_mask": mask[i : i + batch]}))
            loss += float(F.cross_entropy(out.logits.float(), y[i : i + batch], reduction="sum"))
            correct += int((out.logits.argmax(-1) == y[i : i + batch]).sum())
    model.train(was_training)
    n = max(len(y), 1)
    return {"loss": loss / n, "accuracy": correct / n}


def train_dp_classifier(cfg: TrainConfig, s: Settings, ctx: StageContext) -> dict[str, Any]:
    """Differentially private fine-tuning of ``s.model`` with a classification head."""
    import torch
    from torch.utils.data import TensorDataset

    from shoestring.core.artifact import atomic_write_json
    from shoestring.models import load_tokenizer
    from shoestring.train import data as D
    from shoestring.train.modeling import build_model, count_trainable
    from shoestring.train.privacy import check_dp_compatible, with_per_example_positions
    from shoestring.train.tabular_fit import fit, fit_settings, torch_threads, write_loss_png, write_metrics_jsonl

    assert cfg.privacy is not None
    if s.method == "qlora":
        raise ShoestringError("privacy with method qlora is not supported; use method: lora or full")
    ds = ctx.inputs.get("dataset")
    if ds is None:
        raise ShoestringError("classification needs `dataset:` (train.jsonl / validation.jsonl with text and label)")
    splits = {name: D.read_records(ds.path / f"{name}.jsonl", cfg.max_examples if name == "train" else None)
              for name in ("train", "validation", "test")}  # fmt: skip
    labels = sorted({str(r[cfg.label_field]) for r in splits["train"] if r.get(cfg.label_field) is not None})
    if len(labels) < 2:
        raise ShoestringError(f"classification needs at least 2 distinct '{cfg.label_field}' values in train.jsonl")
    label_to_id = {lab: i for i, lab in enumerate(labels)}
    tok = load_tokenizer(s.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    t = {k: classification_tensors(v, tok, text_field=cfg.text_field, label_field=cfg.label_field, seq_len=s.seq_len,
                                   label_to_id=label_to_id) for k, v in splits.items()}  # fmt: skip
    if len(t["train"][2]) == 0:
        raise ShoestringError(f"no usable training records (field '{cfg.text_field}' or '{cfg.label_field}' missing)")
    model = build_model(
        s.model, "classification", s.method,
        from_scratch=cfg.from_scratch, config_overrides=cfg.config_overrides, dropout=cfg.dropout,
        lora=cfg.lora, trainable_layers=cfg.trainable_layers, num_labels=len(labels),
        id2label={i: lab for lab, i in label_to_id.items()}, device="cpu", seed=cfg.seed,
    )  # fmt: skip
    model.train()  # from_pretrained returns eval mode; Opacus validates a training-mode model
    model = check_dp_compatible(model, fix=cfg.privacy.fix_incompatible)
    trainable, total_params = count_trainable(model)
    val = t["validation"] if len(t["validation"][2]) else t["train"]

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        out = m(**with_per_example_positions({"input_ids": batch[0], "attention_mask": batch[1]}))
        return torch.nn.functional.cross_entropy(out.logits.float(), batch[2])

    settings = fit_settings(cfg, lr=s.lr, batch_size=s.micro_batch_size, patience=3, console=ctx.console,
                            suggested_epochs=5)  # fmt: skip
    with torch_threads(cfg.threads or torch.get_num_threads()):
        result = fit(model, TensorDataset(*t["train"]), loss_fn, lambda m: loss_and_accuracy(m, val),
                     monitor="accuracy", higher_is_better=True, settings=settings, work_dir=ctx.work_dir,
                     privacy=cfg.privacy, console=ctx.console)  # fmt: skip
        test = loss_and_accuracy(model, t["test"]) if len(t["test"][2]) else None
    kind = "adapter" if s.method == "lora" else "model"
    out = ctx.out_dir / kind
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if kind == "adapter":
        ctx.extra_manifest["base_model"] = s.model
    write_metrics_jsonl(ctx.out_dir / "metrics.jsonl", result.rows)
    write_loss_png(ctx.out_dir / "loss.png", result.rows, "accuracy", f"DP-SGD {s.method} on {s.model}")
    atomic_write_json(out / "labels.json", label_to_id)  # same place and shape as the LM loop's output
    stats: dict[str, Any] = {
        "task": "classification", "method": s.method, "model": s.model, "device": "cpu",
        "classes": len(labels), "rows": {k: len(v[2]) for k, v in t.items()}, "seq_len": int(t["train"][0].shape[1]),
        "validation": result.best, "test": test, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "steps": result.steps, "train_seconds": round(result.train_seconds, 3), "stopped_by": result.stopped,
        "resumed_from_epoch": result.resumed_from_epoch, "lr": settings.lr, "batch_size": settings.batch_size,
        "trainable_parameters": trainable, "parameters": total_params,
        "train_loss_first": next((r["loss"] for r in result.rows if "loss" in r), None),
        "train_loss_last": next((r["loss"] for r in reversed(result.rows) if "loss" in r), None),
    }  # fmt: skip
    if result.privacy is not None:
        stats["privacy"] = result.privacy
        ctx.extra_manifest["privacy"] = result.privacy
    return stats
