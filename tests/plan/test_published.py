"""Published numbers the planner must reproduce: ZeRO paper, DeepSpeed's estimator, KV caches, 6ND."""

from __future__ import annotations

import pytest

from shoestring.plan.flops import chinchilla_flops, training_flops_per_token
from shoestring.plan.memory import (
    deepspeed_zero2_model_states,
    deepspeed_zero3_model_states,
    kv_cache_bytes,
    zero_model_states_bytes,
)

GB = 1e9
GiB = 1024**3


def test_zero_paper_figure1_model_states() -> None:
    # Rajbhandari et al. 2019, Fig. 1: Ψ = 7.5B, N_d = 64, K = 12 (mixed-precision Adam).
    psi, nd = 7.5e9, 64
    assert zero_model_states_bytes(psi, nd, 0) / GB == pytest.approx(120.0)
    assert round(zero_model_states_bytes(psi, nd, 1) / GB, 1) == 31.4
    assert round(zero_model_states_bytes(psi, nd, 2) / GB, 1) == 16.6
    assert round(zero_model_states_bytes(psi, nd, 3) / GB, 1) == 1.9


def test_deepspeed_zero3_estimator_example_t0_3b() -> None:
    # DeepSpeed/transformers docs: bigscience/T0_3B, 2783M params, 65M largest layer, 1 GPU.
    # The docs print GiB with two decimals from the exact counts; the counts they print are
    # rounded to 1M, hence the 1% tolerance.
    total, largest = 2783e6, 65e6
    table = {  # (offload_params, offload_optimizer, zero_init): (per CPU, per GPU) GiB
        (True, True, True): (70.00, 0.25), (True, True, False): (70.00, 0.25),
        (False, True, True): (62.23, 5.43), (False, True, False): (62.23, 5.43),
        (False, False, True): (0.37, 46.91), (False, False, False): (15.56, 46.91),
    }
    for (op, oo, zi), (cpu, gpu) in table.items():
        c, g = deepspeed_zero3_model_states(int(total), int(largest), offload_params=op, offload_optimizer=oo,
                                            zero_init=zi)
        assert c / GiB == pytest.approx(cpu, rel=0.01, abs=0.01)
        assert g / GiB == pytest.approx(gpu, rel=0.01, abs=0.01)


def test_deepspeed_zero2_estimator_example_8_gpus() -> None:
    # DeepSpeed docs: T0_3B (2851M params), 1 node x 8 GPUs.
    total = int(2851e6)
    cpu, gpu = deepspeed_zero2_model_states(total, gpus_per_node=8, cpu_offload=True)
    assert (round(cpu / GiB, 2), round(gpu / GiB, 2)) == pytest.approx((127.45, 5.31), abs=0.05)
    cpu, gpu = deepspeed_zero2_model_states(total, gpus_per_node=8, cpu_offload=False)
    assert (round(cpu / GiB, 2), round(gpu / GiB, 2)) == pytest.approx((127.45, 15.93), abs=0.05)
    # ZeRO-2 without offload equals the paper's P_os+g for fp16 weights: 2Ψ + 2Ψ... on one GPU.
    one = deepspeed_zero2_model_states(total, gpus_per_node=1, cpu_offload=False)[1]
    assert one == pytest.approx(zero_model_states_bytes(total, 1, 2, k=12, weight_bytes=2, grad_bytes=2) + 4 * total)


def _shape(model_type: str, **kw: object):
    from transformers import AutoConfig

    from shoestring.plan.arch import describe_model

    cfg = AutoConfig.for_model(model_type, **kw)
    return describe_model(cfg, "causal-lm")


@pytest.mark.slow
def test_parameter_counts_and_kv_cache_of_known_architectures() -> None:
    llama2 = _shape("llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=32, vocab_size=32000)
    llama3 = _shape("llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192)
    mistral = _shape("mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)
    # Parameter counts of the released checkpoints (meta-device build, nothing downloaded).
    assert llama2.n_params == 6_738_415_616
    assert llama3.n_params == 8_030_261_248
    assert mistral.n_params == 7_241_732_096
    # KV cache in fp16: Llama-2-7B 0.5 MiB/token (2 GiB at 4k); GQA cuts Llama-3-8B and Mistral-7B 4x.
    assert kv_cache_bytes(llama2, 1, 1) == 524_288
    assert kv_cache_bytes(llama2, 1, 4096) == 2 * GiB
    assert kv_cache_bytes(llama3, 1, 8192) == 1 * GiB
    assert kv_cache_bytes(mistral, 1, 1) == 131_072
    assert kv_cache_bytes(llama3, 8, 8192) == 8 * GiB


def test_gpt3_training_compute() -> None:
    # Brown et al. 2020, Table D.1: GPT-3 175B (174.6B params) on 300B tokens ≈ 3.14e23 FLOPs.
    assert chinchilla_flops(174.6e9, 300e9) == pytest.approx(3.14e23, rel=0.002)
    # Chinchilla (Hoffmann et al. 2022): 70B params on 1.4T tokens ≈ 5.76e23 FLOPs.
    assert chinchilla_flops(70e9, 1.4e12) == pytest.approx(5.76e23, rel=0.03)


def test_flops_per_token_is_6n_plus_attention() -> None:
    from shoestring.plan.arch import ModelShape

    shape = ModelShape(model_type="gpt2", task="masked-lm", n_params=1_000_000 + 50_000, n_embedding_params=50_000,
                       n_layers=4, hidden_size=128, n_heads=4, n_kv_heads=4, head_dim=32, intermediate_size=512,
                       vocab_size=1000, tied_embeddings=False, max_positions=512)
    n = 1_000_000
    full = training_flops_per_token(shape, 256, trainable=shape.n_params)
    assert full == pytest.approx(6 * n + 3 * 2 * 4 * 256 * 128)
    # Frozen base (LoRA-like, 1% trainable): no weight gradients for the base -> about 4N.
    lora = training_flops_per_token(shape, 256, trainable=10_000)
    assert lora == pytest.approx(4 * n + 3 * 2 * 4 * 256 * 128 + 2 * 10_000)
    ckpt = training_flops_per_token(shape, 256, trainable=shape.n_params, checkpointing=True)
    assert ckpt == pytest.approx(full + 2 * n + 2 * 4 * 256 * 128)
