"""The time model: matmul FLOPs (tied heads included) + streamed bytes, and its two-probe calibration."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig

from shoestring.plan.arch import describe_model
from shoestring.plan.calibrate import derive_rates
from shoestring.plan.flops import matmul_params_per_token, streamed_bytes, training_flops_per_token
from shoestring.plan.memory import TrainingSetup, estimate_training_memory


def _config(tied: bool) -> LlamaConfig:
    return LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=4096, max_position_embeddings=512, tie_word_embeddings=tied)


def test_a_tied_output_head_still_costs_its_matmul() -> None:
    tied, untied = describe_model(_config(True), "causal-lm"), describe_model(_config(False), "causal-lm")
    # The head's hidden x vocab matmul runs per token whether or not its weight is the embedding's.
    assert matmul_params_per_token(tied) == matmul_params_per_token(untied)
    # = the non-embedding parameters (minus 320 norm weights) + the head's 64 x 4096.
    assert matmul_params_per_token(tied) == tied.non_embedding_params - 5 * 64 + 64 * 4096
    assert tied.non_embedding_params < matmul_params_per_token(tied) / 2  # a 6N rule would miss most of the work
    fpt = training_flops_per_token(tied, 128, tied.n_params)
    assert fpt > 6 * matmul_params_per_token(tied)  # plus attention


def test_streamed_bytes_grow_with_lora_checkpointing_and_tokens() -> None:
    config = _config(True)
    shape = describe_model(config, "causal-lm")

    def stream(**kw: object) -> tuple[float, float]:
        s = TrainingSetup(**{"method": "full", "micro_batch_size": 2, "seq_len": 64, **kw})  # type: ignore[arg-type]
        return streamed_bytes(estimate_training_memory(config, shape, s, framework_overhead=0), s, shape)

    micro, step = stream()
    assert step == 92 * shape.n_params  # AdamW + clipping over every parameter
    assert stream(micro_batch_size=4)[0] == pytest.approx(2 * micro, rel=0.05)
    assert stream(activation_checkpointing=True)[0] > micro
    lora_micro, lora_step = stream(method="lora")
    assert lora_step < step / 5  # only the adapters are stepped
    assert lora_micro > micro  # ... but every adapted layer streams its input and output again


def test_two_probes_recover_both_rates() -> None:
    """Probe times made from known rates give those rates back; a contradictory pair falls back."""
    hw = {"cpu_fp32_flops": 1.0e11}
    r, w = 2.0e10, 3.0e9  # matmul FLOP/s, streamed bytes/s
    probes = [{"precision": "fp32", "flops": f, "streamed_bytes": b, "step_seconds": f / r + b / w}
              for f, b in ((5.0e10, 2.0e9), (2.0e9, 1.0e9))]
    cal = derive_rates(probes, hw)
    assert cal["utilisation_by_dtype"]["fp32"] == pytest.approx(r / 1.0e11)
    assert cal["stream_rate_by_dtype"]["fp32"] == pytest.approx(w)
    probes[1]["step_seconds"] = 10.0  # the small probe slower than the big one: no positive solution
    cal = derive_rates(probes, hw)
    assert "fp32" not in cal["stream_rate_by_dtype"]
    assert cal["utilisation"] == pytest.approx(5.0e10 / probes[0]["step_seconds"] / 1.0e11)


def test_frozen_lower_blocks_get_no_backward() -> None:
    shape = describe_model(_config(True), "causal-lm")
    full = training_flops_per_token(shape, 128, shape.n_params)
    top1 = training_flops_per_token(shape, 128, shape.layer_param_counts[-1], backward_layers=1)
    all2 = training_flops_per_token(shape, 128, shape.layer_param_counts[-1], backward_layers=2)
    # One of two blocks frozen: its input-gradient matmuls (2 per weight) and attention backward drop out.
    assert all2 - top1 == pytest.approx(2 * shape.layer_param_counts[0] + 2 * 2 * 128 * 4 * 16 / 2, rel=0.01)
    assert top1 < all2 < full
