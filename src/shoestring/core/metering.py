"""Measure what a run really used: peak memory (bytes) and wall time (seconds).

The planner's predictions and the trainer's measurements must mean the same thing, so both
use :class:`PeakMemoryMeter`:

* on CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (bytes
  held by tensors, the quantity an OOM is about);
* on CPU: the peak of the process's resident set size minus the RSS at ``start`` (the
  baseline taken *before* the model is built), sampled every ``interval_s`` by a daemon
  thread. Sampling can miss a spike shorter than the interval; 2 ms is well below the
  duration of one transformer layer's forward on CPU. ``peak_absolute_bytes`` is the
  process's own peak RSS: the figure ``top`` shows, and the planner's headline.
* on CUDA also ``peak_reserved_bytes`` (``max_memory_reserved``: the caching allocator's
  segments, what ``nvidia-smi`` counts beside the context).

:func:`append_run_record` keeps the measured side of the planner's feedback loop: one JSON
line per training run (predicted vs measured, by term) in a per-machine log that the planner
reads back (:mod:`shoestring.plan.feedback`).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from shoestring.core.jsonl import read_jsonl

__all__ = ["RUN_LOG_KEEP", "PeakMemoryMeter", "append_run_record", "cpu_bf16_native", "current_rss_bytes",
           "heap_stats", "read_run_records"]

RUN_LOG_KEEP = 200
"""Lines a run log keeps (the newest): the planner's feedback uses the last few only."""


def cpu_bf16_native() -> bool:
    """True when this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16).

    There, bf16 matmuls run 2.5-2.8x faster than fp32 (measured on a 2-core Zen 4:
    ~300-390 vs ~100-150 GFLOP/s, benchmarks/RESULTS.md), so bf16 autocast is the fast
    default for training. Reads /proc/cpuinfo; False where that is unavailable.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def current_rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def heap_stats() -> dict[str, int] | None:
    """glibc's ``mallinfo2``: bytes in the heap arenas, in use there, free there, and mmapped
    blocks (None off glibc). The arenas' free bytes are resident memory no tensor holds."""
    import ctypes

    class _Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Info
    m = fn()
    return {"arena_bytes": int(m.arena), "in_use_bytes": int(m.uordblks), "free_bytes": int(m.fordblks),
            "mmapped_bytes": int(m.hblkhd)}


def append_run_record(path: Path, record: dict[str, Any], keep: int = RUN_LOG_KEEP) -> None:
    """Append one run's predicted-vs-measured record to a JSONL log (newest ``keep`` lines kept),
    under an exclusive lock so concurrent runs on one machine do not interleave."""
    import fcntl
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        lines = [ln for ln in fh.read().splitlines() if ln.strip()][-(keep - 1):]
        lines.append(json.dumps(record, sort_keys=True, default=str))
        tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def read_run_records(path: Path) -> list[dict[str, Any]]:
    """The records of a run log, oldest first (unreadable lines skipped)."""
    return read_jsonl(path, missing_ok=True)


class PeakMemoryMeter:
    """Context manager: ``peak_bytes`` = peak memory above the baseline taken on entry."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.002) -> None:
        self.device = device
        self.interval_s = interval_s
        self.baseline_bytes = 0
        self._peak_abs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.seconds = 0.0
        self._t0 = 0.0
        self.peak_reserved_bytes = 0
        """CUDA: peak bytes the caching allocator reserved (0 on CPU)."""

    def __enter__(self) -> PeakMemoryMeter:
        self._t0 = time.perf_counter()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline_bytes = int(torch.cuda.memory_allocated())
            return self
        self.baseline_bytes = current_rss_bytes()
        self._peak_abs = self.baseline_bytes
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            rss = proc.memory_info().rss
            if rss > self._peak_abs:
                self._peak_abs = rss
            self._stop.wait(self.interval_s)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self._t0
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self._peak_abs = int(torch.cuda.max_memory_allocated())
            self.peak_reserved_bytes = int(torch.cuda.max_memory_reserved())
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._peak_abs = max(self._peak_abs, current_rss_bytes())

    @property
    def peak_bytes(self) -> int:
        """Peak memory above the baseline, in bytes (live value while running on CPU)."""
        return max(0, self._peak_abs - self.baseline_bytes)

    @property
    def peak_absolute_bytes(self) -> int:
        return self._peak_abs
