"""plan_for_nodes on synthetic nodes: paper-scale jobs planned without a Ray cluster (meta-device models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shoestring.core.cluster import Node
from shoestring.core.config import parse_config
from shoestring.plan.cluster_plan import plan_for_nodes
from shoestring.plan.planner import PlanConfig

GiB = 1024**3
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096,
    "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "tie_word_embeddings": False,
}  # fmt: skip
SMOLLM2_1_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 24, "hidden_size": 2048,
    "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 49152,
    "max_position_embeddings": 8192, "tie_word_embeddings": True,
}  # fmt: skip


def _model(tmp_path: Path, name: str, cfg: dict[str, Any]) -> str:
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def _nodes(n: int, gpus: int = 8, accelerator: str = "A100-80G") -> list[Node]:
    return [Node(f"id{i}", f"node{i}", f"10.0.0.{i + 1}", 96.0, float(gpus), 1024 * GiB, 0, i == 0, accelerator)
            for i in range(n)]  # fmt: skip


def _cfg(model: str, **over: Any) -> PlanConfig:
    # One micro-batch size and checkpointing on keep the search (and the meta-device traces) small.
    body = {"model": model, "dataset_tokens": 100_000_000, "seq_len": 2048, "batch_size": 256,
            "micro_batch_size": 1, "activation_checkpointing": True, **over}  # fmt: skip
    return parse_config(PlanConfig, body, "test")


def test_smollm2_1_7b_lora_fits_one_8xa100_node(tmp_path: Path) -> None:
    model = _model(tmp_path, "smollm2-1.7b", SMOLLM2_1_7B)
    plan = plan_for_nodes(_cfg(model, method="lora"), _nodes(2))
    c = plan["cluster"]
    assert plan["fits"] and c["nodes_needed"] == 1 and not c["needs_more_than_one_node"]
    assert c["address"] is None and [t["nodes"] for t in c["tried"]] == [1]
    assert plan["device"]["name"] == "a100-80gb" and plan["devices"] == c["layout"]["data_parallel"] == 8
    assert 1.70e9 < plan["parameters"]["total"] < 1.72e9 and plan["parameters"]["trainable"] < 0.03e9
    assert plan["predicted"]["required_bytes"] <= plan["device"]["usable_bytes"]


def test_llama3_8b_full_needs_sharding_and_gets_a_zero_layout(tmp_path: Path) -> None:
    model = _model(tmp_path, "llama-3-8b", LLAMA3_8B)
    one_gpu = plan_for_nodes(_cfg(model, method="full"), _nodes(1, gpus=1))
    # 16 bytes a parameter of model states alone (128 GB) exceed one 80 GB GPU.
    assert not one_gpu["fits"] and one_gpu["parallelism"] == "single"
    assert one_gpu["predicted"]["required_bytes"] > 80 * GiB and "needs" in one_gpu["reason"]
    node = plan_for_nodes(_cfg(model, method="full"), _nodes(1))
    lay = node["cluster"]["layout"]
    assert node["fits"] and node["cluster"]["nodes_needed"] == 1
    assert lay["zero_stage"] >= 1 and lay["parallelism"] in ("zero1", "zero2", "zero3", "fsdp")
    ddp = [c for c in node["candidates"] if c["parallelism"] == "ddp"]
    assert ddp and not any(c["fits"] for c in ddp), "unsharded DDP must not fit 8B full fine-tuning"
    # Each GPU's optimizer steps only its shard: the step's scratch (4 B a parameter) is per shard.
    assert node["predicted"]["memory_terms"]["temporary_buffers"] == pytest.approx(4 * 8_030_261_248 / 8, abs=8)
    # Offloading is never free: it pays PCIe and the host's optimizer step on top of ZeRO-3's time.
    by = {(c["parallelism"], c["micro_batch_size"]): c["total_seconds"] for c in node["candidates"]}
    assert by[("zero3-offload", 1)] > by[("zero3", 1)]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_model_states_match_the_zero_paper_example(precision: str) -> None:
    # Rajbhandari et al. 2019, Fig. 1: Ψ = 7.5B on N_d = 64 GPUs, mixed-precision Adam (K = 12).
    from shoestring.plan.arch import ModelShape
    from shoestring.plan.memory import TrainingSetup, model_state_bytes, zero_model_states_bytes

    psi, nd = 7_500_000_000, 64
    shape = ModelShape(model_type="paper", task="causal-lm", n_params=psi, n_embedding_params=0, n_layers=0,
                       hidden_size=0, n_heads=1, n_kv_heads=1, head_dim=0, intermediate_size=0, vocab_size=0,
                       tied_embeddings=False, max_positions=None)  # fmt: skip
    printed = {"ddp": 120.0, "zero1": 31.4, "zero2": 16.6, "zero3": 1.9}  # GB (1e9 bytes), as the paper prints
    for stage, (par, gb) in enumerate(printed.items()):
        s = TrainingSetup(method="full", precision=precision, devices=nd, parallelism=par, device_kind="cuda")  # type: ignore[arg-type]
        ours = sum(model_state_bytes(shape, s))
        assert ours == pytest.approx(zero_model_states_bytes(psi, nd, stage), rel=0.01), par
        assert ours / 1e9 == pytest.approx(gb, rel=0.02), par


def test_more_nodes_never_raise_per_gpu_memory_when_sharded(tmp_path: Path) -> None:
    model = _model(tmp_path, "llama-3-8b", LLAMA3_8B)
    for par in ("zero1", "zero2", "zero3"):
        peaks, states = [], []
        for n in (1, 2, 4):
            plan = plan_for_nodes(_cfg(model, method="full", parallelism=par), _nodes(n), fewest=False)
            assert plan["parallelism"] == par and plan["devices"] == 8 * n
            terms = plan["predicted"]["memory_terms"]
            peaks.append(plan["predicted"]["peak_memory_bytes"])
            states.append(terms["weights"] + terms["gradients"] + terms["optimizer_states"])
        assert peaks == sorted(peaks, reverse=True), (par, peaks)
        assert states[0] > states[1] > states[2], (par, states)


def test_plan_for_cluster_is_read_cluster_then_plan_for_nodes(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoestring.plan import cluster_plan

    model = str(tiny_llama)
    cpu_nodes = [Node(f"id{i}", f"cpu{i}", f"10.0.1.{i}", 4.0, 0.0, (2 + i) * GiB, 0, i == 0) for i in range(3)]
    monkeypatch.setattr(cluster_plan, "read_cluster", lambda address: cpu_nodes)
    body = {"model": model, "dataset_tokens": 4000, "method": "full", "seq_len": 64}
    via_ray = cluster_plan.plan_for_cluster(parse_config(PlanConfig, {**body, "cluster": "10.0.0.1:6379"}, "t"), None)
    direct = plan_for_nodes(parse_config(PlanConfig, body, "t"), cpu_nodes)
    assert via_ray["cluster"]["address"] == "10.0.0.1:6379" and direct["cluster"]["address"] is None
    assert {**via_ray["cluster"], "address": None} == direct["cluster"]
    assert via_ray["predicted"] == direct["predicted"]
    # Several CPU nodes planned at once (one worker each) are allowed without a cluster address.
    three = plan_for_nodes(parse_config(PlanConfig, body, "t"), cpu_nodes, fewest=False)
    assert three["devices"] == 3 and three["cluster"]["use_nodes"] == ["cpu2", "cpu1", "cpu0"]
    assert three["device"]["usable_bytes"] == pytest.approx(2 * GiB, abs=1)  # the smallest node used
