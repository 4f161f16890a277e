"""`plan --cluster` and `plan --jobs --cluster` against the 3-node cluster (1 CPU, 2 GiB of Ray memory per node)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from shoestring.core.cluster import using_cluster
from shoestring.core.config import parse_config
from shoestring.core.local_cluster import LocalCluster
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
FAKE_PROBE = {"machine": "test", "cpu_cores": 2, "torch_threads": 2, "ram_bytes": 24 * 1024**3,
              "cpu_capability": "test", "cpu_fp32_flops": 1.0e11, "cpu_bf16_flops": 5.0e10,
              "cpu_bandwidth_bytes_s": 1.0e10, "gpus": []}  # fmt: skip


@pytest.fixture(autouse=True)
def _fixed_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache with a fixed hardware probe, so planning never benchmarks the CPU."""
    from shoestring.plan import hardware

    cache = tmp_path / "ss-cache"
    monkeypatch.setenv("SHOESTRING_CACHE", str(cache))
    hardware.save_hardware({"version": hardware.PROBE_VERSION, **FAKE_PROBE})
    return cache


def _llama_config(folder: Path, hidden: int, layers: int) -> Path:
    """A config-only Llama (the planner reads shapes, never weights): ``hidden`` wide, ``layers`` deep."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": 3 * hidden, "num_hidden_layers": layers, "num_attention_heads": 8,
        "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048, "tie_word_embeddings": False,
    }))  # fmt: skip
    return folder


def _plan(address: str, model: Path, **extra: object) -> dict[str, object]:
    from shoestring.plan.cluster_plan import plan_for_cluster
    from shoestring.plan.stage import PlanConfig

    body = {"model": str(model), "dataset_tokens": 20000, "method": "full", "seq_len": 256, "cluster": address, **extra}
    return plan_for_cluster(parse_config(PlanConfig, body, "test"), None)["cluster"]  # type: ignore[return-value]


def test_plan_reads_the_clusters_nodes_and_picks_nodes_and_layout(ray_cluster: LocalCluster, tmp_path: Path) -> None:
    small = _llama_config(tmp_path / "small", 512, 8)  # 58 M parameters: ~1.3 GiB for full fine-tuning
    # 468 M: > 3 GiB a worker even sharded 3 ways (ZeRO-3: 16 B/param of states + the optimizer
    # step's 4 B/param of scratch, each over 3 workers, plus activations)
    huge = _llama_config(tmp_path / "huge", 1024, 32)
    with using_cluster(ray_cluster.address):
        one = _plan(ray_cluster.address, small)
        none = _plan(ray_cluster.address, huge)
    assert [n["memory_bytes"] for n in one["nodes"]] == [2 * 2**30] * 3 and len(one["signature"]) == 3
    assert one["nodes_needed"] == 1 and not one["needs_more_than_one_node"]
    assert one["layout"]["zero_stage"] == 0 and one["layout"]["data_parallel"] == 1
    assert none["nodes_needed"] is None and none["needs_more_than_one_node"]
    assert [t["nodes"] for t in none["tried"]] == [1, 2, 3] and not any(t["fits"] for t in none["tried"])
    assert "does not fit even on all 3 usable nodes" in str(none["why"])


def test_plan_cli_says_the_job_needs_more_than_one_node(ray_cluster: LocalCluster, tmp_path: Path,
                                                         _fixed_probe: Path) -> None:  # fmt: skip
    mid = _llama_config(tmp_path / "mid", 768, 12)  # 134 M: ~2.7 GiB on one node, fits 2 GiB once sharded
    env = {**os.environ, "SHOESTRING_CACHE": str(_fixed_probe), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "shoestring.cli", "plan", "--model", str(mid), "--dataset-tokens", "20000",
           "--method", "full", "--seq-len", "256", "--cluster", ray_cluster.address]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = " ".join((proc.stdout + proc.stderr).split())
    assert "the job needs more than one node: one node cannot hold it" in out, out[-2000:]
    plan = json.loads((Path(proc.stdout.strip().splitlines()[-1]) / "plan.json").read_text())
    c = plan["cluster"]
    assert c["nodes_needed"] in (2, 3) and c["tried"][0]["fits"] is False
    assert c["layout"]["data_parallel"] == c["nodes_needed"] == plan["devices"]
    assert c["layout"]["zero_stage"] >= 1 and c["layout"]["tensor_parallel"] == 1
    assert c["tried"][-1]["peak_memory_bytes"] <= 2 * 2**30 < c["tried"][0]["peak_memory_bytes"]
    assert f"ZeRO stage {c['layout']['zero_stage']}" in out


@pytest.mark.slow
def test_jobs_run_as_ray_tasks_where_planned_and_a_job_too_big_is_refused(
    ray_cluster: LocalCluster, tmp_path: Path, tiny_llama: Path, chat_dataset: Path
) -> None:
    huge = _llama_config(tmp_path / "huge", 1024, 32)
    train = {"dataset": str(chat_dataset), "model": str(tiny_llama), "task": "sft", "method": "full", "seq_len": 64,
             "micro_batch_size": 2, "max_steps": 2, "val_max_examples": 4, "progress": False,
             "tracking": {"tensorboard": False}}  # fmt: skip
    plan_keys = {"model": str(tiny_llama), "dataset_tokens": 4000, "method": "full", "seq_len": 64}
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(yaml.safe_dump({"jobs": [
        {"name": "a", **plan_keys, "cpus": 1, "priority": 1, "train": {**train, "lr": 1e-3}},
        {"name": "b", **plan_keys, "cpus": 1, "train": {**train, "lr": 5e-4}},
        {"name": "too-big", "model": str(huge), "dataset_tokens": 20000, "method": "full", "seq_len": 256,
         "train": {**train, "lr": 1e-4}},
        {"name": "too-wide", **plan_keys, "cpus": 2, "train": {**train, "lr": 2e-4}},
    ]}))  # fmt: skip
    stage = get_stage("plan")
    cfg = parse_config(stage.config, {"jobs": str(jobs), "cluster": ray_cluster.address}, "test")
    log = io.StringIO()
    art = Workspace(tmp_path / "ws", console=Console(file=log, width=200)).run(stage, cfg, {}).artifact
    sched = json.loads((art.path / "schedule.json").read_text())
    refused = {u["name"]: u["reason"] for u in sched["unschedulable"]}
    assert set(refused) == {"too-big", "too-wide"}
    assert "largest device has 2.0 GiB" in refused["too-big"] and "needs 2 CPUs" in refused["too-wide"]
    assert "cannot schedule too-big" in log.getvalue()
    by = {p["name"]: p for p in sched["jobs"]}
    assert set(by) == {"a", "b"}
    for p in by.values():  # asked Ray for what was planned, ran where it was placed, and trained
        assert p["request"] == {"num_cpus": 1, "memory": p["memory_bytes"]} and 0 < p["memory_bytes"] < 2 * 2**30
        assert p["ran_on"] == p["device"] and not p["cached"]
        assert json.loads((Path(p["artifact"]) / "manifest.json").read_text())["stats"]["steps"] == 2
    assert by["a"]["device"] != by["b"]["device"], "1-CPU nodes run one 1-CPU job each at a time"
    assert sched["dead_nodes"] == [] and len(sched["cluster"]["nodes"]) == 3
