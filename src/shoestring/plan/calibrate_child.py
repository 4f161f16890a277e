"""The machine calibration's one child process (``python -m shoestring.plan.calibrate_child``).

One process, so the trainer's libraries are imported once (about 6 s of CPU on 2 cores), and
bounded in time: it measures, in order,

1. **library residency**: RSS after importing what ``shoestring train`` imports;
2. **probe steps**: real optimizer steps of the probe models (:mod:`shoestring.plan.calibrate`)
   through the trainer's modules on glibc's default heap, fp32 and (where the CPU multiplies
   bf16 natively) bf16 autocast, and every call of those steps timed alone
   (:mod:`shoestring.plan.shape_timing`);
3. **bytes per dataset token** the trainer's rows hold (Python lists of ints);
4. **checkpoint write rate** (safetensors write + fsync);
5. **fault rate**: what a fresh mmapped block costs per byte over a reused one (the bounded
   heap's price), last, because bounding the heap cannot be undone in a process.

It prints ``PROGRESS done total label`` lines for the parent's progress bar and one
``CALIBRATION {json}`` line. Past ``deadline_s`` it skips the remaining probe steps (the fit
then stands on fewer probes and says so); the first two probe shapes always run, so every
precision keeps enough probes for its in-step factor on a busy machine.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

__all__ = ["PROBES"]

PROBES = (("base", 4, 256), ("base", 1, 32), ("wide", 2, 512))
"""(probe model, micro-batch, sequence length): mostly matmuls, mostly the optimizer, wider."""
PROBE_STEPS = 3
SHAPE_MIN_SECONDS = 0.04


def _say(done: int, total: int, label: str) -> None:
    print(f"PROGRESS {done} {total} {label}", flush=True)


def _library_rss() -> int:
    import torch
    import transformers  # noqa: F401

    import shoestring.train.data
    import shoestring.train.fastpath
    import shoestring.train.modeling
    import shoestring.train.stage  # noqa: F401
    from shoestring.core.metering import current_rss_bytes

    try:
        import peft  # noqa: F401
        import torch.utils.tensorboard  # noqa: F401
        import typer  # noqa: F401  (the CLI around the stage)
    except ImportError:
        pass
    return current_rss_bytes()


def _probe_step(name: str, precision: str, batch: int, seq: int) -> float:
    """Median seconds of :data:`PROBE_STEPS` optimizer steps of a probe after a warm-up."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    from shoestring.plan.calibrate import probe_config
    from shoestring.train.fastpath import use_packed_attention
    from shoestring.train.modeling import LossModule

    torch.manual_seed(0)
    config = probe_config(name)
    model = AutoModelForCausalLM.from_config(config)
    model.config.use_cache = False
    use_packed_attention(model)  # the trainer's default for packed rows (fast paths)
    lossmod = LossModule.create(model, "causal-lm")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=True)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    half = seq // 2  # two packed documents per row: position ids restart as the trainer feeds them
    pos = torch.cat([torch.arange(half), torch.arange(seq - half)]).repeat(batch, 1)
    inputs = {"input_ids": ids, "labels": ids.clone(), "position_ids": pos}
    times = []
    for _ in range(PROBE_STEPS + 1):
        t0 = time.perf_counter()
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with cast:
            loss_sum, n = lossmod(**inputs)
        (loss_sum / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _probe_calls(name: str, precision: str, batch: int, seq: int) -> dict[str, list[float]]:
    """Every call of the probe's step timed alone (the shape-timed model's table entries)."""
    from shoestring.plan import shape_timing
    from shoestring.plan.calibrate import probe_config, probe_setup
    from shoestring.plan.shapes import step_shapes_cached

    setup = probe_setup("full", precision, batch, seq)
    shapes = step_shapes_cached(probe_config(name), setup)
    calls = [c for c, _ in shapes.calls()] + ([shapes.optimizer] if shapes.optimizer is not None else [])
    payload = {"compute": setup.compute_dtype, "min_seconds": SHAPE_MIN_SECONDS,
               "calls": [(shape_timing.kind_of(c), shape_timing.fields_of(c)) for c in calls]}
    return shape_timing.time_calls(payload)


def _bytes_per_token() -> float:
    """RSS the trainer's rows (``train.data.Row``: three lists of ints) hold per token."""
    from shoestring.core.metering import current_rss_bytes
    from shoestring.train.data import Row

    n, seq = 200_000, 256
    before = current_rss_bytes()
    rows = [Row([1000 + (i * 7 + j) % 40000 for j in range(seq)], [1000 + (i * 7 + j) % 40000 for j in range(seq)],
                list(range(seq))) for i in range(n // seq)]
    grown = current_rss_bytes() - before
    del rows
    return max(0.0, grown / n)


def _write_rate(folder: str) -> float:
    """Bytes/s of a 64 MiB safetensors write + fsync (what a checkpoint costs)."""
    import os
    import tempfile

    import torch
    from safetensors.torch import save_file

    t = {"w": torch.ones(16 * 2**20)}
    with tempfile.TemporaryDirectory(dir=folder) as d:
        path = os.path.join(d, "probe.safetensors")
        t0 = time.perf_counter()
        save_file(t, path)
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
        dt = time.perf_counter() - t0
    return 64 * 2**20 / max(dt, 1e-6)


def _fault_rate() -> float:
    """Bytes/s at which fresh mmapped blocks are paged in and given back (bounded heap) beyond
    what reusing the same block costs (default heap)."""
    import torch

    n = 16 * 2**20 // 4  # 16 MiB blocks of fp32

    def churn(reps: int = 12) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            x = torch.empty(n)
            x.fill_(1.0)
            del x
        return (time.perf_counter() - t0) / reps

    churn(2)
    reused = min(churn() for _ in range(3))
    from shoestring.core.allocator import bound_cpu_allocator

    bound_cpu_allocator()
    fresh = min(churn() for _ in range(3))
    extra = fresh - reused
    return 4 * n / extra if extra > 0 else float("inf")


def main(payload: dict[str, Any]) -> dict[str, Any]:
    deadline = time.perf_counter() + float(payload.get("deadline_s", 55.0))
    precisions = list(payload["precisions"])
    total = 2 + 2 * len(precisions) * len(PROBES) + 3
    done = 0
    _say(done, total, "importing the trainer's libraries")
    out: dict[str, Any] = {"library_rss_bytes": _library_rss(), "probes": [], "shape_times": {}, "skipped": []}
    done += 1
    import torch

    out["threads"] = torch.get_num_threads()
    for name, batch, seq in PROBES:  # both precisions of a probe before the next probe (deadline)
        for precision in precisions:
            label = f"{precision} probe {name} {batch}x{seq}"
            if time.perf_counter() > deadline and (name, batch, seq) not in PROBES[:2]:
                out["skipped"].append(label)
                done += 2
                continue
            _say(done, total, f"{label}: training steps")
            step = _probe_step(name, precision, batch, seq)
            done += 1
            _say(done, total, f"{label}: timing its calls")
            out["shape_times"].update(_probe_calls(name, precision, batch, seq))
            done += 1
            out["probes"].append({"model": name, "precision": precision, "batch": batch, "seq_len": seq,
                                  "heap": "default", "method": "full", "step_seconds": step})
    _say(done, total, "dataset rows")
    out["bytes_per_token"] = _bytes_per_token()
    done += 1
    _say(done, total, "checkpoint write rate")
    out["write_bytes_s"] = _write_rate(payload["folder"])
    done += 1
    _say(done, total, "page-fault rate (bounded heap)")
    out["fault_rate_bytes_s"] = _fault_rate()
    done += 2
    _say(total, total, "done")
    return out


if __name__ == "__main__":
    print("CALIBRATION " + json.dumps(main(json.loads(sys.argv[1]))), flush=True)
