"""`shoestring plan --calibrate`: measure what a real training step achieves on this machine.

A fresh subprocess (so memory starts clean) builds a small Llama-style model through the
trainer's own code (``shoestring.train.modeling.build_model`` + its loss module and AdamW),
runs one warm-up and a few timed optimizer steps under :class:`PeakMemoryMeter`, and
reports the median step time and the peak. From them:

* two probe shapes (4×256 tokens: mostly matmuls; 1×32 tokens: mostly the optimizer's
  streaming) give two equations ``time = FLOPs / R + streamed bytes / W``
  (:mod:`shoestring.plan.flops`), solved for the matmul rate R (stored as ``utilisation`` =
  R / the probe's matmul FLOP/s) and the streaming rate W, per precision: fp32, and bf16
  autocast (the trainer's ``precision: bf16``), because on a CPU autocast's casts and the
  non-matmul work do not speed up with the bf16 matmul units (one fp32 figure would
  predict a bf16 step 2-3x too fast);
* ``framework_overhead_bytes`` = measured peak - the planner's prediction without overhead;
* the shape-timed model (:mod:`shoestring.plan.shapes`): the probes' own Linear, attention,
  loss and optimizer calls are timed, and the rest of each probe step (norms, activation
  functions, residual adds, casts) against its streamed bytes gives that model's streaming
  rate per precision (``shape_model``). :func:`calibrate_shapes` then times a planned
  model's shapes; a plan uses them whenever they are cached.

All are stored in the hardware cache and used by every later plan on this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

__all__ = ["CALIBRATION_MODEL", "calibrate"]

CALIBRATION_MODEL: dict[str, Any] = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 688,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 8192,
    "max_position_embeddings": 1024, "tie_word_embeddings": True,
}
"""A 4-layer GQA Llama (~5M parameters): seconds per step on 2 cores, same kernels as bigger ones."""
WIDE_MODEL: dict[str, Any] = {**CALIBRATION_MODEL, "hidden_size": 512, "intermediate_size": 1376,
                               "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 4}
"""A wider, deeper probe (~27M parameters): its step has another balance of matmul, attention
and elementwise work than the 256-wide one, so the shape-timed model's two constants are
fitted over different shapes (see :func:`derive_shape_rates`)."""
PROBE_MODELS = {"base": CALIBRATION_MODEL, "wide": WIDE_MODEL}
BATCH, SEQ, STEPS = 4, 256, 6
HEAPS = ("bounded", "default")
"""Each probe runs under the trainer's bounded heap and under glibc's default heap (the
trainer's choice when memory is not tight): a bounded step page-faults every large block
and runs up to 2x slower, so each heap gets its own in-step constants."""
SMALL_PROBE = (1, 32)
WIDE_PROBE = (2, 512)
"""A second probe of few tokens: its step is mostly the optimizer's streaming, which separates
the streaming rate from the matmul rate (see :mod:`shoestring.plan.flops`)."""


def _child(method: str, precision: str = "fp32", batch_size: int = BATCH, seq_len: int = SEQ,
           model_name: str = "base", heap: str = "bounded") -> dict[str, Any]:
    """Runs in the subprocess: real steps through the trainer's modules; returns measurements.

    ``heap``: ``bounded`` (the trainer's ``bound_allocator``) or ``default`` (glibc's own heap,
    what the trainer runs with when memory is not tight).
    """
    if heap == "bounded":
        from shoestring.plan.allocator import bound_cpu_allocator

        bound_cpu_allocator()
    import torch

    from shoestring.core.metering import PeakMemoryMeter

    meter = PeakMemoryMeter("cpu")
    meter.__enter__()

    config = _probe_config(model_name)
    try:  # the trainer's own path when it is installed
        from shoestring.train.modeling import LossModule, _apply_lora

        torch.manual_seed(0)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)
        model.config.use_cache = False
        from shoestring.train.fastpath import use_packed_attention

        use_packed_attention(model)  # the trainer's default for packed rows (fast_paths)
        if method == "lora":
            from shoestring.train.config import LoraOptions

            model = _apply_lora(model, "causal-lm", LoraOptions.model_validate({}), kbit=False)
        lossmod = LossModule.create(model, "causal-lm")
        path = "shoestring.train"
    except ImportError:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)
        lossmod = None
        path = "transformers"
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=True)
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(0))
    # Packed rows as the trainer feeds them: position ids restart at each document (two per
    # row here), so transformers builds the same boolean block mask and attention kernel.
    half = seq_len // 2
    pos = torch.cat([torch.arange(half), torch.arange(seq_len - half)]).repeat(batch_size, 1)
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": pos}
    times = []
    for _ in range(STEPS + 1):
        t0 = time.perf_counter()
        cast = (torch.autocast(device_type="cpu", dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
        with cast:  # the trainer's bf16 = autocast around the forward and loss
            if lossmod is not None:
                loss_sum, n = lossmod(**batch)
                loss = loss_sum / n
            else:
                loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    meter.stop()
    return {"step_seconds": statistics.median(times[1:]), "peak_memory_bytes": meter.peak_bytes, "path": path,
            "threads": torch.get_num_threads()}


def calibrate(method: str = "full") -> dict[str, Any]:
    """Measure this machine with a real training step; store and return the calibration."""
    from shoestring.core.errors import ShoestringError
    from shoestring.plan.hardware import load_hardware, save_hardware

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    hw = load_hardware()
    precisions = ["fp32"] + (["bf16"] if hw.get("cpu_bf16_flops") else [])
    probes: list[dict[str, Any]] = []
    for heap, precision in [(h, p) for h in HEAPS for p in precisions]:
        for name, (batch_size, seq_len) in (("base", (BATCH, SEQ)), ("base", SMALL_PROBE), ("wide", WIDE_PROBE)):
            cmd = [sys.executable, "-m", "shoestring.plan.calibrate", method, precision, str(batch_size), str(seq_len),
                   name, heap]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            lines = [x for x in out.stdout.splitlines() if x.startswith("CALIBRATION ")]
            if out.returncode != 0 or not lines:
                tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
                raise ShoestringError(f"calibration step failed ({tail}); run `shoestring plan` without --calibrate")
            m = json.loads(lines[-1][len("CALIBRATION "):])
            probes.append({"precision": precision, "batch": batch_size, "seq_len": seq_len, "method": method,
                           "model": name, "heap": heap, **m,
                           **_probe_model(method, precision, batch_size, seq_len, name)})
    # The FLOP model and the framework overhead stand on the bounded probes (RSS = live tensors).
    cal = derive_rates([p for p in probes if p["heap"] == "bounded"], hw)
    cal["heap_retention"] = heap_retention(probes)
    t_shapes = time.perf_counter()
    probes = [{**p, **_probe_shapes(p, hw)} for p in probes]
    cal["shape_model"] = derive_shape_rates(probes)
    cal["shape_seconds"] = round(time.perf_counter() - t_shapes, 2)
    fp32 = probes[0]
    cal.update({
        "framework_overhead_bytes": max(0, int(fp32["peak_memory_bytes"] - fp32["predicted_peak_without_overhead"])),
        "measured_peak_bytes": int(fp32["peak_memory_bytes"]),
        "predicted_peak_without_overhead": fp32["predicted_peak_without_overhead"],
        "step_seconds": fp32["step_seconds"],
        "code_path": fp32["path"],
        "threads": fp32["threads"],
        "model": CALIBRATION_MODEL,
        "batch": BATCH,
        "seq_len": SEQ,
        "probes": probes,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    hw["calibration"] = cal
    save_hardware(hw)
    return cal


def _probe_config(name: str = "base") -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**{k: v for k, v in PROBE_MODELS[name].items() if k != "model_type"})


def _probe_model(method: str, precision: str, batch_size: int, seq_len: int, name: str = "base") -> dict[str, Any]:
    """The planner's FLOPs, streamed bytes and peak (no overhead) for one probe shape."""

    from shoestring.plan.arch import describe_model
    from shoestring.plan.flops import streamed_bytes, training_flops_per_token
    from shoestring.plan.memory import estimate_training_memory

    config = _probe_config(name)
    shape = describe_model(config, "causal-lm")
    setup = _probe_setup(method, precision, batch_size, seq_len)
    mem = estimate_training_memory(config, shape, setup, framework_overhead=0)
    flops = training_flops_per_token(shape, seq_len, mem.trainable_params,
                                     lora=method in ("lora", "qlora")) * batch_size * seq_len
    per_micro, per_step = streamed_bytes(mem, setup, shape)
    return {"flops": flops, "streamed_bytes": per_micro + per_step,
            "predicted_peak_without_overhead": int(mem.peak_bytes)}


def _probe_setup(method: str, precision: str, batch_size: int, seq_len: int) -> Any:
    from shoestring.plan.memory import TrainingSetup

    half = seq_len // 2  # the probe rows hold two documents (see _child)
    segments = ((half, 2.0),) if seq_len - half == half else ((half, 1.0), (seq_len - half, 1.0))
    return TrainingSetup(method=method, micro_batch_size=batch_size, seq_len=seq_len,  # type: ignore[arg-type]
                         precision="fp32" if precision == "fp32" else "bf16-mixed", doc_segments=segments)


def _probe_shapes(probe: dict[str, Any], hw: dict[str, Any], measure: bool = True) -> dict[str, Any]:
    """The probe's timed seconds (its calls + the optimizer), forward allocations and operator count."""

    from shoestring.plan.shape_timing import measure_shapes
    from shoestring.plan.shapes import optimizer_seconds, shape_seconds, step_shapes_cached

    config = _probe_config(probe.get("model", "base"))
    setup = _probe_setup(probe.get("method", "full"), probe["precision"], probe["batch"], probe["seq_len"])
    shapes = step_shapes_cached(config, setup)
    table = measure_shapes(shapes, setup.compute_dtype, hw=hw, refresh=True) if measure else hw.get("shape_times", {})
    seconds = shape_seconds(shapes, setup.compute_dtype, table)
    opt = optimizer_seconds(shapes, table)
    if seconds is not None and opt is not None:
        seconds += opt
    return {"matmul_seconds": seconds, "allocated_bytes": shapes.allocated_bytes, "ops": shapes.ops}


def heap_retention(probes: list[dict[str, Any]]) -> dict[str, float]:
    """Peak RSS under glibc's default heap / peak RSS bounded, per probe shape, and their median.

    The bounded peak is what the memory model predicts (live tensors); the default heap keeps
    freed blocks for reuse, so its resident peak is higher by a factor that depends on the
    step's allocation pattern. Reported beside each plan, never folded into ``peak_bytes``.
    """
    out: dict[str, float] = {}
    for p in probes:
        if p.get("heap") != "default":
            continue
        twin = [b for b in probes if b.get("heap") == "bounded" and all(
            b.get(k) == p.get(k) for k in ("precision", "batch", "seq_len", "model"))]
        if twin and twin[0]["peak_memory_bytes"] > 0:
            out[f"{p['precision']} {p['model']} {p['batch']}x{p['seq_len']}"] = round(
                p["peak_memory_bytes"] / twin[0]["peak_memory_bytes"], 3)
    if out:
        out["median"] = statistics.median(out.values())
    return out


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
    cal["shape_model"] = derive_shape_rates(probes)
    cal["framework_overhead_bytes"] = max(0, int(probes[0]["peak_memory_bytes"]
                                                 - probes[0]["predicted_peak_without_overhead"]))
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
        big, small = [p for p in probes if p["precision"] == precision and p.get("model", "base") == "base"][:2]
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
    return {"utilisation": util["fp32"], "utilisation_by_dtype": util, "stream_rate_by_dtype": stream,
            "achieved_flops": probes[0]["flops"] / probes[0]["step_seconds"]}


if __name__ == "__main__":
    argv = sys.argv[1:] + ["full", "fp32", str(BATCH), str(SEQ), "base"][len(sys.argv) - 1:]
    argv += ["bounded"][len(argv) - 5:]
    print("CALIBRATION " + json.dumps(_child(argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4], argv[5])),
          flush=True)
