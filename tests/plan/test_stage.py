"""The plan stage end to end: plan.json contract, dataset token counting, the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace
from shoestring.plan.stage import PlanConfig

CONTRACT = ("model", "task", "method", "seq_len", "micro_batch_size", "grad_accum", "precision",
            "activation_checkpointing", "predicted", "device")


def _plan(tmp_path: Path, cfg: PlanConfig, inputs: dict | None = None) -> dict:
    cfg = cfg.model_copy(update={"calibrate": False})  # contracts, not this machine (tests/plan/test_fresh_machine.py)
    ws = Workspace(tmp_path / "ws")
    res = ws.run(get_stage("plan"), cfg, inputs or {})
    return json.loads((res.artifact.path / "plan.json").read_text())


def test_plan_json_has_the_contract_keys_and_memory_terms(tmp_path: Path, tiny_llama: Path) -> None:
    plan = _plan(tmp_path, PlanConfig(model=str(tiny_llama), dataset_tokens=100_000, device="cpu", seq_len=128,
                                      lora_rank=8, lora_targets=["q_proj", "v_proj"]))
    for key in CONTRACT:
        assert key in plan, key
    pred = plan["predicted"]
    for key in ("peak_memory_bytes", "step_seconds", "total_seconds", "cost_usd"):
        assert pred[key] > 0, key
    terms = pred["memory_terms"]
    # Not all terms are live at once (activations are gone by the optimizer step).
    assert terms["weights"] + terms["activations"] < pred["peak_memory_bytes"] <= sum(terms.values())
    from shoestring.core.metering import cpu_bf16_native

    # auto precision on a CPU: bf16 autocast where it multiplies bf16 natively (the trainer's rule too)
    assert plan["fits"] and plan["precision"] == ("bf16-mixed" if cpu_bf16_native() else "fp32")
    assert plan["micro_batch_size"] * plan["grad_accum"] == 8
    # LoRA on q_proj+v_proj of a 64-wide, 2-layer GQA model: r·(in+out) per adapted Linear.
    assert plan["parameters"]["trainable"] == 2 * 8 * ((64 + 64) + (64 + 32))
    assert plan["data"]["sequences_per_epoch"] == -(-100_000 // 128)


def test_dataset_tokens_are_counted_with_the_chat_template(tmp_path: Path, chat_dataset: Path) -> None:
    from shoestring.core.artifact import Artifact
    from shoestring.models.loading import load_tokenizer

    art = Artifact.load(chat_dataset)
    plan = _plan(tmp_path, PlanConfig(model="smollm2-135m-instruct", dataset=str(chat_dataset), device="cpu"),
                 {"dataset": art})
    tok = load_tokenizer("smollm2-135m-instruct")
    rec = json.loads((chat_dataset / "train.jsonl").read_text().splitlines()[0])
    one = len(tok(tok.apply_chat_template(rec["messages"], tokenize=False))["input_ids"])
    assert plan["data"]["records"] == 40 and plan["data"]["skipped"] == 1
    assert plan["data"]["max_tokens"] >= one > 20  # the template adds the system prompt and role markers
    assert plan["parameters"]["total"] == 134_515_008


def test_nothing_fits_names_the_smallest_change(tmp_path: Path, tiny_llama: Path) -> None:
    from shoestring.plan.arch import describe_model, load_model_config
    from shoestring.plan.memory import TrainingSetup, estimate_training_memory

    config = load_model_config(str(tiny_llama / "config.json"))
    shape = describe_model(config, "causal-lm")
    setup = TrainingSetup(method="full", seq_len=8192, activation_checkpointing=True, micro_batch_size=1)
    long = estimate_training_memory(config, shape, setup).required_bytes
    half = estimate_training_memory(config, shape, TrainingSetup(**{**setup.__dict__, "seq_len": 4096})).required_bytes
    limit_gib = (long + half) / 2 / 1024**3  # the half-length run fits, the full-length one does not
    plan = _plan(tmp_path, PlanConfig(model=str(tiny_llama), dataset_tokens=10_000, device="cpu", seq_len=8192,
                                      memory_limit_gib=limit_gib, method="full"))
    assert not plan["fits"]
    assert "needs" in plan["reason"]
    assert "--seq-len 4096" in plan["suggestion"]


@pytest.mark.slow
def test_cli_plan_prints_a_table_and_unknown_devices_are_named(tmp_path: Path, tiny_llama: Path) -> None:
    env = {**os.environ, "COLUMNS": "160"}
    cmd = [sys.executable, "-m", "shoestring.cli", "plan", "--model", str(tiny_llama), "--dataset-tokens", "50000",
           "--device", "a100-80gb", "--method", "full", "-w", str(tmp_path / "ws")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "predicted peak" in out.stdout and "optimizer states" in out.stdout
    art = Path(out.stdout.strip().splitlines()[-1])
    plan = json.loads((art / "plan.json").read_text())
    assert plan["device"]["name"] == "a100-80gb" and plan["precision"] == "bf16-mixed"
    from shoestring.core.errors import ShoestringError
    from shoestring.plan.hardware import resolve_device

    with pytest.raises(ShoestringError, match="unknown device 'tpu-v9'; use auto, cpu, or one of: a100-40gb"):
        resolve_device("tpu-v9")



@pytest.mark.parametrize("task", ["masked-lm", "classification"])
def test_plan_works_offline_for_bare_bert_configs(tmp_path: Path, task: str) -> None:
    """A folder holding only a BERT config.json (no weights, no tokenizer, no hub): both encoder tasks plan."""
    cfg = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": 1000, "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 256}
    folder = tmp_path / "tiny-bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    plan = _plan(tmp_path, PlanConfig(model=str(folder), task=task, method="full", dataset_tokens=20_000,
                                      device="cpu", seq_len=128))
    assert plan["task"] == task and plan["fits"]
    terms = plan["predicted"]["memory_terms"]
    if task == "masked-lm":  # vocabulary-sized logits buffers exist only with an LM head
        assert terms["logits_buffers"] > 0
        assert plan["parameters"]["total"] > 1000 * 64  # the MLM head's decoder is tied to the embeddings
    else:
        assert terms["logits_buffers"] == 0
    # The CPU trace holds BERT's math-kernel attention tensors (dropout 0.1): 3·B·heads·T²·4 bytes per layer.
    assert terms["activations"] > 2 * 3 * plan["micro_batch_size"] * 4 * 128 * 128 * 4


def test_plan_classification_of_a_packaged_model(tmp_path: Path) -> None:
    """A packaged name resolves offline for a task other than the one it ships for."""
    plan = _plan(tmp_path, PlanConfig(model="all-minilm-l6-v2", task="classification", method="lora",
                                      dataset_tokens=50_000, device="cpu", seq_len=128))
    assert plan["fits"] and plan["method"] == "lora"
    assert 0 < plan["parameters"]["trainable"] < plan["parameters"]["total"] / 10


def test_a_cached_plan_is_planned_again_after_the_machine_is_calibrated_again(
        tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoestring.plan import hardware

    cache = tmp_path / "cache"
    cache.mkdir()
    probe = json.loads(hardware.hardware_cache_path().read_text())
    monkeypatch.setenv("SHOESTRING_CACHE", str(cache))
    hardware.save_hardware({k: v for k, v in probe.items() if k != "calibration"})
    ws = Workspace(tmp_path / "ws")
    cfg = PlanConfig(model=str(tiny_llama), dataset_tokens=10_000, device="cpu", seq_len=64, calibrate=False)

    def plan() -> tuple[bool, dict]:
        res = ws.run(get_stage("plan"), cfg, {})
        return res.cached, json.loads((res.artifact.path / "plan.json").read_text())

    cached, first = plan()
    assert not cached and first["calibration"]["measured_at"] is None
    assert plan()[0]  # nothing changed: reused
    hardware.save_hardware({**probe, "calibration": {"measured_at": "2026-01-02T03:04:05Z"}})
    cached, again = plan()
    assert not cached and again["calibration"]["measured_at"] == "2026-01-02T03:04:05Z"
    assert again["calibration"]["fingerprint"] == hardware.fingerprint_key()
    assert plan()[0]
    assert get_stage("train").stale is None  # only stages that depend on machine state declare it
