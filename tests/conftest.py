"""Shared test fixtures: a private shoestring cache and workspace per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # Never touch the network from tests: the hub path must fail fast and clearly.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")
    # The shipped recipes pseudonymise PII, which needs a user key (there is no default): tests run as a
    # user who set one. Tests of the missing-key error remove it (tests/data/test_pii_key.py).
    os.environ.setdefault("SHOESTRING_PII_KEY", "tests-pseudonym-key-" + "5e" * 8)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
