"""Devices the planner knows: memory, peak FLOP/s, bandwidth, price per hour.

Peak FLOP/s are the vendors' dense (no sparsity) tensor-core figures per precision;
``utilisation`` is the fraction of that a real training step reaches (MFU). The defaults
are typical published MFUs for small-team fine-tuning (about 35-45% on data-centre GPUs);
``shoestring plan --calibrate`` replaces the figure for *this* machine with a measured one.
Prices are on-demand dollars per device-hour and are meant to be edited: pass
``--price-per-hour`` or put a ``prices.yaml`` (``{device-name: usd_per_hour}``) in the
shoestring cache folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = ["CATALOGUE", "DeviceSpec", "get_device", "load_price_overrides"]

GiB = 1024**3


@dataclass(frozen=True)
class DeviceSpec:
    """One accelerator (or this CPU) as the planner sees it."""

    name: str
    kind: str
    """``cuda`` or ``cpu``: decides what the memory meter measures."""
    memory_bytes: int
    """Usable device memory (RAM for the CPU), bytes."""
    peak_flops: dict[str, float]
    """Dense peak FLOP/s by compute precision: fp32, tf32, bf16, fp16, int8."""
    bandwidth_bytes_s: float
    """Memory bandwidth, bytes/s."""
    usd_per_hour: float
    """On-demand price of one device for one hour, dollars."""
    utilisation: float = 0.40
    """Achievable fraction of peak FLOP/s in training (MFU)."""
    bf16: bool = True
    interconnect_bytes_s: float = 25e9
    """Per-device bandwidth between devices (NVLink / PCIe), bytes/s, for ZeRO/DDP traffic."""
    measured: bool = False
    """True when peak/utilisation come from this machine's probe or calibration."""
    utilisation_by_dtype: dict[str, float] = field(default_factory=dict)
    """Measured utilisation per compute precision (``--calibrate`` on a CPU), overriding ``utilisation``."""

    stream_rate_by_dtype: dict[str, float] = field(default_factory=dict)
    """Calibrated rate of the memory-bound non-matmul work per compute precision, bytes/s (CPU ``--calibrate``)."""
    shape_times: dict[str, list[float]] = field(default_factory=dict, compare=False)
    """Measured [forward, forward + backward] seconds of Linear/attention shapes on this machine
    (:mod:`shoestring.plan.shapes`, CPU ``--calibrate``), by shape key."""
    matmul_factor_by_dtype: dict[str, float] = field(default_factory=dict)
    """Calibrated ratio of in-step to isolated time of the timed calls, per precision (shape-timed model)."""
    op_seconds_by_dtype: dict[str, float] = field(default_factory=dict)
    """Seconds each dispatched forward operator adds to a step beyond the timed calls, per
    precision (shape-timed model; measured by ``--calibrate``)."""
    fault_rate_by_dtype: dict[str, float] = field(default_factory=dict)
    """Bounded heap: bytes of fresh allocations paged in per second (the extra time of a bounded
    step over the default heap's), per precision; measured by ``--calibrate``."""

    def stream_rate_for(self, compute_dtype: str) -> float | None:
        """Bytes/s of the streamed (non-matmul) work, when calibrated for this precision."""
        return self.stream_rate_by_dtype.get(compute_dtype)

    def utilisation_for(self, compute_dtype: str) -> float:
        """Achievable fraction of ``flops_for(compute_dtype)``: calibrated for that precision when known."""
        return self.utilisation_by_dtype.get(compute_dtype, self.utilisation)

    def flops_for(self, compute_dtype: str) -> float:
        """Peak FLOP/s for a compute precision (fp32 matmuls use TF32 where the GPU has it)."""
        if compute_dtype in self.peak_flops:
            return self.peak_flops[compute_dtype]
        if compute_dtype == "fp32" and "tf32" in self.peak_flops:
            return self.peak_flops["tf32"]
        return self.peak_flops.get("fp32", min(self.peak_flops.values()))


def _gpu(name: str, gib: float, fp32: float, tf32: float, bf16: float, bw: float, usd: float, *, has_bf16: bool = True,
         link: float = 25e9) -> DeviceSpec:
    flops = {"fp32": fp32 * 1e12, "tf32": tf32 * 1e12, "fp16": bf16 * 1e12, "int8": 2 * bf16 * 1e12}
    if has_bf16:
        flops["bf16"] = bf16 * 1e12
    return DeviceSpec(name, "cuda", int(gib * GiB), flops, bw * 1e9, usd, bf16=has_bf16, interconnect_bytes_s=link)


CATALOGUE: dict[str, DeviceSpec] = {
    d.name: d
    for d in (
        # name, GiB, fp32, tf32, bf16/fp16 dense TFLOP/s, GB/s, $/h (typical on-demand cloud, 2025)
        _gpu("a100-40gb", 40, 19.5, 156, 312, 1555, 1.29, link=300e9),
        _gpu("a100-80gb", 80, 19.5, 156, 312, 2039, 1.79, link=300e9),
        _gpu("h100-80gb", 80, 67, 494, 989, 3350, 2.99, link=450e9),
        _gpu("h200-141gb", 141, 67, 494, 989, 4800, 3.79, link=450e9),
        _gpu("l4-24gb", 24, 30.3, 60, 121, 300, 0.80),
        _gpu("a10g-24gb", 24, 31.2, 62.5, 125, 600, 1.01),
        _gpu("t4-16gb", 16, 8.1, 8.1, 65, 320, 0.35, has_bf16=False),
        _gpu("rtx4090-24gb", 24, 82.6, 82.6, 165, 1008, 0.69),
        _gpu("v100-32gb", 32, 15.7, 15.7, 125, 900, 2.48, has_bf16=False, link=150e9),
    )
}

# Names users are likely to type, mapped to catalogue entries.
ALIASES = {
    "a100": "a100-80gb", "a100-80": "a100-80gb", "a100-40": "a100-40gb", "h100": "h100-80gb", "h200": "h200-141gb",
    "l4": "l4-24gb", "a10g": "a10g-24gb", "a10": "a10g-24gb", "t4": "t4-16gb", "4090": "rtx4090-24gb",
    "rtx4090": "rtx4090-24gb", "v100": "v100-32gb",
}


def load_price_overrides(cache: Path) -> dict[str, float]:
    """``prices.yaml`` in the shoestring cache: ``{device-name: usd_per_hour}``."""
    f = cache / "prices.yaml"
    if not f.is_file():
        return {}
    import yaml

    data = yaml.safe_load(f.read_text()) or {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}


def get_device(name: str) -> DeviceSpec | None:
    """A catalogue device by name or alias (None when unknown); prices.yaml applied."""
    from shoestring.models.loading import cache_dir

    key = ALIASES.get(name.lower(), name.lower())
    spec = CATALOGUE.get(key)
    if spec is None:
        return None
    prices = load_price_overrides(cache_dir())
    return replace(spec, usd_per_hour=prices[key]) if key in prices else spec
