"""Calibrate this machine on first use: what a real training step costs here.

The first CPU ``plan`` on a machine (and ``--calibrate``, which refreshes it) runs one child
process (:mod:`shoestring.plan.calibrate_child`, about 30-60 s on 2 cores, with a progress
bar) that measures the library residency, real optimizer steps of three small probe models
(4-layer 256-wide Llama at 4×256 and 1×32 tokens, 6-layer 512-wide at 2×512; vocabulary 8192;
fp32, and bf16 autocast where the CPU multiplies bf16 natively) on glibc's default heap with
every call of those steps timed alone, the bytes a dataset token holds in the trainer's rows,
the checkpoint write rate and the bounded heap's page-fault rate. From the probes:

* the shape-timed model's in-step factor ``k`` per precision and per-operator cost ``c``
  (:func:`derive_shape_rates`, least squares over the probes only);
* the FLOPs model's matmul utilisation and streaming rate (:func:`derive_rates`), used
  where a model's shapes were not timed.

Everything is stored with the machine's fingerprint (:func:`shoestring.plan.hardware.fingerprint`)
in the hardware cache, reused by every later plan, and detected as stale or foreign when
the fingerprint no longer matches. :func:`calibrate_shapes` times a planned model's own
shapes the first time it is planned (cached per shape).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

__all__ = ["CALIBRATION_MODEL", "DEADLINE_S", "calibrate", "probe_config", "probe_setup"]

CALIBRATION_MODEL: dict[str, Any] = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 688,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 8192,
    "max_position_embeddings": 1024, "tie_word_embeddings": True,
}
"""A 4-layer GQA Llama (~5M parameters): a fraction of a second per step, same kernels as bigger ones."""
WIDE_MODEL: dict[str, Any] = {**CALIBRATION_MODEL, "hidden_size": 512, "intermediate_size": 1376,
                               "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 4}
"""A wider, deeper probe (~27M parameters): its step has another balance of matmul, attention
and elementwise work than the 256-wide one, so the shape-timed model's constants are fitted
over different shapes (see :func:`derive_shape_rates`)."""
PROBE_MODELS = {"base": CALIBRATION_MODEL, "wide": WIDE_MODEL}
DEADLINE_S = 55.0
"""The child skips remaining probe steps past this many seconds (the budget is 60 s on 2 cores)."""


def calibrate(progress: Any = None) -> dict[str, Any]:
    """Measure this machine (one child process); store the calibration with its fingerprint and
    return it. ``progress(done, total, label)`` is called as the child reports."""
    from shoestring.core.errors import ShoestringError
    from shoestring.models.loading import cache_dir
    from shoestring.plan.hardware import fingerprint, load_hardware, save_hardware

    hw = load_hardware()
    precisions = ["fp32"] + (["bf16"] if _bf16_native(hw) else [])
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"precisions": precisions, "deadline_s": DEADLINE_S, "folder": str(folder)}
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "shoestring.plan.calibrate_child", json.dumps(payload)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    result: dict[str, Any] | None = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("PROGRESS ") and progress is not None:
            _, done, total, label = line.rstrip("\n").split(" ", 3)
            progress(int(done), int(total), label)
        elif line.startswith("CALIBRATION "):
            result = json.loads(line[len("CALIBRATION "):])
    err = proc.stderr.read() if proc.stderr is not None else ""
    if proc.wait() != 0 or result is None:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        raise ShoestringError(f"calibrating this machine failed ({tail}); plan with --no-calibrate")
    probes = [{**p, **_probe_model(p["method"], p["precision"], p["batch"], p["seq_len"], p["model"])}
              for p in result["probes"]]
    table = {**hw.get("shape_times", {}), **result["shape_times"]}
    probes = [{**p, **_probe_shapes(p, {"shape_times": table}, measure=False)} for p in probes]
    cal = derive_rates(probes, hw) if probes else {}
    model = derive_shape_rates(probes)
    if result.get("fault_rate_bytes_s", float("inf")) < float("inf"):
        model["fault_rate"] = {p: float(result["fault_rate_bytes_s"]) for p in precisions}
    cal.update({
        "shape_model": model,
        "library_rss_bytes": int(result["library_rss_bytes"]),
        "bytes_per_token": float(result["bytes_per_token"]),
        "write_bytes_s": float(result["write_bytes_s"]),
        "threads": result.get("threads"),
        "probes": probes,
        "skipped": result.get("skipped", []),
        "seconds": round(time.perf_counter() - t0, 1),
        "fingerprint": fingerprint(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    hw = load_hardware()
    hw["calibration"] = cal
    hw["shape_times"] = table
    save_hardware(hw)
    return cal


def _bf16_native(hw: dict[str, Any]) -> bool:
    from shoestring.core.metering import cpu_bf16_native

    return bool(hw.get("cpu_bf16_flops")) and cpu_bf16_native()


def probe_config(name: str = "base") -> Any:
    """The probe model ``name`` (``base`` or ``wide``) as a transformers config."""
    from transformers import LlamaConfig

    return LlamaConfig(**{k: v for k, v in PROBE_MODELS[name].items() if k != "model_type"})


def _probe_model(method: str, precision: str, batch_size: int, seq_len: int, name: str = "base") -> dict[str, Any]:
    """The planner's FLOPs, streamed bytes and peak (no overhead) for one probe shape."""

    from shoestring.plan.arch import describe_model
    from shoestring.plan.flops import streamed_bytes, training_flops_per_token
    from shoestring.plan.memory import estimate_training_memory

    config = probe_config(name)
    shape = describe_model(config, "causal-lm")
    setup = probe_setup(method, precision, batch_size, seq_len)
    mem = estimate_training_memory(config, shape, setup, framework_overhead=0)
    flops = training_flops_per_token(shape, seq_len, mem.trainable_params,
                                     lora=method in ("lora", "qlora")) * batch_size * seq_len
    per_micro, per_step = streamed_bytes(mem, setup, shape)
    return {"flops": flops, "streamed_bytes": per_micro + per_step,
            "predicted_peak_without_overhead": int(mem.peak_bytes)}


def probe_setup(method: str, precision: str, batch_size: int, seq_len: int) -> Any:
    from shoestring.plan.memory import TrainingSetup

    half = seq_len // 2  # the probe rows hold two documents (see _child)
    segments = ((half, 2.0),) if seq_len - half == half else ((half, 1.0), (seq_len - half, 1.0))
    return TrainingSetup(method=method, micro_batch_size=batch_size, seq_len=seq_len,  # type: ignore[arg-type]
                         precision="fp32" if precision == "fp32" else "bf16-mixed", doc_segments=segments)


def _probe_shapes(probe: dict[str, Any], hw: dict[str, Any], measure: bool = True) -> dict[str, Any]:
    """The probe's timed seconds (its calls + the optimizer), forward allocations and operator count."""

    from shoestring.plan.shape_timing import measure_shapes
    from shoestring.plan.shapes import optimizer_seconds, shape_seconds, step_shapes_cached

    config = probe_config(probe.get("model", "base"))
    setup = probe_setup(probe.get("method", "full"), probe["precision"], probe["batch"], probe["seq_len"])
    shapes = step_shapes_cached(config, setup)
    table = measure_shapes(shapes, setup.compute_dtype, hw=hw, refresh=True) if measure else hw.get("shape_times", {})
    seconds = shape_seconds(shapes, setup.compute_dtype, table)
    opt = optimizer_seconds(shapes, table)
    if seconds is not None and opt is not None:
        seconds += opt
    return {"matmul_seconds": seconds, "allocated_bytes": shapes.allocated_bytes, "ops": shapes.ops}


def derive_shape_rates(probes: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """In-step factor ``k``, seconds per operator ``c`` and bounded-heap fault rate ``F`` per
    precision for the shape-timed model.

    Each probe's step is ``k`` × its timed calls (matmuls, attention, loss, optimizer) plus
    ``c`` × the operators its forward dispatches. ``k`` is how much slower the same calls run
    inside a step than alone (their operands arrive cache-cold); ``c`` is what every operator
    adds beyond them (dispatch, autograd bookkeeping, its backward, the small elementwise
    work between the timed calls), which is why a model of many small operators (narrow,
    deep, LoRA on every Linear) costs more than its matmuls say. Both are fitted, by least
    squares on the *relative* error, over the probe steps only (two 256-wide shapes and one
    512-wide, 6-layer one), never on a configuration being predicted, and kept non-negative
    (:func:`_fit_factor_and_rate`). (The first version of this model used the forward's
    streamed bytes instead of its operator count; on this machine that fit collapsed to "no
    term" in every calibration of this session.) ``k`` and ``c`` come from the default-heap
    probes (the trainer's usual heap). A bounded step runs the same work plus a page fault for every page of every fresh
    allocation: its extra time over the default heap's prediction is ``allocated bytes / F``,
    ``F`` fitted by least squares over the bounded probes (probes without a ``heap`` count as
    default-heap ones).
    """
    factor: dict[str, float] = {}
    per_op: dict[str, float] = {}
    faults: dict[str, float] = {}
    timed = [p for p in probes if p.get("matmul_seconds") is not None]
    default = {prec: [p for p in timed if p["precision"] == prec and p.get("heap", "default") == "default"]
               for prec in dict.fromkeys(p["precision"] for p in timed)}
    default = {prec: ps for prec, ps in default.items() if ps}
    joint = _fit_shared_operator_cost(default)
    for precision, probes_p in default.items():
        if joint is not None:
            k, x = joint[0][precision], joint[1]
        else:
            k, x = _fit_factor_and_rate([(p["matmul_seconds"] / p["step_seconds"], p["ops"] / p["step_seconds"])
                                         for p in probes_p])
        factor[precision] = k
        per_op[precision] = x
        extra = [(p["allocated_bytes"], p["step_seconds"] - k * p["matmul_seconds"] - x * p["ops"])
                 for p in timed if p["precision"] == precision and p.get("heap") == "bounded" and p.get("allocated_bytes")]
        num, den = sum(a * a for a, _ in extra), sum(a * d for a, d in extra)
        if extra and den > 0:
            faults[precision] = num / den
    return {"matmul_factor": factor, "op_seconds": per_op, "fault_rate": faults}


def _fit_shared_operator_cost(by_precision: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, float], float] | None:
    """One in-step factor per precision and one per-operator cost for all of them, by least
    squares on the relative error over every default-heap probe (6 probes, 3 constants with
    fp32 + bf16). An operator's fixed cost (dispatch, autograd) does not depend on the
    precision of its data; fitting it once keeps three probes per precision from trading it
    against k (fp32 0.91/149 us vs bf16 1.23/58 us when fitted apart). None when there are
    fewer probes than constants or the solution is not positive (the caller fits per precision).
    """
    import numpy as np

    names = list(by_precision)
    rows, ones = [], []
    for j, name in enumerate(names):
        for p in by_precision[name]:
            row = [0.0] * (len(names) + 1)
            row[j] = p["matmul_seconds"] / p["step_seconds"]
            row[-1] = p["ops"] / p["step_seconds"]
            rows.append(row)
            ones.append(1.0)
    if len(rows) <= len(names) + 1:
        return None
    sol, *_ = np.linalg.lstsq(np.array(rows), np.array(ones), rcond=None)
    if sol[-1] <= 0 or any(v <= 0 for v in sol[:-1]):
        return None
    return {name: float(sol[j]) for j, name in enumerate(names)}, float(sol[-1])


def _fit_factor_and_rate(rows: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``k·m + x·s ≈ 1`` with ``k > 0, x ≥ 0`` (m, s already divided by the step time).

    The unconstrained solution when both are positive; otherwise the better (smaller squared
    error) of "no streaming term, k alone" and "k = 1, x alone". One probe: k = 1, x alone.
    """
    mm = sum(m * m for m, _ in rows)
    ss = sum(s * s for _, s in rows)
    ms = sum(m * s for m, s in rows)
    m1 = sum(m for m, _ in rows)
    s1 = sum(s for _, s in rows)
    x_alone = max(sum(s * (1.0 - m) for m, s in rows) / ss, 0.0) if ss else 0.0
    if len(rows) < 2:
        return 1.0, x_alone
    det = mm * ss - ms * ms
    if det:
        k = (m1 * ss - s1 * ms) / det
        x = (s1 * mm - m1 * ms) / det
        if k > 0 and x > 0:
            return k, x

    def err(c: tuple[float, float]) -> float:
        return sum((c[0] * m + c[1] * s - 1.0) ** 2 for m, s in rows)

    return min(((m1 / mm if mm else 1.0), 0.0), (1.0, x_alone), key=err)


def calibrate_shapes(config: Any, setup: Any) -> dict[str, list[float]]:
    """Time the Linear and attention shapes of a planned configuration on this machine (cached)."""
    from dataclasses import replace

    from shoestring.plan.shape_timing import measure_shapes
    from shoestring.plan.shapes import step_shapes_cached

    # Padded batches are timed at their expected width, as the search costs them.
    timed = replace(setup, seq_len=setup.expected_width(), record_lengths=())
    return measure_shapes(step_shapes_cached(config, timed), setup.compute_dtype, refresh=True)


def rederive(hw: dict[str, Any]) -> dict[str, Any]:
    """Re-derive the stored calibration's rates from its *measured* probe times with the
    current FLOP and streaming model (after a model change, without re-measuring)."""
    cal = dict(hw.get("calibration", {}))
    probes = cal.get("probes")
    if not probes:
        return cal
    probes = [{**p, **_probe_model(p.get("method", "full"), p["precision"], p["batch"], p["seq_len"],
                                   p.get("model", "base"))} for p in probes]
    probes = [{**p, **_probe_shapes(p, hw, measure=False)} for p in probes]
    cal.update(derive_rates(probes, hw), probes=probes)
    cal["shape_model"] = {**cal.get("shape_model", {}), **{
        k: v for k, v in derive_shape_rates(probes).items() if k != "fault_rate"}}
    return cal


def derive_rates(probes: list[dict[str, Any]], hw: dict[str, Any]) -> dict[str, Any]:
    """Matmul utilisation and streaming rate per precision from the two probe shapes.

    Each probe's time is ``flops / R + streamed_bytes / W``; the full-size probe is mostly
    matmuls, the tiny one mostly the optimizer's streaming, so the two equations give both
    rates. If they do not (a non-positive solution: noise on a busy machine), fall back to
    one utilisation that folds everything into the matmul rate.
    """
    util: dict[str, float] = {}
    stream: dict[str, float] = {}
    for precision in dict.fromkeys(p["precision"] for p in probes):
        pair = [p for p in probes if p["precision"] == precision and p.get("model", "base") == "base"][:2]
        if len(pair) < 2:  # a probe was skipped (deadline): this precision keeps the default utilisation
            continue
        big, small = pair
        peak = float(hw[f"cpu_{precision}_flops"])
        f1, s1, t1 = big["flops"], big["streamed_bytes"], big["step_seconds"]
        f2, s2, t2 = small["flops"], small["streamed_bytes"], small["step_seconds"]
        det = f1 * s2 - f2 * s1
        inv_r = (t1 * s2 - t2 * s1) / det if det else -1.0
        inv_w = (f1 * t2 - f2 * t1) / det if det else -1.0
        if inv_r > 0 and inv_w > 0:
            util[precision] = 1.0 / inv_r / peak
            stream[precision] = 1.0 / inv_w
        else:
            util[precision] = f1 / t1 / peak
    if not util:
        return {}
    return {"utilisation": util.get("fp32", next(iter(util.values()))), "utilisation_by_dtype": util,
            "stream_rate_by_dtype": stream}
