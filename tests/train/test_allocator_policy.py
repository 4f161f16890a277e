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


def _plan(peak_gib: float) -> int:
    """The plan's predicted peak (bytes)."""
    return int(peak_gib * 2**30)


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


def test_trim_heap_gives_freed_arena_blocks_back_to_the_kernel() -> None:
    """A fresh process fills glibc's arenas with 1 KiB blocks, frees all but every 64th (so the top
    of the heap stays pinned and glibc cannot shrink it by itself), and trims: RSS falls by most of
    what was freed. What a stage before `train` in one `shoestring run` leaves behind."""
    import subprocess
    import sys

    code = (
        "import ctypes, psutil\n"
        "from shoestring.core.allocator import trim_heap\n"
        "rss = lambda: psutil.Process().memory_info().rss\n"
        "base = rss()\n"
        "blocks = [ctypes.create_string_buffer(1024) for _ in range(300_000)]\n"
        "keep = blocks[::64]\n"
        "del blocks\n"
        "freed = rss()\n"
        "assert trim_heap()\n"
        "print(base, freed, rss())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    base, freed, trimmed = (int(x) for x in out.stdout.split())
    assert freed - base > 200 * 2**20  # ~300 MiB of freed blocks stay resident on glibc's own
    assert trimmed - base < 0.25 * (freed - base)
