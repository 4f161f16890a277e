"""A CPU plan's headline, on this machine: calibrate on first use, then predict what the user
will measure (resident peak, wall time per step and per run), each term with how it was obtained.

Order of work in :func:`cpu_headline`: the machine calibration when it is missing, stale or
foreign (:func:`ensure_calibration`), this model's shapes when they were never timed, the
planned run's shallow twins (:mod:`shoestring.plan.twin`), then this machine's feedback
correction (:mod:`shoestring.plan.feedback`). The result goes to ``plan.json`` (``predicted``,
``run``, ``explain``, ``calibration``, ``feedback``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from shoestring.plan.catalogue import DeviceSpec
    from shoestring.plan.search import Candidate

__all__ = ["cpu_headline", "ensure_calibration"]

MiB = 2**20


def _progress(console: Console | None, title: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(f"[bold]{title}[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.description}"), console=console, transient=False,
                    disable=console is None)


def ensure_calibration(mode: bool | None, console: Console | None) -> dict[str, Any]:
    """Calibrate when ``mode`` is True (refresh) or None and the calibration is not fresh.

    Returns ``{state, why, seconds_now}``; ``state`` after the call (``fresh`` or, with
    ``mode=False``, whatever it was: the plan then uses uncalibrated defaults and says so).
    """
    from shoestring.plan.calibrate import calibrate
    from shoestring.plan.hardware import calibration_state

    state, why = calibration_state()
    if mode is False or (mode is None and state == "fresh"):
        return {"state": state, "why": why, "seconds_now": 0.0}
    reason = "refresh requested (--calibrate)" if mode else why
    if console is not None:
        console.print(f"calibrating this machine: {reason} (once; bounded to about a minute)")
    with _progress(console, "calibrate") as bar:
        task = bar.add_task("", total=1)

        def report(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        cal = calibrate(report)
    return {"state": "fresh", "why": f"measured now ({reason})", "seconds_now": cal.get("seconds", 0.0)}


def cpu_headline(*, cfg: Any, config: Any, shape: Any, best: Candidate, device: DeviceSpec, spec: str,
                 dataset: Path | None, data_info: dict[str, Any], calibration: dict[str, Any],
                 console: Console | None, measure: bool = True) -> dict[str, Any]:
    """Resident peak, step and run time of the chosen candidate on this CPU, with the terms
    (``measure=False``: twins only from the cache, none run)."""
    from shoestring.plan.hardware import fingerprint_key, load_hardware
    from shoestring.plan.resident import estimate_resident, layers_key, step_from_twins, twin_predicted_steps
    from shoestring.plan.search import step_terms

    hw = load_hardware()
    cal = hw.get("calibration", {})
    s = best.setup
    mem = best.memory
    live = mem.peak_bytes - mem.framework_overhead  # tensors only (the overhead term is a default guess)
    explain: list[dict[str, Any]] = []
    out: dict[str, Any] = {"explain": explain, "calibration": {**calibration, "fingerprint": fingerprint_key()}}
    terms = step_terms(config, s, device)
    model_step = best.run.step_seconds
    if terms is not None:
        explain += [
            _row("step", "timed calls", terms["calls"] * s.grad_accum, "s",
                 f"k {terms['k']:.2f} x the step's matmul, attention, loss calls timed alone on this machine"),
            _row("step", "per-operator cost", terms["operators"] * s.grad_accum, "s",
                 f"c {terms['c'] * 1e6:.0f} us x {terms['ops']:.0f} forward operators (c, k fitted on the calibration's probes)"),
            _row("step", "optimizer", terms.get("optimizer", 0.0), "s", "clip + foreach AdamW over the trainable tensors, timed"),
        ]
        if terms["faults"]:
            explain.append(_row("step", "bounded heap page faults", terms["faults"] * s.grad_accum, "s",
                                "allocated bytes / the calibration's fault rate"))
    else:
        explain.append(_row("step", "FLOPs model", model_step, "s",
                            "no timed shapes: FLOPs at the calibrated utilisation (less accurate)"))
    key = layers_key(config)
    twins: list[dict[str, Any]] = []
    resident = None
    library = int(cal.get("library_rss_bytes") or 0)
    data_bytes = int(float(cal.get("bytes_per_token", 0.0)) * int(data_info.get("tokens_after_truncation")
                                                                  or data_info.get("tokens") or 0))
    if cfg.calibrate is not False and key is not None and shape.n_layers >= 2 and library:
        twins, measured_now, seconds = _twins(cfg, config, s, spec, dataset, key, shape.n_layers, console, measure,
                                              model_step)
    if twins:
        resident = estimate_resident(twins, shape.n_layers, library + data_bytes, live)
        out["twins"] = {"measured_now": measured_now, "seconds": seconds,
                        "depths": [t["depth"] for t in twins],
                        "peak_rss_bytes": [t["peak_rss_bytes"] for t in twins],
                        "base_rss_bytes": [t["base_rss_bytes"] for t in twins],
                        "step_seconds": [t["step_seconds"] for t in twins]}
        predicted = twin_predicted_steps(config, s, device, tuple(t["depth"] for t in twins))
        if terms is not None and all(p is not None for p in predicted):
            twin_step, scale, how = step_from_twins(twins, predicted, model_step)
            combined = (f"the shallower twin's step + the other blocks x {scale:.2f} (the twins' measured / "
                        "modelled cost per block; " if how == "per block" else
                        f"the model's step x {scale:.2f} (the twins' measured / modelled step, their difference "
                        "being inside their step noise; ")
            explain.append(_row("step", "the twins' measured blocks", twin_step - model_step, "s",
                                combined + ", ".join(f"{t['depth']} block{'s' if t['depth'] > 1 else ''}: {t['step_seconds']:.3f}"
                                            f" vs {p:.3f} s" for t, p in zip(twins, predicted, strict=False)) + ")"))
            model_step = twin_step
    from shoestring.plan.feedback import correction, signatures

    keys = signatures(spec, cfg.task, s.method, s.precision, s.seq_len, s.micro_batch_size, best.grad_accum,
                      s.activation_checkpointing, bool(s.bounded_heap))
    corr = correction(keys)
    out["feedback"] = {**keys, "model": {"step_seconds": model_step}, "memory_correction": corr.memory,
                       "step_correction": corr.step, "memory_how": corr.memory_how, "step_how": corr.step_how}
    step = model_step * corr.step
    explain.append(_row("step", "feedback from earlier runs", step - model_step, "s", corr.step_how))
    explain.append(_row("step", "step (wall, collate included)", step, "s", "sum of the terms above"))
    pred: dict[str, Any] = {"step_seconds": step, "model_step_seconds": model_step}
    if resident is not None:
        model_resident = resident.resident_peak_bytes
        out["feedback"]["model"]["resident_peak_bytes"] = model_resident
        headline = int(model_resident * corr.memory)
        pred.update(resident_peak_bytes=headline, model_resident_peak_bytes=model_resident,
                    resident_terms=resident.row())
        explain += [
            _row("memory", "library residency", library, "B",
                 f"RSS after importing the trainer's libraries, measured by this machine's calibration ({cal.get('measured_at', '?')})"),
            _row("memory", "dataset rows", data_bytes, "B",
                 f"{data_info.get('tokens_after_truncation') or data_info.get('tokens') or 0:,} tokens x "
                 f"{cal.get('bytes_per_token', 0):.0f} B/token measured"),
            _row("memory", "the run (live + allocator + framework + mapped)", resident.run_bytes, "B",
                 f"twins {resident.twin_depths[0]} and {resident.twin_depths[1]} blocks deep: "
                 f"+{(twins[0]['peak_rss_bytes'] - twins[0]['base_rss_bytes']) / MiB:.0f} and "
                 f"+{(twins[1]['peak_rss_bytes'] - twins[1]['base_rss_bytes']) / MiB:.0f} MiB; "
                 f"{resident.per_block_bytes / MiB:.1f} MiB per block x {shape.n_layers} blocks"),
            _row("memory", "  of which live tensors (model)", live, "B",
                 "weights, gradients, optimizer states, saved activations, logits (meta-device trace)"),
            _row("memory", "  of which allocator, framework, mapped", resident.run_bytes - live, "B",
                 "glibc arenas' free blocks, thread pools, kernel scratch, checkpoint pages (twins - model)"),
            _row("memory", "feedback from earlier runs", headline - model_resident, "B", corr.memory_how),
            _row("memory", "resident peak (what top shows)", headline, "B", "sum of the terms above"),
        ]
    else:
        explain.append(_row("memory", "live-tensor peak", live, "B",
                            "the memory model only: no twin ran (uncalibrated or not a block model); "
                            "resident memory on the default heap is 1.06-1.85x this"))
    out["predicted"] = pred
    out["run"] = _run_terms(cal, s, mem, terms, twins, shape.n_layers, float(data_info.get("tokenize_seconds") or 0.0))
    return out


def _twins(cfg: Any, config: Any, s: Any, spec: str, dataset: Path | None, key: str, n_layers: int,
           console: Console | None, measure: bool, full_step: float) -> tuple[list[dict[str, Any]], bool, float]:
    from shoestring.models.loading import load_tokenizer
    from shoestring.plan.calibrate import calibrate_shapes
    from shoestring.plan.resident import cached_twins, twin_spec, with_depth
    from shoestring.plan.tokens import training_rows
    from shoestring.plan.twin import STEPS, TIMED_SECONDS, WARMUP, twin_depths

    depths = twin_depths(s.method, s.trainable_layers, n_layers, full_step)
    tok = load_tokenizer(spec)
    rows, packed = training_rows(dataset, tok, cfg.task, s.seq_len, packing=cfg.packing,
                                 n=(STEPS + 1) * s.micro_batch_size * s.grad_accum)
    lora = {"r": cfg.lora_rank, "dropout": cfg.lora_dropout, "targets": list(cfg.lora_targets)}
    tspec = twin_spec(model=spec, task=cfg.task, setup=s, from_scratch=_config_only(spec), rows=rows, packed=packed,
                      layers=key, depths=depths, lora=lora if s.method in ("lora", "qlora") else None)
    t0 = time.perf_counter()
    if not measure:
        return cached_twins(tspec, measure=False)[0], False, 0.0
    for d in depths:  # the twins' own optimizer shapes (their other calls are the full model's)
        calibrate_shapes(with_depth(config, d), replace(s, grad_accum=1))
    if console is not None:
        console.print(f"trial run of the planned model {depths[0]} and {depths[1]} blocks deep "
                      f"(micro-batch {s.micro_batch_size}, {WARMUP + STEPS - 1} steps each at least, more until "
                      f"{TIMED_SECONDS:.0f} s are timed; cached)")
    twins, now = cached_twins(tspec, refresh=cfg.calibrate is True)
    return twins, now, round(time.perf_counter() - t0, 1)


def _config_only(spec: str) -> bool:
    """True when the model has no weights to load (a config folder or file): the trainer then
    builds it from the config (``from_scratch``), and so does the twin."""
    p = Path(spec)
    if p.is_file():
        return p.suffix == ".json"
    if p.is_dir():
        return not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")) and not any(p.glob("*.gguf"))
    return False


def _run_terms(cal: dict[str, Any], s: Any, mem: Any, terms: dict[str, float] | None,
               twins: list[dict[str, Any]], n_layers: int, tokenize_seconds: float) -> dict[str, Any]:
    """Per-run costs the trainer composes with its own cadence (eval passes, checkpoints):
    setup = the dataset's tokenising (the plan just did the same work) + building the model
    (the twins' build times, extrapolated per block)."""
    write = float(cal.get("write_bytes_s") or 0.0)
    ckpt_bytes = mem.trainable_params * 12  # fp32 trainable weights + AdamW's two moments
    out: dict[str, Any] = {
        "eval_seconds_per_row": (terms["forward"] / max(1, s.micro_batch_size)) if terms else None,
        "checkpoint_bytes": ckpt_bytes,
        "checkpoint_seconds": ckpt_bytes / write if write else None,
        "setup_seconds": None,
    }
    if len(twins) == 2 and all("build_seconds" in t for t in twins):
        a, b = sorted(twins, key=lambda t: t["depth"])
        per = max(0.0, (b["build_seconds"] - a["build_seconds"]) / max(1, b["depth"] - a["depth"]))
        out["setup_seconds"] = tokenize_seconds + a["build_seconds"] + (n_layers - a["depth"]) * per
    return out


def _row(figure: str, term: str, value: float, unit: str, how: str) -> dict[str, Any]:
    return {"figure": figure, "term": term, "value": value, "unit": unit, "how": how}
