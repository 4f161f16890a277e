"""End to end through the real CLI: LoRA SFT writes an adapter artifact the rest of the flow loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoestring.core.artifact import Artifact


def run_cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "shoestring.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


@pytest.mark.slow
def test_lora_sft_cli_writes_adapter_artifact(tmp_path: Path, tiny_llama: Path, chat_dataset: Path) -> None:
    args = ("train", "--workspace", str(tmp_path / "ws"), "--dataset", str(chat_dataset), "--model", str(tiny_llama),
            "--task", "sft", "--method", "lora", "--max-steps", "4", "--micro-batch-size", "4", "--seq-len", "128",
            "--lr", "0.01", "--no-progress")  # fmt: skip
    proc = run_cli(*args, cwd=tmp_path)
    art = Artifact.load(proc.stdout.strip().splitlines()[-1])
    assert art.kind == "model"
    assert art.manifest["base_model"] == str(tiny_llama)
    assert art.manifest["task"] == "sft"
    assert (art.path / "adapter" / "adapter_model.safetensors").is_file()
    assert (art.path / "adapter" / "tokenizer.json").is_file()
    # peft writes target_modules in string-hash order; sorted, two runs write the same bytes
    targets = json.loads((art.path / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert len(targets) > 1 and targets == sorted(targets)
    assert (art.path / "loss.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (art.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    st = art.stats
    for key in ("train_loss_first", "train_loss_last", "val_loss", "tokens", "tokens_per_second",
                "peak_memory_bytes", "step_seconds"):  # fmt: skip
        assert st[key] is not None and st[key] > 0, key
    assert st["packed"] is True and st["steps"] == 4
    # The fast paths ran (tiny_llama: 2 layers x 7 adapted Linears).
    assert st["fast_paths"]["packed_attention"] is True and st["fast_paths"]["lora_dropout_modules"] == 14
    from shoestring.core.metering import cpu_bf16_native

    assert st["precision"] == ("bf16" if cpu_bf16_native() else "fp32")
    assert ("frozen_weights_cast_once_bytes_saved" in st["fast_paths"]) == (st["precision"] == "bf16")
    assert st["trainable_parameters"] < st["parameters"]
    # The artifact loads through the shared model loader (what evaluate/compress/serve use).
    from shoestring.models import load_model

    model = load_model(str(art.path))
    assert hasattr(model, "peft_config")
    # A second identical run is a cache hit.
    again = run_cli(*args, cwd=tmp_path)
    assert "cached" in again.stderr


def test_qlora_on_cpu_is_a_one_line_error_naming_lora(tiny_llama: Path) -> None:
    from shoestring.core.errors import ShoestringError
    from shoestring.train.config import TrainConfig
    from shoestring.train.settings import resolve_settings

    cfg = TrainConfig(model=str(tiny_llama), method="qlora", device="cpu")
    with pytest.raises(ShoestringError, match="method: lora") as err:
        resolve_settings(cfg, None, cuda_available=False)
    assert "\n" not in str(err.value)
