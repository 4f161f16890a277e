"""Measure what a run really used: peak memory (bytes) and wall time (seconds).

The planner's predictions and the trainer's measurements must mean the same thing, so both
use :class:`PeakMemoryMeter`:

* on CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (bytes
  held by tensors, the quantity an OOM is about);
* on CPU: the peak of the process's resident set size minus the RSS at ``start`` (the
  baseline taken *before* the model is built), sampled every ``interval_s`` by a daemon
  thread. Sampling can miss a spike shorter than the interval; 2 ms is well below the
  duration of one transformer layer's forward on CPU.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

import psutil

__all__ = ["PeakMemoryMeter", "cpu_bf16_native", "current_rss_bytes"]


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
