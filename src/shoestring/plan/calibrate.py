"""`shoestring plan --calibrate`: measure what a real training step achieves on this machine.

A fresh subprocess (so memory starts clean) builds a small Llama-style model through the
trainer's own code (``shoestring.train.modeling.build_model`` + its loss module and AdamW),
runs one warm-up and a few timed optimizer steps under :class:`PeakMemoryMeter`, and
reports the median step time and the peak. From them:

* ``utilisation`` = achieved training FLOP/s (the planner's FLOP count for that step divided
  by the measured time) / the probe's fp32 matmul FLOP/s; the same step under bf16
  autocast (the trainer's ``precision: bf16``) gives ``utilisation_by_dtype["bf16"]``
  against the bf16 matmul rate, because on a CPU autocast's casts and the non-matmul
  work do not speed up with the bf16 matmul units (one fp32 figure would predict a bf16
  step 2-3x too fast);
* ``framework_overhead_bytes`` = measured peak - the planner's prediction without overhead.

Both are stored in the hardware cache and used by every later plan on this machine.
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


def _child(method: str, precision: str = "fp32") -> dict[str, Any]:
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
    ids = torch.randint(0, config.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(SEQ).repeat(BATCH, 1)}
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
    from transformers import LlamaConfig

    from shoestring.core.errors import ShoestringError
    from shoestring.plan.arch import describe_model
    from shoestring.plan.flops import training_flops_per_token
    from shoestring.plan.hardware import load_hardware, save_hardware
    from shoestring.plan.memory import TrainingSetup, estimate_training_memory

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    hw = load_hardware()
    precisions = ["fp32"] + (["bf16"] if hw.get("cpu_bf16_flops") else [])
    measured: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        out = subprocess.run([sys.executable, "-m", "shoestring.plan.calibrate", method, precision], capture_output=True,
                             text=True, env=env, timeout=900)
        lines = [x for x in out.stdout.splitlines() if x.startswith("CALIBRATION ")]
        if out.returncode != 0 or not lines:
            tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise ShoestringError(f"calibration step failed ({tail}); run `shoestring plan` without --calibrate")
        measured[precision] = json.loads(lines[-1][len("CALIBRATION "):])
    config = LlamaConfig(**{k: v for k, v in CALIBRATION_MODEL.items() if k != "model_type"})
    shape = describe_model(config, "causal-lm")
    setup = TrainingSetup(method=method, micro_batch_size=BATCH, seq_len=SEQ)  # type: ignore[arg-type]
    mem = estimate_training_memory(config, shape, setup, framework_overhead=0)
    fpt = training_flops_per_token(shape, SEQ, mem.trainable_params, lora=method in ("lora", "qlora"))
    fp32 = measured["fp32"]
    by_dtype = {p: fpt * BATCH * SEQ / m["step_seconds"] / float(hw[f"cpu_{p}_flops"]) for p, m in measured.items()}
    cal = {
        "utilisation": by_dtype["fp32"],
        "utilisation_by_dtype": by_dtype,
        "achieved_flops": fpt * BATCH * SEQ / fp32["step_seconds"],
        "framework_overhead_bytes": max(0, int(fp32["peak_memory_bytes"] - mem.peak_bytes)),
        "measured_peak_bytes": int(fp32["peak_memory_bytes"]),
        "predicted_peak_without_overhead": int(mem.peak_bytes),
        "step_seconds": fp32["step_seconds"],
        "step_seconds_by_dtype": {p: m["step_seconds"] for p, m in measured.items()},
        "code_path": fp32["path"],
        "threads": fp32["threads"],
        "model": CALIBRATION_MODEL,
        "batch": BATCH,
        "seq_len": SEQ,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    hw["calibration"] = cal
    save_hardware(hw)
    return cal


if __name__ == "__main__":
    print("CALIBRATION " + json.dumps(_child(sys.argv[1] if len(sys.argv) > 1 else "full",
                                             sys.argv[2] if len(sys.argv) > 2 else "fp32")), flush=True)
