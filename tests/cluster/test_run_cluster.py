"""`shoestring run RECIPE --cluster auto` (the real CLI) against the 3-node cluster: curate and train run there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shoestring.core.artifact import Artifact
from shoestring.core.local_cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_run_recipe_with_cluster_auto(ray_cluster: LocalCluster, tmp_path: Path, tiny_llama: Path) -> None:
    q = ROOT / "examples" / "quickstart"
    recipe = {
        "name": "cluster-tiny",
        "workspace": str(tmp_path / "ws"),
        "stages": {
            "data": {"stage": "curate", "chunk_size": 200, "sources": [
                {"path": str(q / "tickets.jsonl"), "name": "tickets", "fallback_encoding": "cp1252",
                 "fields": {"id": "ticket_id", "instruction": "question", "response": "answer"}},
                {"path": str(q / "faq.csv"), "name": "faq",
                 "fields": {"id": "faq_id", "instruction": "prompt", "response": "completion"}}]},
            "train": {"dataset": "data", "model": str(tiny_llama), "task": "sft", "method": "full", "seq_len": 64,
                      "micro_batch_size": 2, "max_steps": 2, "val_max_examples": 4, "progress": False,
                      "tracking": {"tensorboard": False}, "threads": 1},
        },
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "shoestring.cli", "run", str(path), "--cluster", "auto"], env=env,
                          capture_output=True, text=True, timeout=400, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cluster auto: 3 nodes, 3 CPUs" in proc.stderr
    arts = dict(line.split("\t") for line in proc.stdout.strip().splitlines())
    data, train = Artifact.load(arts["data"]), Artifact.load(arts["train"])
    assert data.manifest["config"]["executor"] == "ray" and data.manifest["ray"]["dead_nodes"] == []
    assert len(data.manifest["ray"]["tasks_by_node"]) == 3, "curate tasks did not reach every node"
    assert train.stats["executor"] == "ray" and train.manifest["ray_train"]["workers"] == 1
    assert json.loads((train.path / "manifest.json").read_text())["stats"]["steps"] == 2
