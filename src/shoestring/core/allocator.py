"""Keep a CPU training process's resident memory equal to what its tensors really hold.

glibc's malloc serves mid-sized blocks (up to a *dynamic* mmap threshold that grows to
32 MiB) from heap arenas and keeps freed blocks there for reuse. A training step frees
and re-allocates hundreds of activation-sized tensors, so the arenas fragment and the
process's RSS drifts far above the bytes actually live: on the quickstart (SmolLM2-135M,
LoRA, 4×256 tokens) peak RSS was 5.2 GiB with the default allocator and 3.4 GiB with a
fixed 64 KiB mmap threshold (benchmarks/RESULTS.md, "Compute planner"). A fixed threshold
sends every block of 64 KiB or more to its own ``mmap`` and gives it back to the kernel on
``free``, so peak RSS tracks live tensor bytes, which is what the planner predicts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["DEFAULT_MMAP_THRESHOLD", "UNBOUNDED_HEAP_FACTOR", "bound_cpu_allocator", "needs_bounded_heap", "trim_heap"]

DEFAULT_MMAP_THRESHOLD = 64 * 1024
"""Bytes: allocations at least this large bypass the heap arenas (glibc's initial default is 128 KiB)."""
UNBOUNDED_HEAP_FACTOR = 2.0
"""Peak RSS under glibc's default heap / peak RSS bounded (= live tensors, what the planner
predicts): measured 1.06-1.85 over the 14 configurations of ``benchmarks/plan_accuracy.py``
(LoRA and BERT highest: many mid-sized blocks fragment the arenas; RESULTS.md). The head-room
the auto mode allows for, and the upper bound a plan states for the default heap."""


def needs_bounded_heap(predicted_peak: float, available: float) -> bool:
    """The trainer's auto rule (``bound_allocator`` unset): bound glibc's heap only when the
    planned peak with the default heap's head-room would not fit in 80% of available memory."""
    return float(predicted_peak) * UNBOUNDED_HEAP_FACTOR > 0.8 * float(available)


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied: list[int] = []


def bound_cpu_allocator(threshold: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (and trim threshold) for this process; True when applied.

    Call it before the model is built. A no-op (False) off Linux/glibc. Setting the
    threshold explicitly also disables glibc's dynamic growth of it.
    """
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1 and mallopt(_M_TRIM_THRESHOLD, int(2 * threshold)) == 1
    if ok:
        _applied.append(threshold)
    return ok


def trim_heap() -> bool:
    """Give the kernel back what glibc's arenas hold free (``malloc_trim(0)`` after a garbage
    collection); True when it ran. A stage that follows others in one process (``shoestring run``:
    curate, the plan's model conversion) then starts near a fresh process's resident set, which is
    what the plan's library residency measured. A no-op (False) off Linux/glibc."""
    import gc

    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
