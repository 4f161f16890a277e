"""One embedding rule: `shoestring embed`, `evaluate --task embedding` and `/v1/embeddings` agree.

For a tiny encoder (mean of the real tokens) and a tiny decoder (the last real token), in a
padded batch, each of the three front ends returns the vectors of
:func:`shoestring.models.inference.embed_batch`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_models import save_tiny_bert, save_tiny_llama

TEXTS = [
    "short",
    "a somewhat longer sentence, so the batch is padded",
    "the cat sat on the mat",
    "stock markets fell sharply today after the announcement",
    "one two three",
    "engines, wheels and a gearbox",
]


@pytest.fixture(scope="module", params=["encoder", "decoder"])
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param)
    if request.param == "encoder":
        return "mean", save_tiny_bert(out, "BertModel", hidden=32, intermediate=64, layers=2, max_positions=128)
    return "last", save_tiny_llama(out, hidden=32, intermediate=64, layers=2, max_positions=128)


def _cli_embed(model: Path, out: Path, *flags: str) -> np.ndarray:
    from typer.testing import CliRunner

    from shoestring.cli import app

    res = CliRunner().invoke(app, ["embed", *TEXTS, "--model", str(model), "--output", str(out), *flags])
    assert res.exit_code == 0, res.output
    return np.load(out)


def _evaluate_mean(model: Path, tmp: Path) -> np.ndarray:
    """The mean pooled (unnormalised) embedding the evaluate stage stores in its drift reference."""
    from shoestring.core.artifact import Artifact
    from shoestring.core.registry import get_stage
    from shoestring.core.workspace import Workspace

    data = tmp / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    (data / "manifest.json").write_text(json.dumps({"kind": "dataset", "hash": f"emb-{tmp.name}", "stats": {}}))
    stage = get_stage("evaluate")
    cfg = stage.config.model_validate({"dataset": str(data), "model": str(model), "task": "embedding", "bootstrap": 100})
    res = Workspace(tmp / "ws").run(stage, cfg, {"dataset": Artifact.load(data)})
    return np.array(json.loads((res.artifact.path / "reference.json").read_text())["embedding"]["mean"])


def _served(model: Path) -> np.ndarray:
    from fastapi.testclient import TestClient

    from shoestring.serve import ServeConfig, create_app, load_for_serving

    cfg = ServeConfig(model=str(model), task="embedding", model_name="m", max_batch_size=8)
    with TestClient(create_app(cfg, load_for_serving(cfg))) as c:
        r = c.post("/v1/embeddings", json={"model": "m", "input": TEXTS})
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])])


def test_cli_evaluate_and_server_embed_alike(tiny_model: tuple[str, Path], tmp_path: Path) -> None:
    from shoestring.models import load_model, load_tokenizer
    from shoestring.models.inference import embed_batch, pooling_for

    rule, model = tiny_model
    assert pooling_for(load_model(str(model), "embedding")) == rule
    raw = _cli_embed(model, tmp_path / "raw.npy", "--no-normalize")
    unit = _cli_embed(model, tmp_path / "unit.npy")
    assert raw.shape == (len(TEXTS), 32)
    assert np.allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    # Each text alone (no padding) gives its row of the padded batch: the pooling skips pad tokens.
    tok, enc = load_tokenizer(str(model)), load_model(str(model), "embedding").eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    alone = np.concatenate([embed_batch(enc, tok, [t], normalize=False)[0].numpy() for t in TEXTS])
    assert np.allclose(raw, alone, atol=1e-5)
    # By hand: the rule's token of the last hidden state.
    ids = tok(TEXTS[1], return_tensors="pt")
    with torch.no_grad():
        h = enc(**ids).last_hidden_state[0]  # (T, C)
    assert np.allclose(raw[1], (h.mean(0) if rule == "mean" else h[-1]).numpy(), atol=1e-5)
    assert np.allclose(_evaluate_mean(model, tmp_path), raw.mean(0), atol=1e-5)
    assert np.allclose(_served(model), unit, atol=1e-5)
