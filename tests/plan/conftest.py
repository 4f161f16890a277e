"""Fixtures for planner tests: tiny real configs saved to folders, a tiny dataset artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-session cache with a fixed hardware probe, so tests never benchmark the CPU."""
    import os

    real = Path(os.environ.get("SHOESTRING_CACHE", Path.home() / ".cache" / "shoestring")).expanduser()
    cache = tmp_path_factory.getbasetemp() / "ss-cache"
    cache.mkdir(exist_ok=True)
    # Share converted packaged models (a GGUF conversion takes tens of seconds), not the probe.
    (real / "models").mkdir(parents=True, exist_ok=True)
    if not (cache / "models").exists():
        (cache / "models").symlink_to(real / "models")
    monkeypatch.setenv("SHOESTRING_CACHE", str(cache))
    from shoestring.plan import hardware

    path = hardware.hardware_cache_path()
    if not path.exists():
        hardware.save_hardware({
            "version": hardware.PROBE_VERSION, "machine": "test", "cpu_cores": 2, "torch_threads": 2,
            "ram_bytes": 24 * 1024**3, "cpu_capability": "test", "cpu_fp32_flops": 1.0e11,
            "cpu_bf16_flops": 5.0e10, "cpu_bandwidth_bytes_s": 1.0e10, "gpus": [],
        })


def tiny_llama_config(**over: object) -> dict[str, object]:
    cfg: dict[str, object] = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 160,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
        "max_position_embeddings": 512, "tie_word_embeddings": False,
    }
    cfg.update(over)
    return cfg


@pytest.fixture
def tiny_llama(tmp_path: Path) -> Path:
    """A folder with only a config.json: a 2-layer GQA Llama."""
    d = tmp_path / "tiny-llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(tiny_llama_config()))
    return d


@pytest.fixture
def chat_dataset(tmp_path: Path) -> Path:
    """A dataset artifact folder (as curate writes it) with chat records and one bad line."""
    d = tmp_path / "dataset-art"
    d.mkdir()
    lines = [
        json.dumps({"id": str(i), "text": f"Q{i} A{i}", "messages": [
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]})
        for i in range(40)
    ]
    lines.append(json.dumps({"id": "x", "label": 1}))  # neither text nor messages: counted as skipped
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    (d / "manifest.json").write_text(json.dumps({"kind": "dataset", "hash": "d" * 64, "stats": {}}))
    return d
