"""Structured pruning really shrinks tensors and configs; distillation learns and resumes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from shoestring.compress import prune
from shoestring.compress.distill import DistillSettings, distill
from shoestring.compress.transforms import student_layer_indices
from shoestring.core.errors import ShoestringError


@pytest.fixture
def model(tiny_llama: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval()


def _roundtrip(m: torch.nn.Module, tmp_path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    m.save_pretrained(tmp_path)
    return AutoModelForCausalLM.from_pretrained(tmp_path).eval()


def test_prune_mlp_shrinks_and_reloads(model, heldout_blocks, tmp_path) -> None:  # type: ignore[no-untyped-def]
    n0 = sum(p.numel() for p in model.parameters())
    assert prune.prune_mlp(model, 0.5, heldout_blocks) == 64
    assert model.config.intermediate_size == 64
    assert model.model.layers[0].mlp.down_proj.weight.shape == (64, 64)
    assert sum(p.numel() for p in model.parameters()) == n0 - 3 * 3 * 64 * 64
    back = _roundtrip(model, tmp_path)
    with torch.inference_mode():
        assert torch.allclose(back(heldout_blocks[:1]).logits, model(heldout_blocks[:1]).logits, atol=1e-5)


def test_prune_heads_keeps_gqa_groups(model, heldout_blocks, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert prune.prune_heads(model, 0.5, heldout_blocks) == 2  # 2 KV groups x 1 query head each
    assert model.config.num_attention_heads == 2 and model.config.head_dim == 16
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (32, 64)
    back = _roundtrip(model, tmp_path)
    with torch.inference_mode():
        assert torch.allclose(back(heldout_blocks[:1]).logits, model(heldout_blocks[:1]).logits, atol=1e-5)


def test_drop_layers_renumbers_cache_and_generates(model, heldout_blocks) -> None:  # type: ignore[no-untyped-def]
    dropped = prune.drop_layers(model, 1, heldout_blocks)
    assert len(dropped) == 1 and 2 not in dropped  # the last block is never dropped
    assert model.config.num_hidden_layers == 2
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1]
    x = heldout_blocks[:1, :8]
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 12)


def test_bert_layers_and_mlp_but_not_heads(tiny_bert) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModel

    m = AutoModel.from_pretrained(tiny_bert).eval()
    ids = torch.randint(1000, 2000, (2, 16))
    prune.drop_layers(m, 1, ids)
    assert m.config.num_hidden_layers == 2 and len(m.encoder.layer) == 2
    assert prune.prune_mlp(m, 0.25, ids) == 32
    assert m.encoder.layer[0].output.dense.in_features == 32
    m(input_ids=ids)  # still runs
    with pytest.raises(ShoestringError, match="Llama-style"):
        prune.prune_heads(m, 0.5, ids)


def test_student_layer_indices() -> None:
    assert student_layer_indices(30, 20)[0] == 0 and student_layer_indices(30, 20)[-1] == 29
    assert len(student_layer_indices(30, 20)) == 20
    assert student_layer_indices(6, 3) == [0, 2, 5] or student_layer_indices(6, 3) == [0, 3, 5]
    with pytest.raises(ShoestringError):
        student_layer_indices(4, 5)


def test_distill_lowers_loss_and_resumes(model, heldout_blocks, tmp_path) -> None:  # type: ignore[no-untyped-def]
    student = copy.deepcopy(model)
    prune.keep_layers(student, [0, 2])
    blocks = heldout_blocks[:, :32]
    settings = DistillSettings(steps=8, learning_rate=3e-3, batch_size=2, ckpt_every=4)
    stats = distill(model, student, blocks, settings, task="causal-lm", work_dir=tmp_path)
    assert stats["last_loss"] < stats["first_loss"]
    assert (tmp_path / "distill-checkpoint" / "progress.json").is_file()  # checkpoint at step 4 survives
    again = copy.deepcopy(model)
    prune.keep_layers(again, [0, 2])
    stats2 = distill(model, again, blocks, settings, task="causal-lm", work_dir=tmp_path)
    assert stats2["resumed_from_step"] == 4
