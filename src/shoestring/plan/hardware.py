"""Hardware probe: what this machine has and what it really delivers, cached per machine.

The probe records CPU cores, RAM, GPUs (through ``torch.cuda``), a measured matmul FLOP/s
(fp32 and bf16) and a measured memory bandwidth (a large tensor copy). Results are cached
in ``$SHOESTRING_CACHE/hardware-<machine>.json`` (default ``~/.cache/shoestring``) so a plan
costs no benchmark time after the first; ``--calibrate`` adds the utilisation and memory
overhead measured by a real training step (see :mod:`shoestring.plan.calibrate`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from shoestring.core.artifact import atomic_write_json
from shoestring.plan.catalogue import DeviceSpec, GiB, get_device

__all__ = ["cpu_device", "hardware_cache_path", "load_hardware", "probe_hardware", "resolve_device", "save_hardware"]

CPU_USD_PER_HOUR = 0.10
"""Default price of this CPU machine per hour (a 2-vCPU cloud VM); edit via prices.yaml key ``cpu``."""
CPU_DEFAULT_UTILISATION = 0.5
"""Fraction of the measured fp32 matmul rate a training step reaches before calibration."""
PROBE_VERSION = 1


def _machine_key() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    raw = f"{platform.node()}|{cpu}|{os.cpu_count()}|{psutil.virtual_memory().total}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def hardware_cache_path() -> Path:
    from shoestring.models.loading import cache_dir

    return cache_dir() / f"hardware-{_machine_key()}.json"


def _matmul_flops(dtype_name: str, n: int = 1024, seconds: float = 0.4) -> float:
    """Sustained square-matmul FLOP/s on this CPU for a dtype (2·n³ per product)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool, packing buffers
    reps = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    dt = time.perf_counter() - t0
    return 2.0 * n**3 * reps / dt


def _bandwidth(n_bytes: int = 256 * 1024**2) -> float:
    """Copy bandwidth (read + write bytes per second) of a large buffer."""
    import torch

    src = torch.empty(n_bytes // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n_bytes / best


def probe_hardware() -> dict[str, Any]:
    """Measure this machine (about 2 s on CPU); returns a JSON-able dict."""
    import psutil
    import torch

    info: dict[str, Any] = {
        "version": PROBE_VERSION,
        "machine": _machine_key(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_bytes": int(psutil.virtual_memory().total),
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
        "cpu_fp32_flops": _matmul_flops("float32"),
        "cpu_bandwidth_bytes_s": _bandwidth(),
        "gpus": [],
    }
    try:
        info["cpu_bf16_flops"] = _matmul_flops("bfloat16", seconds=0.3)
    except RuntimeError:
        info["cpu_bf16_flops"] = None
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": p.name, "memory_bytes": int(p.total_memory)})
    return info


def load_hardware(refresh: bool = False) -> dict[str, Any]:
    """The cached probe for this machine, probing (and caching) when absent."""
    path = hardware_cache_path()
    if path.is_file() and not refresh:
        try:
            data = json.loads(path.read_text())
            if data.get("version") == PROBE_VERSION:
                return dict(data)
        except (json.JSONDecodeError, OSError):
            pass
    data = probe_hardware()
    if path.is_file():  # keep an earlier calibration across re-probes
        try:
            old = json.loads(path.read_text())
            for key in ("calibration", "shape_times"):
                if key in old:
                    data[key] = old[key]
        except (json.JSONDecodeError, OSError):
            pass
    save_hardware(data)
    return data


def save_hardware(data: dict[str, Any]) -> None:
    atomic_write_json(hardware_cache_path(), data)


def cpu_device(hw: dict[str, Any] | None = None) -> DeviceSpec:
    """This CPU as a device: RAM, measured matmul rate, calibrated utilisation when known."""
    from shoestring.models.loading import cache_dir
    from shoestring.plan.catalogue import load_price_overrides

    hw = hw or load_hardware()
    cal = hw.get("calibration", {})
    flops = {"fp32": float(hw["cpu_fp32_flops"])}
    if hw.get("cpu_bf16_flops"):
        flops["bf16"] = float(hw["cpu_bf16_flops"])
    price = load_price_overrides(cache_dir()).get("cpu", CPU_USD_PER_HOUR)
    return DeviceSpec(
        name="cpu",
        kind="cpu",
        memory_bytes=int(hw["ram_bytes"]),
        peak_flops=flops,
        bandwidth_bytes_s=float(hw["cpu_bandwidth_bytes_s"]),
        usd_per_hour=price,
        utilisation=float(cal.get("utilisation", CPU_DEFAULT_UTILISATION)),
        utilisation_by_dtype={k: float(v) for k, v in cal.get("utilisation_by_dtype", {}).items()},
        stream_rate_by_dtype={k: float(v) for k, v in cal.get("stream_rate_by_dtype", {}).items()},
        shape_times={k: list(v) for k, v in hw.get("shape_times", {}).items()},
        matmul_factor_by_dtype={k: float(v) for k, v in cal.get("shape_model", {}).get("matmul_factor", {}).items()},
        op_seconds_by_dtype={k: float(v) for k, v in cal.get("shape_model", {}).get("op_seconds", {}).items()},
        fault_rate_by_dtype={k: float(v) for k, v in cal.get("shape_model", {}).get("fault_rate", {}).items()},
        bf16=bool(hw.get("cpu_bf16_flops")),
        measured=bool(cal),
    )


def resolve_device(name: str) -> DeviceSpec:
    """``auto`` (the first local GPU, else this CPU), ``cpu``, ``cuda`` or a catalogue name."""
    from shoestring.core.errors import ShoestringError
    from shoestring.plan.catalogue import CATALOGUE

    key = name.lower()
    if key == "cpu":
        return cpu_device()
    if key in ("auto", "cuda"):
        hw = load_hardware()
        if hw["gpus"]:
            gpu = hw["gpus"][0]
            match = _catalogue_match(gpu["name"])
            base = get_device(match) if match else None
            if base is not None:
                return DeviceSpec(**{**base.__dict__, "memory_bytes": int(gpu["memory_bytes"]), "name": base.name})
            return DeviceSpec(gpu["name"], "cuda", int(gpu["memory_bytes"]), {"fp32": 20e12, "bf16": 100e12}, 1e12, 1.0)
        if key == "cuda":
            raise ShoestringError("--device cuda: this machine has no CUDA GPU; use --device cpu or a catalogue name")
        return cpu_device(hw)
    spec = get_device(key)
    if spec is None:
        raise ShoestringError(f"unknown device '{name}'; use auto, cpu, or one of: {', '.join(CATALOGUE)}")
    return spec


def _catalogue_match(gpu_name: str) -> str | None:
    n = gpu_name.lower()
    for key, pat in (("h200", "h200"), ("h100", "h100"), ("a100", "a100"), ("l4", " l4"), ("a10g", "a10"),
                     ("t4", "t4"), ("4090", "4090"), ("v100", "v100")):
        if pat in n:
            if key == "a100":
                return "a100-80gb" if "80" in n else "a100-40gb"
            return {"h200": "h200-141gb", "h100": "h100-80gb", "l4": "l4-24gb", "a10g": "a10g-24gb", "t4": "t4-16gb",
                    "4090": "rtx4090-24gb", "v100": "v100-32gb"}[key]
    return None


GIB = GiB
