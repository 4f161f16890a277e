"""The same training config runs as 2 processes (gloo on CPU) under torchrun (Ray Train: tests/cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_models import train_two_device_sft


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(
    tmp_path: Path, tiny_llama: Path, chat_dataset: Path
) -> None:
    art = train_two_device_sft(tmp_path / "ws", chat_dataset, tiny_llama, executor="torchrun", strategy="ddp")
    st = art.stats
    assert st["world_size"] == 2 and st["strategy"] == "ddp" and st["steps"] == 3
    digests = st["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1], "ranks diverged"
    assert (art.path / "model" / "model.safetensors").is_file()
    assert st["val_loss"] is not None


def test_fsdp_on_cpu_is_a_clear_error(tmp_path: Path, tiny_llama: Path, chat_dataset: Path) -> None:
    from shoestring.core.errors import ShoestringError

    with pytest.raises(ShoestringError, match="strategy: ddp"):
        train_two_device_sft(
            tmp_path / "ws", chat_dataset, tiny_llama, executor="torchrun", strategy="fsdp", device="cpu"
        )
