"""Fixtures for the language-model training tests: tiny models built from configs, real text.

Tokenizers come from the packaged models (SmolLM2's for decoders, all-MiniLM's for
encoders), so the text pipeline is the real one; the networks are 2-layer toys so a
training run takes seconds on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lm_helpers import pydoc_chats, write_dataset

from tiny_models import save_tiny_bert, save_tiny_llama


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread avoids thread-sync stalls on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template, saved as an HF folder."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), hidden=32, intermediate=64, layers=2)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT with all-MiniLM-L6-v2's WordPiece tokenizer, saved as an HF folder."""
    return save_tiny_bert(
        tmp_path_factory.mktemp("tiny-bert"), "BertForMaskedLM", hidden=32, intermediate=64, layers=2, max_positions=128
    )


@pytest.fixture(scope="session")
def chat_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    recs = pydoc_chats(40)
    return write_dataset(tmp_path_factory.mktemp("chat-ds"), recs[:32], recs[32:])
