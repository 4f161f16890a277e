"""Fixtures for evaluation tests: a tiny Llama built from a config (with the packaged
SmolLM2 tokenizer, so the real chat template is used), a LoRA adapter artifact on top of
it, and a small chat dataset artifact."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHAT = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("What is two plus two?", "Two plus two is four."),
    ("Say hello in Spanish.", "Hola."),
    ("Which animal barks?", "A dog barks."),
    ("What colour is the sky on a clear day?", "The sky is blue on a clear day."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What do bees make?", "Bees make honey."),
]


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from 2 threads, and on a shared 2-core machine two threads
    per process oversubscribe the cores (measured 8x slower); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread_per_test() -> Iterator[None]:
    with one_torch_thread():
        yield


def write_artifact(folder: Path, kind: str, manifest: dict[str, Any] | None = None) -> Path:
    """A minimal artifact folder: payload already in ``folder`` + a manifest of ``kind``."""
    folder.mkdir(parents=True, exist_ok=True)
    body = {"kind": kind, "hash": f"{kind}-{folder.name}-test", "stats": {}, **(manifest or {})}
    (folder / "manifest.json").write_text(json.dumps(body))
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from shoestring.models import load_tokenizer

    out = tmp_path_factory.mktemp("tiny-lm")
    tok = load_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def lora_artifact(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter artifact (as the training stage writes it) trained for a few steps
    on the chat records, so it is measurably better than its base on them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shoestring.evaluate.lm import tokenize_for_loss

    out = tmp_path_factory.mktemp("lora-art")
    tok = AutoTokenizer.from_pretrained(tiny_lm)
    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "lm_head"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    items = [tokenize_for_loss(tok, {"id": str(i), "messages": _msgs(q, a)}, 128) for i, (q, a) in enumerate(CHAT)]
    torch.manual_seed(0)
    with one_torch_thread():
        _train(model, opt, items)
    model.save_pretrained(out / "adapter")
    tok.save_pretrained(out / "adapter")
    return write_artifact(out, "model", {"base_model": str(tiny_lm), "task": "sft"})


def _train(model: Any, opt: Any, items: list[Any]) -> None:
    import torch

    for _ in range(8):
        for it in items:
            assert it is not None
            ids = torch.tensor([it.input_ids])
            loss = model(input_ids=ids, labels=torch.tensor([it.labels])).loss
            loss.backward()
            opt.step()
            opt.zero_grad()


def _msgs(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


@pytest.fixture(scope="session")
def chat_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chat-data")
    lines = [json.dumps({"id": f"r{i}", "text": f"{q} {a}", "messages": _msgs(q, a)}) for i, (q, a) in enumerate(CHAT)]
    lines.append("{not json")  # malformed: must be counted, not silently dropped
    (out / "test.jsonl").write_text("\n".join(lines) + "\n")
    return write_artifact(out, "dataset")


@pytest.fixture(scope="session")
def make_artifact() -> Any:
    """:func:`write_artifact` for test modules (tests/ is not a package)."""
    return write_artifact
