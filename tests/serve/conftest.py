"""Tiny models built from configs (random weights, real tokenizers) for the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_models import save_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with the packaged SmolLM2 tokenizer (and its chat template), 256 positions."""
    return save_tiny_llama(
        tmp_path_factory.mktemp("tiny-llama"), hidden=32, intermediate=64, layers=2, max_positions=256
    )


@pytest.fixture(scope="session")
def tiny_llama_long(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny Llama with 8,192 positions: a request for 8,000 tokens runs for seconds even
    on a fast engine, so disconnects, timeouts and a full queue happen while it still generates."""
    return save_tiny_llama(
        tmp_path_factory.mktemp("tiny-llama-long"), hidden=32, intermediate=64, layers=2, max_positions=8192
    )


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny BERT classifier and masked-LM folders with the packaged MiniLM tokenizer."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    from shoestring.models import load_tokenizer

    tok = load_tokenizer("all-minilm-l6-v2")
    base = {"vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 128}  # fmt: skip
    torch.manual_seed(0)
    out: dict[str, Path] = {}
    labels = {"num_labels": 3, "id2label": {0: "neg", 1: "neu", 2: "pos"}, "label2id": {"neg": 0, "neu": 1, "pos": 2}}
    for name, cls, extra in (("classifier", BertForSequenceClassification, labels), ("masked-lm", BertForMaskedLM, {})):
        folder = tmp_path_factory.mktemp(name)
        cls(BertConfig(**base, **extra)).save_pretrained(folder)
        tok.save_pretrained(folder)
        out[name] = folder
    return out


@pytest.fixture(scope="session")
def tiny_gguf(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama as a float32 GGUF file (our exporter), for the llama.cpp engine."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shoestring.compress.gguf_export import write_gguf

    path = tmp_path_factory.mktemp("tiny-gguf") / "tiny-f32.gguf"
    write_gguf(AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama), path, "f32")
    return path
