"""/v1/recommend on a real trained recommender artifact, through the real `shoestring serve` process.

The artifact comes from the train stage itself (Workspace.run, so it has the manifest the
server reads the task from): a tiny GRU trained on a synthetic event log where every user
walks the catalogue in order. The HTTP answer must be exactly what the library's
``Recommender.recommend`` returns for the same history (ids, scores, order).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
from test_server import start_server  # tests/serve is on sys.path (rootdir-style imports)

NUM_ITEMS = 20


def _events(root: Path) -> Path:
    rows = []
    for u in range(40):
        start = (u * 7) % NUM_ITEMS
        for t in range(10):
            rows.append({"id": f"{u}-{t}", "text": "", "user_id": f"u{u}", "item_id": f"i{(start + t) % NUM_ITEMS}",
                         "timestamp": 1_000_000 + 60 * t})  # fmt: skip
    root.mkdir(parents=True)
    half = len(rows) // 2
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:half]))
    (root / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[half:]))
    (root / "test.jsonl").write_text("")
    digest = hashlib.sha256((root / "train.jsonl").read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps({"kind": "dataset", "stage": "curate", "hash": digest, "stats": {}}))
    return root


@pytest.mark.slow
def test_trained_recommender_artifact_served_over_http(tmp_path: Path) -> None:
    from shoestring.core.artifact import Artifact
    from shoestring.core.registry import get_stage
    from shoestring.core.workspace import Workspace
    from shoestring.train.config import TrainConfig

    ds = Artifact.load(_events(tmp_path / "events"))
    cfg = TrainConfig.model_validate({
        "dataset": str(ds.path), "task": "sequential-recommendation", "epochs": 3, "micro_batch_size": 16,
        "lr": 0.01, "seed": 0, "dropout": 0.0,
        "recsys": {"architecture": "gru", "max_len": 8, "hidden_size": 32, "num_layers": 1},
    })  # fmt: skip
    art = Workspace(tmp_path / "ws").run(get_stage("train"), cfg, {"dataset": ds}).artifact

    server = start_server(art.path, "--max-batch-size", "4")
    try:
        r = httpx.post(f"{server.url}/v1/recommend", json={"history": ["i3", "i4", "i5"], "k": 3}, timeout=60)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["rank"] for d in data] == [1, 2, 3]
        from shoestring.train.recsys import load_recommender

        expected = load_recommender(art.path).recommend(["i3", "i4", "i5"], k=3)
        assert [d["item"] for d in data] == [i for i, _ in expected]
        assert [d["score"] for d in data] == pytest.approx([s for _, s in expected], rel=1e-4)  # thread counts differ
        assert all(isinstance(d["item"], str) and isinstance(d["score"], float) for d in data)
        assert not {d["item"] for d in data} & {"i3", "i4", "i5"}  # seen items are excluded
        assert data[0]["score"] >= data[1]["score"] >= data[2]["score"]
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
        assert models[0]["task"] == "recommendation"
        # Wrong endpoint for this model and an empty history: clear 4xx, not a crash.
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=10).status_code == 400
        assert httpx.post(f"{server.url}/v1/recommend", json={"history": []}, timeout=10).status_code == 400
    finally:
        server.proc.terminate()
        server.proc.wait(30)
