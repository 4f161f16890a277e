"""Masked-LM pretraining + fill-mask, classification, embeddings, grad accumulation, plan deviations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lm_helpers import pydoc_chats, write_dataset
from rich.console import Console

from shoestring.core.artifact import Artifact
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace
from tiny_models import save_tiny_bert


def train(ws: Path, inputs: dict[str, Artifact], **cfg: Any) -> Artifact:
    stage = get_stage("train")
    config = stage.config.model_validate({"progress": False, "tracking": {"tensorboard": False}, **cfg})
    return Workspace(ws, console=Console(stderr=True, quiet=True)).run(stage, config, inputs).artifact


@pytest.mark.slow
def test_masked_lm_on_python_docs_then_fill_mask(tmp_path: Path) -> None:
    # An encoder saved without an MLM head (like all-MiniLM): the head is initialised from the corpus.
    encoder = save_tiny_bert(tmp_path / "enc", "BertModel", hidden=32, intermediate=64, layers=2, max_positions=128)
    art = train(tmp_path / "ws", {}, model=str(encoder), task="masked-lm", method="full", text_source="python-docs",
                max_examples=64, val_max_examples=16, seq_len=64, micro_batch_size=8, max_steps=6, lr=1e-3)  # fmt: skip
    st = art.stats
    assert st["task"] == "masked-lm" and (art.path / "model" / "model.safetensors").is_file()
    assert st["mlm_head_init"] == ["transform=identity", "decoder_bias=log_unigram"]
    # No plan, so nothing says memory is tight: glibc's default (fast) heap, and the manifest says why.
    assert art.manifest["cpu_allocator"] == {"bounded": False, "why": "auto: no plan, glibc's default heap"}
    # Consecutive paragraphs share rows (BERT-style), so there are fewer rows than paragraphs.
    assert st["rows"] < st["examples"]
    assert st["val_loss"] is not None and np.isfinite(st["val_loss"])
    from shoestring.train import fill_mask

    preds = fill_mask(str(art.path), "The cat sat on the [MASK].", top_k=5)
    assert len(preds) == 5
    scores = [p["score"] for p in preds]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
    assert all(p["token"] and "[MASK]" not in p["sequence"] for p in preds)


def test_masked_lm_head_runs_only_at_masked_positions(tiny_bert: Path) -> None:
    """The loss from the masked-positions-only path equals the model's own full-logits loss."""
    import torch
    import torch.nn.functional as F

    from shoestring.models import load_model
    from shoestring.train.modeling import LossModule

    model = load_model(str(tiny_bert), "masked-lm").eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (3, 20), generator=g)
    labels = torch.where(torch.rand(3, 20, generator=g) < 0.2, ids, torch.full_like(ids, -100))
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0
    labels[2, 15:] = -100
    total, n = LossModule.create(model, "masked-lm")(input_ids=ids, attention_mask=mask, labels=labels)
    logits = model(input_ids=ids, attention_mask=mask).logits
    ref = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), reduction="sum")
    assert int(n) == int((labels != -100).sum()) > 0
    assert torch.allclose(total, ref, rtol=1e-5)


def test_fill_mask_refuses_an_encoder_without_a_head(tiny_llama: Path) -> None:
    from shoestring.core.errors import ShoestringError
    from shoestring.train import fill_mask

    with pytest.raises(ShoestringError, match="mask"):
        fill_mask(str(tiny_llama), "The cat sat on the [MASK].")


@pytest.mark.slow
def test_sequence_classification_with_an_encoder(tmp_path: Path, tiny_bert: Path) -> None:
    from pydoc_data.topics import topics

    recs = [{"id": k, "text": " ".join(v.split())[:300], "label": "statement" if "stmt" in k or k in
             ("assert", "break", "continue", "del", "global", "import", "pass", "raise", "return") else "other"}
            for k, v in sorted(topics.items())]  # fmt: skip
    ds = write_dataset(tmp_path / "ds", recs[:64], recs[64:])
    art = train(tmp_path / "ws", {"dataset": Artifact.load(ds)}, dataset=str(ds), model=str(tiny_bert),
                task="classification", method="full", seq_len=64, micro_batch_size=8, max_steps=4, lr=1e-3)  # fmt: skip
    assert art.stats["task"] == "classification"
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(art.path / "model")
    assert model.config.num_labels == 2
    assert set(model.config.id2label.values()) == {"other", "statement"}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_dp_sgd_classification_reports_epsilon(tmp_path: Path, tiny_bert: Path, method: str) -> None:
    from pydoc_data.topics import topics

    recs = [{"id": k, "text": " ".join(v.split())[:200], "label": "long" if len(v) > 5000 else "short"}
            for k, v in sorted(topics.items())]  # fmt: skip
    ds = write_dataset(tmp_path / "ds", recs[:64], recs[64:])
    art = train(tmp_path / "ws", {"dataset": Artifact.load(ds)}, dataset=str(ds), model=str(tiny_bert),
                task="classification", method=method, seq_len=32, micro_batch_size=16, epochs=2, lr=1e-3,
                lora={"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
                privacy={"target_epsilon": 4.0, "accountant": "rdp"})  # fmt: skip
    rep = art.manifest["privacy"]
    assert rep["mode"] == "target-epsilon" and rep["steps"] > 0
    assert 0 < rep["epsilon_spent"] <= 4.0 + 1e-6 and rep["noise_multiplier"] > 0
    assert art.stats["epochs_run"] == 2 and 0.0 <= art.stats["validation"]["accuracy"] <= 1.0
    if method == "lora":
        assert (art.path / "adapter" / "adapter_config.json").is_file()
        assert art.manifest["base_model"] == str(tiny_bert)
        assert art.stats["trainable_parameters"] < art.stats["parameters"] / 10
    else:
        assert (art.path / "model" / "model.safetensors").is_file()


def test_privacy_on_a_language_model_task_is_a_one_line_error(tmp_path: Path, tiny_bert: Path) -> None:
    from shoestring.core.errors import ShoestringError

    with pytest.raises(ShoestringError, match="not masked-lm"):
        train(tmp_path / "ws", {}, model=str(tiny_bert), task="masked-lm", text_source="python-docs", max_steps=1,
              privacy={"noise_multiplier": 1.0})  # fmt: skip


def test_embeddings_for_encoder_and_decoder(tiny_bert: Path, tiny_llama: Path) -> None:
    from shoestring.train import embed, hidden_states

    texts = ["def f(x): return x", "The with statement", "lambda"]
    for model in (tiny_bert, tiny_llama):
        vecs = embed(str(model), texts)
        assert vecs.shape == (3, 32)
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
        # Batched (padded) embedding equals one-at-a-time: padding must not leak into the pooling.
        alone = np.stack([embed(str(model), [t])[0] for t in texts])
        np.testing.assert_allclose(vecs, alone, atol=1e-5)
    hs = hidden_states(str(tiny_bert), texts[:1], layer=0)
    assert hs[0].ndim == 2 and hs[0].shape[1] == 32


def test_grad_accumulation_normalises_over_real_tokens(tmp_path: Path, tiny_llama: Path) -> None:
    """2 micro-batches x accumulation 2 must equal 1 batch of 4 rows (rows hold different token counts)."""
    from safetensors.torch import load_file

    recs = pydoc_chats(8)
    for i, r in enumerate(recs):  # very different reply lengths per row
        r["messages"][1]["content"] = r["messages"][1]["content"][: 20 + 60 * i]
    ds = write_dataset(tmp_path / "ds", recs[:4])
    # Plain SGD so the update is proportional to the gradient (Adam would normalise tiny
    # float differences up to lr-sized ones).
    common = dict(dataset=str(ds), model=str(tiny_llama), task="sft", method="full", seq_len=128, max_steps=1,
                  lr=1.0, optimizer="sgd", momentum=0.0, packing=False, val_max_examples=0, warmup_steps=0,
                  precision="fp32")  # fmt: skip  # exact arithmetic check: no bf16 rounding
    inputs = {"dataset": Artifact.load(ds)}
    one = train(tmp_path / "a", inputs, micro_batch_size=4, grad_accum=1, **common)
    two = train(tmp_path / "b", inputs, micro_batch_size=2, grad_accum=2, **common)
    assert one.stats["train_loss_first"] == pytest.approx(two.stats["train_loss_first"], rel=1e-5)
    wa = load_file(str(one.path / "model" / "model.safetensors"))
    wb = load_file(str(two.path / "model" / "model.safetensors"))
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() < 1e-6, k


def test_plan_values_are_used_and_deviations_reported(tmp_path: Path, tiny_llama: Path, chat_dataset: Path) -> None:
    import json

    plan_dir = tmp_path / "plan"
    plan_dir.mkdir()
    plan = {"model": str(tiny_llama), "task": "causal-lm", "method": "lora", "seq_len": 64, "micro_batch_size": 2,
            "grad_accum": 1, "precision": "fp32", "activation_checkpointing": True,
            "lora": {"rank": 4, "targets": ["q_proj", "v_proj"], "dropout": 0.0},
            "device": {"kind": "cpu"}, "predicted": {"peak_memory_bytes": 123456789, "step_seconds": 0.5}}  # fmt: skip
    (plan_dir / "plan.json").write_text(json.dumps(plan))
    (plan_dir / "manifest.json").write_text(json.dumps({"kind": "plan", "hash": "p1", "stats": {}}))
    art = train(tmp_path / "ws", {"dataset": Artifact.load(chat_dataset), "plan": Artifact.load(plan_dir)},
                dataset=str(chat_dataset), plan=str(plan_dir), micro_batch_size=4, max_steps=2)  # fmt: skip
    st = art.stats
    assert st["task"] == "sft"  # chat records under a causal-lm plan
    assert st["seq_len"] == 64 and st["activation_checkpointing"] is True and st["micro_batch_size"] == 4
    assert st["deviations"] == ["micro_batch_size: planned 2, running 4"]
    assert st["predicted_peak_memory_bytes"] == 123456789 and st["peak_memory_bytes"] > 0
    assert art.manifest["plan_comparison"]["predicted"]["step_seconds"] == 0.5
    adapter_cfg = json.loads((art.path / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and sorted(adapter_cfg["target_modules"]) == ["q_proj", "v_proj"]
