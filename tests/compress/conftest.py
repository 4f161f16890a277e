"""Fixtures for the compression tests: tiny models built from configs, real tokenizers.

The decoder uses SmolLM2's tokenizer (so GGUF tokenizer metadata is the real one) and a
larger init range than the default, so its greedy continuations are not one repeated
token and the llama.cpp comparison means something.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoestring.models import hf_folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer Llama (GQA: 4 query heads, 2 KV heads) with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(hf_folder("smollm2-135m-instruct"))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.1,
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
    """A 3-layer BERT encoder with all-MiniLM-L6-v2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(hf_folder("all-minilm-l6-v2"))
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


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
