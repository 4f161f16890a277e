"""train on the 3-node cluster: Ray Train workers (DDP over gloo) end where local torchrun DDP ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoestring.core.cluster import using_cluster
from shoestring.core.local_cluster import LocalCluster
from tiny_models import train_two_device_sft


@pytest.mark.slow
def test_ray_train_on_cluster_matches_local_ddp(
    ray_cluster: LocalCluster, tmp_path: Path, tiny_llama: Path, chat_dataset: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    local = train_two_device_sft(tmp_path / "local", chat_dataset, tiny_llama, executor="torchrun", strategy="ddp")
    with using_cluster(ray_cluster.address):
        ray_art = train_two_device_sft(tmp_path / "ray", chat_dataset, tiny_llama, on_cluster=True)
    st = ray_art.stats
    assert st["executor"] == "ray" and st["world_size"] == 2 and st["steps"] == 3
    assert len(st["rank_weight_digests"]) == 2 and len(set(st["rank_weight_digests"])) == 1, "ranks diverged"
    a = load_file(str(local.path / "model" / "model.safetensors"))
    b = load_file(str(ray_art.path / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=f"{k} differs from local DDP")
    assert abs(st["val_loss"] - local.stats["val_loss"]) < 1e-4
