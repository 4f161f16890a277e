"""train on the 3-node cluster: Ray Train workers (DDP over gloo) end where local torchrun DDP ends,
also when a node that runs one of them dies mid-run."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from shoestring.core.artifact import Artifact
from shoestring.core.cluster import using_cluster
from shoestring.core.local_cluster import LocalCluster
from shoestring.train.executors import RAY_PLACEMENTS
from tiny_models import train_two_device_sft

# 2 epochs of 8 steps (32 rows, 2 ranks x micro-batch 2), every step logged, validation every 4.
RUN = {"max_steps": 16, "epochs": 2, "log_every": 1, "eval_every": 4}


@pytest.fixture(scope="module")
def uninterrupted_ddp(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, chat_dataset: Path) -> Artifact:
    """The reference both tests compare against: the run on local torchrun DDP, never interrupted."""
    ws = tmp_path_factory.mktemp("local-ddp")
    return train_two_device_sft(ws, chat_dataset, tiny_llama, executor="torchrun", strategy="ddp", **RUN)


@pytest.mark.slow
def test_ray_train_on_cluster_matches_local_ddp(
    ray_cluster: LocalCluster, tmp_path: Path, tiny_llama: Path, chat_dataset: Path, uninterrupted_ddp: Artifact
) -> None:
    import torch
    from safetensors.torch import load_file

    local = uninterrupted_ddp
    with using_cluster(ray_cluster.address):
        ray_art = train_two_device_sft(tmp_path / "ray", chat_dataset, tiny_llama, on_cluster=True, **RUN)
    st = ray_art.stats
    assert st["executor"] == "ray" and st["world_size"] == 2 and st["steps"] == 16
    assert len(st["rank_weight_digests"]) == 2 and len(set(st["rank_weight_digests"])) == 1, "ranks diverged"
    assert ray_art.manifest["ray_train"]["attempts"] == 1 and ray_art.manifest["ray_train"]["dead_nodes"] == []
    a = load_file(str(local.path / "model" / "model.safetensors"))
    b = load_file(str(ray_art.path / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=f"{k} differs from local DDP")
    assert abs(st["val_loss"] - local.stats["val_loss"]) < 1e-4


@pytest.mark.slow
def test_ray_train_survives_a_worker_node_killed_mid_run(
    ray_cluster: LocalCluster, tmp_path: Path, tiny_llama: Path, chat_dataset: Path, uninterrupted_ddp: Artifact
) -> None:
    """SIGKILL the node of one Ray Train rank once the first checkpoint is on disk: Ray Train's
    restart plus our resume must end with every step counted once and the weights of a run
    that was never interrupted (local torchrun DDP)."""
    import torch
    from safetensors.torch import load_file

    ws = tmp_path / "ray"
    killed: list[tuple[str, int]] = []  # (node, newest checkpoint step when it was killed)
    restored: list[bool] = []
    ended = threading.Event()

    def kill_a_rank_node_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not ended.is_set():
            ckpts = sorted(ws.glob("work/train-*/checkpoints/step-*/state.json"))
            placed = list(ws.glob(f"work/train-*/{RAY_PLACEMENTS}"))
            # The head holds 1 CPU, so at least one rank runs on a worker node (its line may still be on its way).
            nodes = (
                [x.partition('"node": "')[2].partition('"')[0] for x in placed[0].read_text().splitlines()]
                if placed
                else []
            )
            victim = next((n for n in nodes if n and n != "head"), None)
            if ckpts and victim:
                ray_cluster.kill_node(victim)
                killed.append((victim, int(ckpts[-1].parent.name.removeprefix("step-"))))
                break
            time.sleep(0.02)
        # Once the restarted ranks are placed (on the 2 nodes left), bring the node back for the
        # later tests while the restarted run trains.
        while killed and time.monotonic() < deadline and len(nodes) < 4 and not ended.is_set():
            time.sleep(0.1)
            nodes = placed[0].read_text().splitlines()
        if killed and len(nodes) >= 4:
            ray_cluster.replace_node(killed[0][0])
            restored.append(True)

    out = io.StringIO()
    killer = threading.Thread(target=kill_a_rank_node_after_first_checkpoint, daemon=True)
    try:
        with using_cluster(ray_cluster.address):
            killer.start()
            art = train_two_device_sft(ws, chat_dataset, tiny_llama, on_cluster=True, checkpoint_every=2,
                                       console=Console(file=out, width=250), **RUN)  # fmt: skip
        ended.set()
        assert killed, "no node was killed: the run ended before its first checkpoint was seen"
        victim, newest_at_kill = killed[0]
        st, rt = art.stats, art.manifest["ray_train"]
        assert rt["dead_nodes"] == [victim] and rt["attempts"] == 2, rt
        assert victim in rt["worker_nodes"][0] and victim not in rt["worker_nodes"][1], rt
        assert st["world_size"] == 2 and st["steps"] == 16 and st["stopped_by"] == "max_steps"
        # The restart resumed from the newest checkpoint (one may have landed between the look and the kill).
        assert newest_at_kill <= st["resumed_from_step"] < 16, (newest_at_kill, st["resumed_from_step"])
        assert len(set(st["rank_weight_digests"])) == 1, "ranks diverged after the restart"
        died = [line for line in out.getvalue().splitlines() if "died" in line]
        assert len(died) == 1 and f"node {victim} " in died[0] and "Ray Train restarts" in died[0], out.getvalue()
        assert f"resumed from the checkpoint at step {st['resumed_from_step']}" in out.getvalue(), out.getvalue()
    finally:
        ended.set()
        killer.join(timeout=60)
        if killed and not restored and any(n.name == killed[0][0] for n in ray_cluster.nodes):
            ray_cluster.replace_node(killed[0][0])  # later tests see 3 nodes again
    rows = [json.loads(x) for x in (art.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 17)), "a step was lost or counted twice"
    local = uninterrupted_ddp
    ref = [json.loads(x) for x in (local.path / "metrics.jsonl").read_text().splitlines()]
    for r, q in zip(rows, ref, strict=True):
        assert r["tokens"] == q["tokens"] and r["lr"] == q["lr"], (r, q)
        assert abs(r["loss"] - q["loss"]) < 1e-4, f"step {r['step']}: loss {r['loss']} vs uninterrupted {q['loss']}"
        assert abs(r.get("val_loss", 0.0) - q.get("val_loss", 0.0)) < 1e-4, (r, q)
    a = load_file(str(local.path / "model" / "model.safetensors"))
    b = load_file(str(art.path / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=f"{k} differs from the uninterrupted run")
    print(
        f"killed {victim} at checkpoint step {newest_at_kill}, resumed from {st['resumed_from_step']}; "
        f"largest weight difference from the uninterrupted run: {max((b[k] - a[k]).abs().max().item() for k in a):.3g}"
    )
