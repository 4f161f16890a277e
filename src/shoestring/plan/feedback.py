"""Close the loop: every training run's measured-vs-predicted residual corrects later plans.

``shoestring train`` appends one record per run that followed a CPU plan to this machine's
run log (``$SHOESTRING_CACHE/runs/<fingerprint>.jsonl``, via
:func:`shoestring.core.metering.append_run_record`): the plan's *model* prediction (before any
correction, so corrections never compound) and what the run measured, for the resident peak
and the step time. A later plan multiplies its model prediction by a correction per figure:

* each run's ratio measured / predicted is clipped to [:data:`RATIO_MIN`, :data:`RATIO_MAX`]
  (one pathological run cannot move a plan more than that);
* the correction is the geometric mean of the newest :data:`KEEP` ratios at the most specific
  level that has any: the same job (model, task, method, precision, sequence length,
  micro-batch, accumulation, checkpointing, heap), else the same model family (model, task,
  method, precision), else the whole machine;
* it is shrunk toward 1 by ``n / (n + prior)``: memory hardly moves (a second run of the same job
  resided within 2.6% of the first on 13 of the accuracy benchmark's 14 configurations, 7.6% on
  one), so the same job's ratio is taken whole (prior 0); a step time moves 10-20% run to run on a shared machine, so its prior is 1 run;
  wider levels generalise less and carry priors of 1 (family) and 3 (machine) runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KEEP", "RATIO_MAX", "RATIO_MIN", "Correction", "correction", "run_log_path", "signatures"]

RATIO_MIN, RATIO_MAX = 0.5, 2.0
KEEP = 8
PRIORS = {"memory": {"job": 0.0, "family": 1.0, "machine": 3.0},
          "step": {"job": 1.0, "family": 1.0, "machine": 3.0}}
"""Shrinkage priors (in runs) by figure and level; see the module docstring."""


def run_log_path(key: str | None = None) -> Path:
    """This machine's run log (one per calibration fingerprint)."""
    from shoestring.models.loading import cache_dir
    from shoestring.plan.hardware import fingerprint_key

    return cache_dir() / "runs" / f"{key or fingerprint_key()}.jsonl"


def signatures(model: str, task: str, method: str, precision: str, seq_len: int, micro_batch_size: int,
               grad_accum: int, checkpointing: bool, bounded_heap: bool) -> dict[str, str]:
    """The job and family keys a run is filed under."""
    task = "causal-lm" if task == "sft" else task
    family = f"{model}|{task}|{method}|{precision}"
    job = f"{family}|{seq_len}|{micro_batch_size}x{grad_accum}|ckpt{int(checkpointing)}|bounded{int(bounded_heap)}"
    return {"job": job, "family": family}


@dataclass(frozen=True)
class Correction:
    """Multipliers for one plan's resident peak and step time, and where they came from."""

    memory: float = 1.0
    step: float = 1.0
    memory_how: str = "no earlier run on this machine"
    step_how: str = "no earlier run on this machine"


def _ratios(records: list[dict[str, Any]], figure: str) -> list[float]:
    out = []
    for r in records:
        pred = (r.get("predicted") or {}).get(figure)
        meas = (r.get("measured") or {}).get(figure)
        if isinstance(pred, int | float) and isinstance(meas, int | float) and pred > 0 and meas > 0:
            out.append(min(RATIO_MAX, max(RATIO_MIN, meas / pred)))
    return out[-KEEP:]


def _one(records: list[dict[str, Any]], keys: dict[str, str], figure: str, kind: str) -> tuple[float, str]:
    levels = (("job", [r for r in records if r.get("job") == keys["job"]]),
              ("family", [r for r in records if r.get("family") == keys["family"]]),
              ("machine", records))
    for level, rows in levels:
        ratios = _ratios(rows, figure)
        if not ratios:
            continue
        n = len(ratios)
        mean_log = sum(math.log(x) for x in ratios) / n
        w = n / (n + PRIORS[kind][level])
        factor = math.exp(w * mean_log)
        return factor, (f"x{factor:.3f} from {n} earlier run{'s' if n > 1 else ''} of the same "
                        f"{ {'job': 'job', 'family': 'model and method', 'machine': 'machine'}[level]} "
                        f"(measured/predicted {math.exp(mean_log):.3f}, weight {w:.2f})")
    return 1.0, "no earlier run on this machine"


def correction(keys: dict[str, str], path: Path | None = None) -> Correction:
    """The correction this machine's run log gives a plan filed under ``keys``."""
    from shoestring.core.metering import read_run_records

    records = read_run_records(path or run_log_path())
    mem, mem_how = _one(records, keys, "resident_peak_bytes", "memory")
    step, step_how = _one(records, keys, "step_seconds", "step")
    return Correction(mem, step, mem_how, step_how)
