"""The same training config runs as 2 processes (gloo on CPU) under torchrun (Ray Train: tests/cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from shoestring.core.artifact import Artifact
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace


def _train(ws: Path, ds: Path, model: Path, **extra: object) -> Artifact:
    stage = get_stage("train")
    cfg = stage.config.model_validate({
        "dataset": str(ds), "model": str(model), "task": "sft", "method": "full", "seq_len": 64,
        "micro_batch_size": 2, "max_steps": 3, "lr": 1e-3, "val_max_examples": 8, "progress": False,
        "tracking": {"tensorboard": False}, "devices": 2, "threads": 1, **extra,
    })  # fmt: skip
    return (
        Workspace(ws, console=Console(stderr=True, quiet=True)).run(stage, cfg, {"dataset": Artifact.load(ds)}).artifact
    )


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(
    tmp_path: Path, tiny_llama: Path, chat_dataset: Path
) -> None:
    art = _train(tmp_path / "ws", chat_dataset, tiny_llama, executor="torchrun", strategy="ddp")
    st = art.stats
    assert st["world_size"] == 2 and st["strategy"] == "ddp" and st["steps"] == 3
    digests = st["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1], "ranks diverged"
    assert (art.path / "model" / "model.safetensors").is_file()
    assert st["val_loss"] is not None


def test_fsdp_on_cpu_is_a_clear_error(tmp_path: Path, tiny_llama: Path, chat_dataset: Path) -> None:
    from shoestring.core.errors import ShoestringError

    with pytest.raises(ShoestringError, match="strategy: ddp"):
        _train(tmp_path / "ws", chat_dataset, tiny_llama, executor="torchrun", strategy="fsdp", device="cpu")
