"""Fill-mask evaluation with a tiny BERT built from a config (packaged MiniLM tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shoestring.core.artifact import Artifact
from shoestring.core.registry import get_stage
from shoestring.core.workspace import Workspace


def test_fill_mask_accuracy_and_paired_comparison(tmp_path: Path, make_artifact: Any) -> None:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from shoestring.models import load_tokenizer

    tok = load_tokenizer("all-minilm-l6-v2")
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)
        out = tmp_path / f"bert{seed}"
        BertForMaskedLM(cfg).save_pretrained(out)
        tok.save_pretrained(out)
        folders.append(out)
    data = tmp_path / "data"
    data.mkdir()
    texts = ["the cat sat on the mat and looked at the door", "a quick brown fox jumps over the lazy dog"] * 3
    (data / "test.jsonl").write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    make_artifact(data, "dataset")
    stage = get_stage("evaluate")
    cfg = stage.config.model_validate({"model": str(folders[0]), "compare": str(folders[1]), "dataset": str(data),
                                       "task": "fill-mask", "bootstrap": 100, "k": [5]})
    art = Workspace(tmp_path / "ws").run(stage, cfg, {"dataset": Artifact.load(data)}).artifact
    m = json.loads((art.path / "metrics.json").read_text())
    main = m["model"]
    assert main["records"] == 6 and main["masked_tokens"] > 0
    assert 0 <= main["top1_accuracy"]["value"] <= main["top5_accuracy"]["value"] <= 1
    # A random 32-wide BERT over a 30k vocabulary is near chance: loss near ln(vocab).
    assert main["masked_loss"]["value"] == pytest.approx(10.3, abs=1.5)
    assert m["compare"]["masked_tokens"] == main["masked_tokens"]  # same seeded positions
    assert "comparison" in m and "Fill-mask accuracy" in (art.path / "report.html").read_text()
