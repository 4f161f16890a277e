"""What the user will measure: the training process's resident peak and its wall time per step.

``top`` shows the process's resident set: the libraries it imported, the dataset's rows, the
live tensors, what glibc's heap keeps after freeing them, thread pools and kernel scratch,
and any checkpoint pages still mapped. The memory model (:mod:`shoestring.plan.memory`)
predicts the live tensors; the rest is measured on this machine:

* **library residency**: the RSS of a process that has imported what ``shoestring train``
  imports, measured by the machine calibration (:mod:`shoestring.plan.calibrate`);
* **everything the run adds** (live tensors + allocator + framework + mapped weights): the
  planned model's shallow twins (:mod:`shoestring.plan.twin`), extrapolated block by block.

The step time is the shallower twin's measured step (the head on the rows that carry labels,
the loss, the optimizer, collate and per-step overhead all inside it) plus the shape-timed
model's (:mod:`shoestring.plan.shapes`) remaining blocks, scaled by what the twins measured
per block against what the model predicted for them.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from shoestring.plan.catalogue import DeviceSpec
    from shoestring.plan.memory import TrainingSetup

__all__ = ["LAYER_KEYS", "ResidentEstimate", "estimate_resident", "layers_key", "twin_predicted_steps"]

LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
"""Config attributes that hold a transformer's depth (Llama/BERT, GPT-2, others)."""
SCALE_BOUND = 2.0
"""The twins may rescale the model's cost per block by at most this factor either way."""


def layers_key(config: PretrainedConfig) -> str | None:
    """The name of the config attribute that sets the model's depth (None: not a block stack)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in LAYER_KEYS:
        if isinstance(getattr(text, key, None), int) and getattr(text, key) > 0:
            return key
    return None


def with_depth(config: PretrainedConfig, depth: int) -> PretrainedConfig:
    """A copy of ``config`` ``depth`` blocks deep."""
    import copy

    out = copy.deepcopy(config)
    key = layers_key(out)
    if key is not None:
        setattr(out.get_text_config() if hasattr(out, "get_text_config") else out, key, depth)
    return out


@dataclass(frozen=True)
class ResidentEstimate:
    """The headline memory of a CPU plan and how it was obtained (bytes)."""

    resident_peak_bytes: int
    """Peak RSS of the training process: what ``top`` shows."""
    library_bytes: int
    """RSS of a process that has imported the trainer's libraries (machine calibration)."""
    run_bytes: int
    """What the run adds above that: twin(b) + (N - b) × per-block bytes."""
    per_block_bytes: int
    """What one more transformer block added between the twins."""
    live_peak_bytes: int
    """The memory model's live-tensor peak (a detail: the arenas keep more)."""
    twin_depths: tuple[int, int]
    n_layers: int

    def row(self) -> dict[str, Any]:
        return {"resident_peak_bytes": self.resident_peak_bytes, "library_bytes": self.library_bytes,
                "run_bytes": self.run_bytes, "per_block_bytes": self.per_block_bytes,
                "live_peak_bytes": self.live_peak_bytes,
                "allocator_and_framework_bytes": self.run_bytes - self.live_peak_bytes,
                "twin_depths": list(self.twin_depths), "n_layers": self.n_layers}


def estimate_resident(twins: list[dict[str, Any]], n_layers: int, library_bytes: int,
                      live_peak: int) -> ResidentEstimate:
    """Extrapolate the twins' resident growth (peak RSS above their post-import RSS) to
    ``n_layers`` blocks and add the library residency."""
    (a, b) = sorted(twins, key=lambda t: t["depth"])[:2]
    grow_a = a["peak_rss_bytes"] - a["base_rss_bytes"]
    grow_b = b["peak_rss_bytes"] - b["base_rss_bytes"]
    per_block = max(0, (grow_b - grow_a) // max(1, b["depth"] - a["depth"]))
    run = grow_a + (n_layers - a["depth"]) * per_block
    return ResidentEstimate(resident_peak_bytes=int(library_bytes + run), library_bytes=int(library_bytes),
                            run_bytes=int(run), per_block_bytes=int(per_block), live_peak_bytes=int(live_peak),
                            twin_depths=(int(a["depth"]), int(b["depth"])), n_layers=n_layers)


def twin_predicted_steps(config: PretrainedConfig, setup: TrainingSetup, device: DeviceSpec,
                         depths: tuple[int, ...]) -> list[float | None]:
    """The shape-timed model's step seconds for the twins (same calls, fewer blocks)."""
    from shoestring.plan.search import measured_step_parts

    out: list[float | None] = []
    for d in depths:
        parts = measured_step_parts(with_depth(config, d), setup, device)
        out.append(None if parts is None else parts[0] * setup.grad_accum + (parts[1] or 0.0))
    return out


def step_from_twins(twins: list[dict[str, Any]], predicted: list[float | None], full: float) -> tuple[float, float, str]:
    """The full model's step from the twins, the scale applied, and how it was combined.

    When the twins' difference stands out of their own step noise (:func:`_stands_out`): the
    shallower twin's measured step plus the model's remaining blocks (``full`` - its prediction of
    that twin) scaled by the twins' measured / modelled difference per block. When it does not (a
    small model whose blocks cost less than a step's jitter, where the difference of two noisy
    medians times the blocks neither twin has would carry that jitter several-fold): the model's
    full step scaled by the twins' summed measured / modelled step. The scale is bounded to
    [1/:data:`SCALE_BOUND`, :data:`SCALE_BOUND`]; the model unchanged (scale 1) when the twins
    cannot say."""
    pairs = sorted(((t["depth"], t["step_seconds"], p, t.get("step_times")) for t, p in
                    zip(twins, predicted, strict=False) if p is not None), key=lambda x: x[0])
    if len(pairs) < 2 or pairs[-1][2] <= pairs[0][2]:
        return full, 1.0, "model"
    (_, m_a, p_a, times_a), (_, m_b, p_b, times_b) = pairs[0], pairs[-1]
    if _stands_out(m_b - m_a, times_a, times_b):
        scale = max(1 / SCALE_BOUND, min(SCALE_BOUND, (m_b - m_a) / (p_b - p_a)))
        return m_a + scale * max(0.0, full - p_a), scale, "per block"
    scale = max(1 / SCALE_BOUND, min(SCALE_BOUND, (m_a + m_b) / (p_a + p_b)))
    return full * scale, scale, "whole step"


NOISE_SIGMAS = 3.0
"""The twins' difference is used per block when it exceeds this many standard errors of itself."""


def _stands_out(diff: float, times_a: list[float] | None, times_b: list[float] | None) -> bool:
    """Whether ``diff`` (deeper twin's median step - shallower's) exceeds :data:`NOISE_SIGMAS`
    standard errors, each twin's median's error from its timed steps (robust sigma = 1.4826 x
    MAD; error of a median = 1.2533 sigma / sqrt(n)). Twins cached without their step times
    (measured before they were kept) count as standing out, as they were used before."""
    from shoestring.plan.twin import WARMUP

    if not times_a or not times_b:
        return True
    var = 0.0
    for times in (times_a, times_b):
        timed = sorted(times[WARMUP:]) or sorted(times)
        med = statistics.median(timed)
        mad = statistics.median(abs(t - med) for t in timed)
        var += (1.2533 * 1.4826 * mad) ** 2 / len(timed)
    return diff > NOISE_SIGMAS * math.sqrt(var)


def twin_key(spec: dict[str, Any]) -> str:
    """Cache key of a twin measurement (the rows enter through their lengths and labels)."""
    slim = {k: v for k, v in spec.items() if k != "rows"}
    slim["rows"] = [(len(r["input_ids"]), sum(1 for x in r["labels"] if x != -100), r.get("label"))
                    for r in spec.get("rows", ())]
    return hashlib.sha256(json.dumps(slim, sort_keys=True, default=str).encode()).hexdigest()[:16]


def twin_spec(*, model: str, task: str, setup: TrainingSetup, from_scratch: bool, rows: list[dict[str, Any]],
              packed: bool, layers: str, depths: tuple[int, int], lora: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON spec :func:`shoestring.plan.twin.measure_twins` runs."""
    precision = {"fp32": "fp32", "bf16": "bf16"}.get(setup.compute_dtype, "fp32")
    return {"model": model, "task": task, "method": setup.method, "from_scratch": from_scratch,
            "lora": lora or {}, "trainable_layers": setup.trainable_layers, "precision": precision,
            "seq_len": setup.seq_len, "micro_batch_size": setup.micro_batch_size, "grad_accum": setup.grad_accum,
            "activation_checkpointing": setup.activation_checkpointing, "fast_paths": setup.fast_paths,
            "bounded_heap": bool(setup.bounded_heap), "layers_key": layers, "rows": rows, "packed": packed,
            "depths": list(depths)}


def cached_twins(spec: dict[str, Any], *, refresh: bool = False,
                 measure: bool = True) -> tuple[list[dict[str, Any]], bool]:
    """The twins of ``spec`` from this machine's cache, measuring them when absent (or ``refresh``;
    never with ``measure=False``: then ``[]``); returns them and whether they were measured now."""
    from shoestring.plan.hardware import load_hardware, save_hardware
    from shoestring.plan.twin import measure_twins

    hw = load_hardware()
    key = twin_key(spec)
    store = dict(hw.get("twins", {}))
    if key in store and not refresh:
        return list(store[key]), False
    if not measure:
        return [], False
    twins = measure_twins(spec)["twins"]
    hw = load_hardware()  # re-read: the shape timing may have written it meanwhile
    store = dict(hw.get("twins", {}))
    if len(store) >= 64:  # keep the newest configurations
        store = dict(list(store.items())[-63:])
    store[key] = twins
    hw["twins"] = store
    save_hardware(hw)
    return list(twins), True
