"""Quantised layers: accuracy against float, safe save/reload, loud failure for plain loaders."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from shoestring.compress.modelio import load_compressed, save_model_folder
from shoestring.compress.quant import dequantize_model, quantize_model
from shoestring.compress.regression import measure_pair, weight_bytes
from shoestring.core.errors import ShoestringError
from shoestring.models.quantized import QUANT_FILE, QUANT_WEIGHTS, quantized_modules


@pytest.fixture(scope="module")
def parent(tiny_llama: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval()


@pytest.mark.parametrize(("method", "max_kl"), [("int8-dynamic", 2e-3), ("int8-weight", 2e-3), ("int4-weight", 5e-2)])
def test_quantize_save_reload(parent, heldout_blocks, tmp_path, method, max_kl) -> None:  # type: ignore[no-untyped-def]
    child = copy.deepcopy(parent)
    spec = quantize_model(child, method)
    # every linear layer but the tied output head: 3 layers x 7 projections
    assert len(spec.modules) == 21 and all("lm_head" not in n for n in spec.modules)
    save_model_folder(child, None, tmp_path, "causal-lm", spec)
    assert (tmp_path / QUANT_WEIGHTS).is_file() and (tmp_path / QUANT_FILE).is_file()
    assert not (tmp_path / "model.safetensors").exists()  # a plain loader must not find float weights
    back = load_compressed(tmp_path)
    x = heldout_blocks[:2]
    with torch.inference_mode():
        assert torch.equal(back(x).logits, child(x).logits)
    rep = measure_pair(
        parent, back, heldout_blocks[:2], task="causal-lm", latency_tokens=16, latency_runs=1, gen_tokens=0
    )
    assert 0.0 <= rep["kl_mean"] < max_kl
    assert abs(rep["ppl_increase_pct"]) < 5.0
    assert rep["child_weight_bytes"] < rep["parent_weight_bytes"]
    assert {m.backend for m in quantized_modules(back).values()} != {"unset"}


def test_int4_error_is_within_half_a_step(parent) -> None:  # type: ignore[no-untyped-def]
    child = copy.deepcopy(parent)
    quantize_model(child, "int4-weight", group_size=32)
    name = "model.layers.0.mlp.up_proj"
    w = parent.get_submodule(name).weight.detach()
    q = child.get_submodule(name)
    err = (q.dequantized_weight() - w).abs().reshape(w.shape[0], -1, 32)
    assert bool((err <= q.scales[..., None] / 2 + 1e-6).all())


def test_dequantize_reproduces_weight_grid(parent, heldout_blocks) -> None:  # type: ignore[no-untyped-def]
    child = copy.deepcopy(parent)
    quantize_model(child, "int8-dynamic")
    expected = child.get_submodule("model.layers.1.self_attn.o_proj").dequantized_weight()
    assert dequantize_model(child) == 21
    assert quantized_modules(child) == {}
    assert torch.equal(child.get_submodule("model.layers.1.self_attn.o_proj").weight.detach(), expected)


def test_reload_rejects_mismatched_weights(parent, tmp_path) -> None:  # type: ignore[no-untyped-def]
    child = copy.deepcopy(parent)
    spec = quantize_model(child, "int8-weight")
    save_model_folder(child, None, tmp_path, "causal-lm", spec)
    spec.modules = spec.modules[:-1]  # the JSON no longer describes the tensors
    (tmp_path / QUANT_FILE).write_text(spec.to_json())
    with pytest.raises(ShoestringError, match="does not match its config"):
        load_compressed(tmp_path)


def test_weight_bytes_counts_tied_once(parent) -> None:  # type: ignore[no-untyped-def]
    n = sum(p.numel() for p in parent.parameters())  # parameters() already de-duplicates ties
    assert weight_bytes(parent) == n * 4
