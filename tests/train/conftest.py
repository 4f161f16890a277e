"""Fixtures for the language-model training tests: tiny models built from configs, real text.

Tokenizers come from the packaged models (SmolLM2's for decoders, all-MiniLM's for
encoders), so the text pipeline is the real one; the networks are 2-layer toys so a
training run takes seconds on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from shoestring.models import hf_folder


def write_dataset(root: Path, train: list[dict[str, Any]], validation: list[dict[str, Any]] | None = None) -> Path:
    """A dataset artifact folder (the curate stage's contract) holding these records."""
    root.mkdir(parents=True, exist_ok=True)
    for name, recs in (("train", train), ("validation", validation or []), ("test", [])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    digest = hashlib.sha256((root / "train.jsonl").read_bytes()).hexdigest()
    manifest = {"kind": "dataset", "stage": "curate", "hash": digest, "stats": {"kept": len(train)}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def pydoc_chats(n: int) -> list[dict[str, Any]]:
    """Chat records built from Python's own reference documentation (no internet)."""
    from pydoc_data.topics import topics

    out = []
    for i, (key, text) in enumerate(sorted(topics.items())[:n]):
        answer = " ".join(text.split())[:300]
        out.append(
            {
                "id": f"doc{i}",
                "text": text[:1500],
                "messages": [
                    {"role": "user", "content": f"What does the Python reference say about {key}?"},
                    {"role": "assistant", "content": answer},
                ],
            }
        )
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template, saved as an HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(hf_folder("smollm2-135m-instruct"))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT with all-MiniLM-L6-v2's WordPiece tokenizer, saved as an HF folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(hf_folder("all-minilm-l6-v2"))
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertForMaskedLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def chat_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    recs = pydoc_chats(40)
    return write_dataset(tmp_path_factory.mktemp("chat-ds"), recs[:32], recs[32:])
