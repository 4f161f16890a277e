"""Hardware probe: what this machine has and what it really delivers, cached per fingerprint.

The probe records CPU cores, RAM, GPUs (through ``torch.cuda``), a measured matmul FLOP/s
(fp32 and bf16) and a measured memory bandwidth (a large tensor copy). It is cached in
``$SHOESTRING_CACHE/hardware-<fingerprint>.json`` (default ``~/.cache/shoestring``) beside the
machine's calibration (:mod:`shoestring.plan.calibrate`). The fingerprint
(:func:`fingerprint`) is the CPU model, core count, instruction sets that change kernels
(AVX-512, AVX512-BF16, AMX), RAM, glibc, Python and the versions of torch, transformers and
peft: anything that changes what a training step costs. A cache made under another
fingerprint is never used: :func:`calibration_state` says whether this machine's calibration
is ``fresh``, ``missing``, ``stale`` (same machine, other libraries: what changed is named) or
``foreign`` (a file whose recorded fingerprint is not this machine's, e.g. a copied cache).
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

__all__ = ["calibration_id", "cpu_device", "hardware_cache_path", "load_hardware", "probe_hardware", "resolve_device", "save_hardware"]

CPU_USD_PER_HOUR = 0.10
"""Default price of this CPU machine per hour (a 2-vCPU cloud VM); edit via prices.yaml key ``cpu``."""
CPU_DEFAULT_UTILISATION = 0.5
"""Fraction of the measured fp32 matmul rate a training step reaches before calibration."""
PROBE_VERSION = 2
"""Bumped when the probe or the calibration changes meaning: older caches are stale."""
_KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")
"""CPU flags that change which kernels torch/oneDNN run (and so what a step costs)."""
_MACHINE_FIELDS = ("cpu", "cores", "flags", "ram_gib")


def _cpu_info() -> tuple[str, list[str]]:
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    have = set(line.split(":", 1)[1].split())
                    flags = [f for f in _KERNEL_FLAGS if f in have]
    except OSError:
        pass
    return cpu, flags


def fingerprint() -> dict[str, Any]:
    """What a calibration depends on: this machine and the libraries a training step runs."""
    import importlib.metadata as md

    import psutil

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "-"

    cpu, flags = _cpu_info()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "flags": flags,
        "ram_gib": round(psutil.virtual_memory().total / 2**30),
        "glibc": "-".join(platform.libc_ver()) or "-", "python": platform.python_version(),
        "torch": version("torch"), "transformers": version("transformers"), "peft": version("peft"),
        "probe_version": PROBE_VERSION,
    }


def fingerprint_key(fp: dict[str, Any] | None = None) -> str:
    """12 hex digits naming the cache file of a fingerprint."""
    fp = fp if fp is not None else fingerprint()
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]


def hardware_cache_path() -> Path:
    from shoestring.models.loading import cache_dir

    return cache_dir() / f"hardware-{fingerprint_key()}.json"


def calibration_id() -> dict[str, Any]:
    """Which calibration a CPU plan stands on now: this fingerprint's cache file and when its
    calibration was measured (None: not calibrated). Reads the cache only, never probes."""
    try:
        hw = json.loads(hardware_cache_path().read_text())
    except (OSError, json.JSONDecodeError):
        hw = {}
    return {"fingerprint": fingerprint_key(), "measured_at": (hw.get("calibration") or {}).get("measured_at")}


def calibration_state(hw: dict[str, Any] | None = None) -> tuple[str, str]:
    """(state, why) of this machine's calibration: ``fresh``, ``missing``, ``stale`` or ``foreign``.

    ``stale``: no calibration under this fingerprint, but one made on this machine with other
    libraries (``why`` names what differs); ``foreign``: the cached file records another
    machine's fingerprint (a copied or shared cache folder).
    """
    now = fingerprint()
    hw = hw if hw is not None else load_hardware()
    if hw.get("calibration"):
        recorded = hw["calibration"].get("fingerprint")
        if recorded == now:
            return "fresh", f"measured {hw['calibration'].get('measured_at', '?')}"
        if recorded is not None and any(recorded.get(k) != now.get(k) for k in _MACHINE_FIELDS):
            return "foreign", "the cached calibration was made on another machine (" + _diff(recorded, now) + ")"
        return "stale", "the cached calibration does not match this machine (" + _diff(recorded or {}, now) + ")"
    from shoestring.models.loading import cache_dir

    for other in sorted(cache_dir().glob("hardware-*.json")):
        try:
            old = json.loads(other.read_text()).get("calibration", {}).get("fingerprint")
        except (json.JSONDecodeError, OSError):
            continue
        if old and old != now and all(old.get(k) == now.get(k) for k in _MACHINE_FIELDS):
            return "stale", "this machine was calibrated with other libraries (" + _diff(old, now) + ")"
    return "missing", "this machine has not been calibrated"


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in new if old.get(k) != new.get(k)]
    return ", ".join(f"{k} {old.get(k, '-')} -> {new[k]}" for k in keys) or "unrecorded fingerprint"


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
        "machine": fingerprint_key(),
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
