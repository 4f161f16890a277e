"""The machine calibration's cache (fingerprint, stale/foreign detection) and the feedback loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from shoestring.core.metering import append_run_record, read_run_records
from shoestring.plan import hardware
from shoestring.plan.feedback import RATIO_MAX, correction, signatures


def _calibrated(fp: dict) -> dict:
    return {**hardware.load_hardware(), "calibration": {"fingerprint": fp, "measured_at": "2026-01-01T00:00:00Z"}}


def test_calibration_state_fresh_missing_stale_and_foreign() -> None:
    path = hardware.hardware_cache_path()
    saved = path.read_text()
    try:
        state, why = hardware.calibration_state()
        assert state == "missing" and "not been calibrated" in why
        now = hardware.fingerprint()
        hardware.save_hardware(_calibrated(now))
        assert hardware.calibration_state()[0] == "fresh"
        # The same file recording another machine: a copied or shared cache folder.
        hardware.save_hardware(_calibrated({**now, "cpu": "Some Other CPU", "cores": 96}))
        state, why = hardware.calibration_state()
        assert state == "foreign" and "Some Other CPU" in why
        # Calibrated on this machine with other libraries: found under its own key, named as stale.
        path.write_text(saved)
        old = {**now, "torch": "2.0.0"}
        other = path.with_name(f"hardware-{hardware.fingerprint_key(old)}.json")
        other.write_text(json.dumps({"calibration": {"fingerprint": old}}))
        state, why = hardware.calibration_state()
        assert state == "stale" and "torch 2.0.0 -> " in why
        other.unlink()
    finally:
        path.write_text(saved)


def test_fingerprint_names_the_libraries_and_the_cpu() -> None:
    fp = hardware.fingerprint()
    for key in ("cpu", "cores", "flags", "ram_gib", "glibc", "python", "torch", "transformers", "peft"):
        assert key in fp
    assert hardware.fingerprint_key(fp) == hardware.fingerprint_key(dict(fp))
    assert hardware.fingerprint_key({**fp, "torch": "0"}) != hardware.fingerprint_key(fp)


def _record(keys: dict[str, str], pred: float, meas: float, step_p: float = 1.0, step_m: float = 1.0) -> dict:
    return {**keys, "predicted": {"resident_peak_bytes": pred, "step_seconds": step_p},
            "measured": {"resident_peak_bytes": meas, "step_seconds": step_m}}


def test_feedback_corrects_the_same_job_whole_and_others_shrunk(tmp_path: Path) -> None:
    log = tmp_path / "runs.jsonl"
    job = signatures("m", "sft", "lora", "bf16-mixed", 256, 8, 1, False, False)
    assert job == signatures("m", "causal-lm", "lora", "bf16-mixed", 256, 8, 1, False, False)
    append_run_record(log, _record(job, 1000.0, 1200.0, 2.0, 3.0))
    c = correction(job, log)
    assert c.memory == pytest.approx(1.2)  # memory hardly moves run to run: the same job's ratio taken whole
    assert c.step == pytest.approx(1.5 ** 0.5)  # a noisy step: one run weighs half (prior of 1 run)
    other_mb = signatures("m", "sft", "lora", "bf16-mixed", 256, 4, 2, False, False)
    c2 = correction(other_mb, log)  # same model and method, another micro-batch: the family level
    assert c2.memory == pytest.approx(1.2 ** 0.5) and "model and method" in c2.memory_how
    stranger = signatures("x", "masked-lm", "full", "fp32", 128, 8, 1, False, False)
    c3 = correction(stranger, log)  # only the machine level: prior of 3 runs
    assert c3.memory == pytest.approx(1.2 ** 0.25) and "machine" in c3.memory_how


def test_feedback_is_bounded_and_keeps_the_newest_runs(tmp_path: Path) -> None:
    log = tmp_path / "runs.jsonl"
    job = signatures("m", "sft", "lora", "fp32", 256, 8, 1, False, False)
    append_run_record(log, _record(job, 1000.0, 50_000.0))  # a pathological run: clipped
    assert correction(job, log).memory == pytest.approx(RATIO_MAX)
    for _ in range(10):
        append_run_record(log, _record(job, 1000.0, 1100.0))
    assert correction(job, log).memory == pytest.approx(1.1)  # the newest 8 runs only
    for _ in range(5):
        append_run_record(log, _record(job, 1000.0, 1100.0), keep=6)
    assert len(read_run_records(log)) == 6
    log.write_text(log.read_text() + "not json\n")
    assert len(read_run_records(log)) == 6


def test_train_files_a_run_only_when_it_followed_a_cpu_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoestring.core.plan_contract import PlanDocument
    from shoestring.train.stage import _feed_back, plan_comparison

    monkeypatch.setenv("SHOESTRING_CACHE", str(tmp_path))
    keys = signatures("m", "sft", "lora", "fp32", 256, 8, 1, False, False)
    plan = PlanDocument.model_validate(
        {"model": "m", "task": "sft", "method": "lora", "seq_len": 256, "micro_batch_size": 8, "grad_accum": 1,
         "precision": "fp32", "activation_checkpointing": False,
         "predicted": {"resident_peak_bytes": 2000, "step_seconds": 2.0, "peak_memory_bytes": 900,
                       "live_peak_bytes": 800},
         "run": {"setup_seconds": 5.0, "eval_seconds_per_row": 0.1, "checkpoint_seconds": 1.0},
         "calibration": {"fingerprint": "abc"},
         "feedback": {**keys, "model": {"resident_peak_bytes": 1900, "step_seconds": 2.2}}})  # fmt: skip
    stats = {"resident_peak_bytes": 2200, "peak_memory_bytes": 1000, "step_seconds": 2.5, "steps": 10,
             "val_rows": 4, "eval_passes": 2, "checkpoints": 3, "run_seconds": 40.0}
    comp = plan_comparison(plan, stats, [])
    assert comp["predicted"]["run_seconds"] == pytest.approx(5.0 + 10 * 2.0 + 0.1 * 4 * 2 + 3 * 1.0)
    assert comp["errors"]["resident_peak_bytes"] == pytest.approx(2000 / 2200 - 1, abs=1e-4)
    assert comp["errors"]["live_peak_bytes"] == pytest.approx(800 / 1000 - 1, abs=1e-4)
    _feed_back(plan, comp, ["micro_batch_size: planned 8, running 4"], "cpu")
    assert not (tmp_path / "runs" / "abc.jsonl").exists()  # a run that deviated says nothing about the plan
    _feed_back(plan, comp, [], "cpu")
    (rec,) = read_run_records(tmp_path / "runs" / "abc.jsonl")
    assert rec["predicted"] == {"resident_peak_bytes": 1900, "step_seconds": 2.2}  # the model's, uncorrected
    assert rec["measured"] == {"resident_peak_bytes": 2200, "step_seconds": 2.5}
    assert math.isclose(correction(keys, tmp_path / "runs" / "abc.jsonl").memory, 2200 / 1900)


def test_twins_extrapolate_the_resident_growth_per_block() -> None:
    from shoestring.plan.resident import estimate_resident, step_from_twins
    from shoestring.plan.twin import twin_depths

    mib = 2**20
    twins = [{"depth": 1, "base_rss_bytes": 400 * mib, "peak_rss_bytes": 900 * mib, "step_seconds": 1.0},
             {"depth": 2, "base_rss_bytes": 400 * mib, "peak_rss_bytes": 950 * mib, "step_seconds": 1.3}]
    est = estimate_resident(twins, 30, 450 * mib, 1200 * mib)
    assert est.per_block_bytes == 50 * mib and est.run_bytes == (500 + 29 * 50) * mib
    assert est.resident_peak_bytes == 450 * mib + est.run_bytes
    # the model predicts 0.8 and 1.4 s (0.6 s per block), the twins measure 1.0 and 1.3 (0.3 s): the
    # full step is the 1-block twin's 1.0 s + the model's other 29 blocks (10.0 - 0.8) at half cost
    step, scale, how = step_from_twins(twins, [0.8, 1.4], 10.0)
    assert scale == pytest.approx(0.5) and step == pytest.approx(1.0 + 0.5 * 9.2) and how == "per block"
    assert step_from_twins(twins, [0.8, 0.81], 10.0)[1] == 2.0  # bounded: at most 2x either way
    assert step_from_twins(twins, [0.8, None], 10.0) == (10.0, 1.0, "model")  # one modelled twin: the model alone
    # twins whose steps jitter by more than their difference: the model's whole step x their summed ratio
    noisy = [{**twins[0], "step_times": [2.0, 1.5, 1.0, 0.7, 1.3, 1.0, 0.8]},
             {**twins[1], "step_times": [2.0, 1.5, 1.3, 1.0, 1.6, 1.3, 1.1]}]
    step, scale, how = step_from_twins(noisy, [0.8, 1.4], 10.0)
    assert how == "whole step" and scale == pytest.approx(2.3 / 2.2) and step == pytest.approx(10.0 * 2.3 / 2.2)
    steady = [{**twins[0], "step_times": [2.0, 1.5, 1.0, 1.01, 0.99, 1.0]},
              {**twins[1], "step_times": [2.0, 1.5, 1.3, 1.31, 1.29, 1.3]}]
    assert step_from_twins(steady, [0.8, 1.4], 10.0)[2] == "per block"
    assert twin_depths("lora", 2, 30) == (2, 4)  # no planned step: the cheapest pair
    # the quickstart's 18.6 s step: a 12-block twin's 5 steps cost ~37 s, inside the 60 s allowance
    assert twin_depths("lora", 2, 30, 18.6) == (2, 12)
    # a 0.45 s step: the whole model's 5 steps cost 2.3 s, so the deeper twin is the model itself
    assert twin_depths("lora", 2, 8, 0.45) == (2, 8)
    assert twin_depths("lora", 2, 30, 40.0) == (2, 9)  # slower: as deep as 60 s of steps allows
    assert twin_depths("lora", 2, 30, 600.0) == (2, 4)  # never shallower than b + 4
    assert twin_depths("full", 2, 8, 3.0) == (2, 4)  # 40% of 8 blocks (the whole model: 15 s of steps)
    assert twin_depths("frozen", 2, 8) == (4, 6)  # keep the trainable top blocks, add frozen ones
    assert twin_depths("full", 2, 4) == (2, 4) and twin_depths("full", 2, 3) == (1, 3)
    assert twin_depths("full", 2, 2) == (1, 2)
