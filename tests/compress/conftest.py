"""Fixtures for the compression tests: tiny models built from configs, real tokenizers.

The decoder uses SmolLM2's tokenizer (so GGUF tokenizer metadata is the real one) and a
larger init range than the default, so its greedy continuations are not one repeated
token and the llama.cpp comparison means something.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny_models import save_tiny_bert, save_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer Llama (GQA: 4 query heads, 2 KV heads) with SmolLM2's tokenizer."""
    return save_tiny_llama(
        tmp_path_factory.mktemp("tiny-llama"), hidden=64, intermediate=128, layers=3, initializer_range=0.1
    )


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer BERT encoder with all-MiniLM-L6-v2's tokenizer."""
    return save_tiny_bert(
        tmp_path_factory.mktemp("tiny-bert"), "BertModel", hidden=64, intermediate=128, layers=3, max_positions=256
    )


@pytest.fixture(scope="session")
def adapter_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """A model artifact holding a LoRA adapter (non-zero B, so merging changes the weights)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("adapter-art")
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft.save_pretrained(root / "adapter")
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(root / "adapter")
    manifest = {"kind": "model", "stage": "train", "hash": "a" * 64, "base_model": str(tiny_llama), "task": "sft"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="session")
def heldout_blocks(tiny_llama: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from shoestring.compress.regression import builtin_texts, encode_blocks

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    return encode_blocks(tok, builtin_texts("heldout"), 64, 4)
