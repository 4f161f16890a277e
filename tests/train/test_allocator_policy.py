"""When the train stage bounds glibc's heap (slow, RSS = live tensors) and when it leaves it alone."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from shoestring.train import stage
from shoestring.train.config import TrainConfig


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record calls instead of changing this test process's allocator for every later test."""
    import psutil

    import shoestring.core.allocator as allocator

    calls: list[int] = []
    monkeypatch.setattr(allocator, "bound_cpu_allocator", lambda: calls.append(1) or True)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=10 * 2**30))
    return calls


def _plan(peak_gib: float) -> dict[str, object]:
    return {"predicted": {"peak_memory_bytes": int(peak_gib * 2**30)}}


def test_auto_leaves_the_heap_alone_when_the_plan_fits_with_head_room(applied: list[int]) -> None:
    cfg = TrainConfig.model_validate({"device": "cpu"})
    assert stage._bound_allocator(cfg, None) == (False, "auto: no plan, glibc's default heap")
    bounded, why = stage._bound_allocator(cfg, _plan(4.0))  # 4 x 2.0 = 8 GiB <= 8 GiB
    assert not bounded and "fits in 80% of 10.0 GiB" in why
    assert applied == []


def test_auto_bounds_when_memory_is_tight_and_flags_force_either_way(applied: list[int]) -> None:
    cfg = TrainConfig.model_validate({"device": "cpu"})
    assert stage._bound_allocator(cfg, _plan(4.5))[0] is True  # 9 GiB > 8 GiB
    assert stage._bound_allocator(cfg.model_copy(update={"bound_allocator": True}), None) == (
        True,
        "bound_allocator: true",
    )
    assert stage._bound_allocator(cfg.model_copy(update={"bound_allocator": False}), _plan(9.0)) == (
        False,
        "bound_allocator: false",
    )
    assert len(applied) == 2
