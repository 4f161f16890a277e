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
* ``framework_overhead_bytes`` = measured peak - the planner's prediction without overhead.

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
BATCH, SEQ, STEPS = 4, 256, 4
SMALL_PROBE = (1, 32)
"""A second probe of few tokens: its step is mostly the optimizer's streaming, which separates
the streaming rate from the matmul rate (see :mod:`shoestring.plan.flops`)."""


def _child(method: str, precision: str = "fp32", batch_size: int = BATCH, seq_len: int = SEQ) -> dict[str, Any]:
    """Runs in the subprocess: real steps through the trainer's modules; returns measurements."""
    from shoestring.plan.allocator import bound_cpu_allocator

    bound_cpu_allocator()
    import torch

    from shoestring.core.metering import PeakMemoryMeter

    meter = PeakMemoryMeter("cpu")
    meter.__enter__()
    from transformers import LlamaConfig

    config = LlamaConfig(**{k: v for k, v in CALIBRATION_MODEL.items() if k != "model_type"})
    try:  # the trainer's own path when it is installed
        from shoestring.train.modeling import LossModule, _apply_lora

        torch.manual_seed(0)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)
        model.config.use_cache = False
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
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(seq_len).repeat(batch_size, 1)}
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
    for precision in precisions:
        for batch_size, seq_len in ((BATCH, SEQ), SMALL_PROBE):
            cmd = [sys.executable, "-m", "shoestring.plan.calibrate", method, precision, str(batch_size), str(seq_len)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            lines = [x for x in out.stdout.splitlines() if x.startswith("CALIBRATION ")]
            if out.returncode != 0 or not lines:
                tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
                raise ShoestringError(f"calibration step failed ({tail}); run `shoestring plan` without --calibrate")
            m = json.loads(lines[-1][len("CALIBRATION "):])
            probes.append({"precision": precision, "batch": batch_size, "seq_len": seq_len, "method": method, **m,
                           **_probe_model(method, precision, batch_size, seq_len)})
    cal = derive_rates(probes, hw)
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


def _probe_model(method: str, precision: str, batch_size: int, seq_len: int) -> dict[str, Any]:
    """The planner's FLOPs, streamed bytes and peak (no overhead) for one probe shape."""
    from transformers import LlamaConfig

    from shoestring.plan.arch import describe_model
    from shoestring.plan.flops import streamed_bytes, training_flops_per_token
    from shoestring.plan.memory import TrainingSetup, estimate_training_memory

    config = LlamaConfig(**{k: v for k, v in CALIBRATION_MODEL.items() if k != "model_type"})
    shape = describe_model(config, "causal-lm")
    setup = TrainingSetup(method=method, micro_batch_size=batch_size, seq_len=seq_len,  # type: ignore[arg-type]
                          precision="fp32" if precision == "fp32" else "bf16-mixed")
    mem = estimate_training_memory(config, shape, setup, framework_overhead=0)
    flops = training_flops_per_token(shape, seq_len, mem.trainable_params,
                                     lora=method in ("lora", "qlora")) * batch_size * seq_len
    per_micro, per_step = streamed_bytes(mem, setup, shape)
    return {"flops": flops, "streamed_bytes": per_micro + per_step,
            "predicted_peak_without_overhead": int(mem.peak_bytes)}


def rederive(hw: dict[str, Any]) -> dict[str, Any]:
    """Re-derive the stored calibration's rates from its *measured* probe times with the
    current FLOP and streaming model (after a model change, without re-measuring)."""
    cal = dict(hw.get("calibration", {}))
    probes = cal.get("probes")
    if not probes:
        return cal
    probes = [{**p, **_probe_model(p.get("method", "full"), p["precision"], p["batch"], p["seq_len"])} for p in probes]
    cal.update(derive_rates(probes, hw), probes=probes)
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
        big, small = [p for p in probes if p["precision"] == precision][:2]
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
    argv = sys.argv[1:] + ["full", "fp32", str(BATCH), str(SEQ)][len(sys.argv) - 1:]
    print("CALIBRATION " + json.dumps(_child(argv[0], argv[1], int(argv[2]), int(argv[3]))), flush=True)
