"""The assessment formulas (docs/ASSESS.md) on artifacts whose figures are chosen by hand."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from shoestring.assess.compute import ComputeFacts, Variant, assess_compute, busy_fraction
from shoestring.assess.data_barrier import DataFacts, assess_data, residual_pii
from shoestring.assess.scoring import MIN_REDUCTION

GiB = 1024**3


def _data_facts(**over: object) -> DataFacts:
    stats = {"read": 1000, "kept": 650, "dropped": 300, "quarantined": 50,
             "dropped_by": {"quality": {"too_short": 80, "bad_lang": 20}, "dedup": {"exact_duplicate": 150,
                                                                                 "near_duplicate": 50}},
             "quarantine_reasons": {"bad_json": 40, "wrong_type:x": 10}}
    card = {"normalize": {"mojibake_fixed": 19}, "pii_records": 85, "pii": {"email": 120, "phone": 30},
            "labels": {"coverage": 0.8, "overlap": 0.25, "conflict": 0.05},
            "k_anonymity": {"k": 5, "columns": ["zip"], "records_below_k": 13, "enforced": False}}
    facts = DataFacts(stats, card, {"a": Counter({"bad_json": 30}), "b": Counter({"bad_json": 10, "wrong_type:x": 10})},
                      {"records": 100, "records_with_pii": 3, "by_type": {"email": 3}},
                      plan={"data": {"sequences_per_epoch": 400, "records": 520}, "predicted": {"steps": 100},
                            "batch_size": 8},
                      train=None, privacy={"epsilon": 2.0, "delta": 1e-5}, model_given=True, epsilon_max=10.0)
    for k, v in over.items():
        setattr(facts, k, v)
    return facts


def _by_key(wall: object) -> dict[str, object]:
    return {c.key: c for c in wall.components}  # type: ignore[attr-defined]


def test_data_components_match_the_hand_computed_figures() -> None:
    wall = assess_data(_data_facts())
    c = _by_key(wall)
    parsed = 1000 - 50
    expected = {
        "malformed_share": 50 / 1000,
        "data_repetition": 1 - 400 / (100 * 8),  # the plan trains on 800 sequences, 400 are unique
        "filter_loss": 100 / parsed,
        "duplicate_rate": 200 / parsed,
        "repair_share": 19 / parsed,
        "pii_density": 85 / (parsed - 100),  # quality's drops never reach the PII op
        "label_coverage_gap": 0.2,
        "label_disagreement": 0.05 / 0.25,
        "residual_pii": 3 / 100,
        "k_anonymity_gap": 13 / 650,
        "privacy_budget": 2.0,
    }
    for key, value in expected.items():
        assert c[key].value == pytest.approx(value), key
    assert c["privacy_budget"].score == pytest.approx(0.2)  # epsilon 2 / epsilon_max 10
    acq = (0.05 + 0.5) / 2
    proc = (100 / parsed + 200 / parsed + 19 / parsed + 85 / 850 + 0.2 + 0.2) / 6
    share = (0.03 + 13 / 650 + 0.2) / 3
    assert wall.pillars == pytest.approx({"acquisition": acq, "processing": proc, "sharing": share})
    assert wall.score == pytest.approx((acq + proc + share) / 3)


def test_data_changes_are_priced_by_recomputing_the_formula() -> None:
    wall = assess_data(_data_facts())
    changes = {ch.action.split(" ")[0] + ":" + ch.action.split(" ")[1]: ch for ch in wall.changes}
    # The largest lever: the run repeats half of its data; collecting 400 sequences' worth of
    # records (520 records / 400 sequences = 1.3 per sequence) removes it.
    best = wall.best_change
    assert best is not None and best.action.startswith("collect about 520 more unique training records")
    acq_after = 0.05 / 2
    parsed = 950
    proc = (100 / parsed + 200 / parsed + 19 / parsed + 85 / 850 + 0.2 + 0.2) / 6
    share = (0.03 + 13 / 650 + 0.2) / 3
    assert best.after == pytest.approx((acq_after + proc + share) / 3)
    # Repairing the worst source ('a', 30 of the 50 malformed records) leaves 20 / 1000.
    repair = changes["repair:the"]
    assert "source 'a'" in repair.action
    assert repair.after == pytest.approx(((0.02 + 0.5) / 2 + proc + share) / 3)
    # Enforcing k moves the 13 records below k into the filter loss.
    enforce = changes["enforce:k=5"]
    proc_k = ((100 + 13) / parsed + 200 / parsed + 19 / parsed + 85 / 850 + 0.2 + 0.2) / 6
    assert enforce.after == pytest.approx(((0.05 + 0.5) / 2 + proc_k + (0.03 + 0 + 0.2) / 3) / 3)
    assert [c.reduction for c in wall.changes] == sorted((c.reduction for c in wall.changes), reverse=True)


def test_unmeasured_components_do_not_count() -> None:
    facts = _data_facts(card={"normalize": {}, "pii_records": 0, "pii": {}}, residual=None, privacy=None, plan=None,
                        quarantine_by_source={})
    wall = assess_data(facts)
    c = _by_key(wall)
    for key in ("data_repetition", "label_coverage_gap", "label_disagreement", "residual_pii", "k_anonymity_gap",
                "privacy_budget"):
        assert c[key].score is None and c[key].missing, key
    assert wall.pillars["sharing"] is None
    assert wall.score == pytest.approx((0.05 + (100 / 950 + 200 / 950) / 4) / 2)


def test_trained_model_measures_repetition() -> None:
    train = {"rows": 300, "steps": 50, "micro_batch_size": 2, "grad_accum": 4, "world_size": 1}
    c = _by_key(assess_data(_data_facts(train=train)))
    assert c["data_repetition"].value == pytest.approx(1 - 300 / 400)


def test_residual_pii_skips_the_curators_own_tokens(tmp_path: Path) -> None:
    f = tmp_path / "train.jsonl"
    rows = [{"id": "a@example.com", "text": "mail me at user-1a2b3c4d@example.invalid or <PHONE_0a1b2c3d>"},
            {"id": "2", "messages": [{"role": "user", "content": "I am bob@corp.example, card 4111 1111 1111 1111"}]},
            {"id": "3", "text": "[EMAIL] and <EMAIL:0123456789ab>"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = residual_pii([f, tmp_path / "missing.jsonl"], max_records=10)
    assert got["records"] == 3 and got["records_with_pii"] == 1
    assert got["by_type"] == {"credit_card": 1, "email": 1}
    assert residual_pii([f], max_records=1)["records"] == 1


def _plan(*, usable: float = 10 * GiB, peaks: tuple[float, ...] = (8 * GiB, 6 * GiB), total_s: float = 4 * 3600,
          step_s: float = 2.0, usd: float = 20.0, fits: bool = True, device: str = "a100-80gb",
          flops: float = 1.2e15, peak_flops: float = 1e15) -> dict[str, object]:
    return {"fits": fits, "reason": "" if fits else "needs more memory", "devices": 1, "method": "lora",
            "precision": "bf16-mixed", "micro_batch_size": 4, "grad_accum": 2, "activation_checkpointing": False,
            "device": {"name": device, "kind": "cuda", "usable_bytes": usable, "usd_per_hour": usd / (total_s / 3600),
                       "peak_flops": peak_flops},
            "predicted": {"peak_memory_bytes": peaks[0], "total_seconds": total_s, "step_seconds": step_s,
                          "steps": int(total_s / step_s), "cost_usd": usd, "flops_per_step": flops},
            "candidates": [{"peak_memory_bytes": p} for p in peaks], "parameters": {}, "data": {}}


def test_compute_components_match_the_hand_computed_figures() -> None:
    schedule = {"makespan_seconds": 15.0, "devices": [{"name": "d0"}, {"name": "d1"}], "unschedulable": [],
                "jobs": [{"device": "d0", "start_seconds": 0, "finish_seconds": 10},
                         {"device": "d0", "start_seconds": 5, "finish_seconds": 15},  # overlaps: counted once
                         {"device": "d1", "start_seconds": 0, "finish_seconds": 5}]}
    facts = ComputeFacts(_plan(), train={"step_seconds": 3.0}, schedule=schedule, time_budget_hours=8,
                         cost_budget_usd=100)
    wall = assess_compute(facts)
    c = _by_key(wall)
    assert c["memory_pressure"].value == pytest.approx(0.6)  # the least candidate peak, 6 of 10 GiB
    assert c["memory_pressure"].score == pytest.approx(0.2)  # (0.6 - 0.5) / 0.5
    assert c["run_time"].value == pytest.approx(6.0)  # 7,200 steps x 3 s measured
    assert c["run_time"].score == pytest.approx(0.75)
    assert c["run_cost"].value == pytest.approx(30.0)  # the $20 plan at 1.5x the planned step time
    assert c["compute_idle"].value == pytest.approx(0.6)  # MFU = 1.2e15 / 3 s / 1e15 = 0.4
    assert busy_fraction(schedule) == pytest.approx(20 / 30)
    assert c["queue_idle"].value == pytest.approx(1 / 3)
    assert c["time_left"].score is None  # no what-if plans given
    hw = (0.2 + 0.75 + 0.3) / 3
    alloc = (0.6 + 1 / 3) / 2
    assert wall.score == pytest.approx((hw + alloc) / 2)


def test_a_plan_that_does_not_fit_is_a_wall_on_memory() -> None:
    c = _by_key(assess_compute(ComputeFacts(_plan(fits=False, peaks=(30 * GiB,)))))
    assert c["memory_pressure"].value == pytest.approx(3.0) and c["memory_pressure"].score == 1.0


def test_what_if_plans_rank_the_changes() -> None:
    base = _plan(total_s=4 * 3600, usd=20.0)
    faster = _plan(total_s=2 * 3600, usd=10.0, peaks=(5 * GiB,))  # e.g. bf16: half the time, less memory
    gpu = _plan(total_s=1 * 3600, usd=2.0, device="l4-24gb", usable=20 * GiB, peaks=(6 * GiB,))
    too_big = _plan(fits=False, device="t4-16gb", total_s=3600, usd=0.5)
    facts = ComputeFacts(base, baseline=base, variants=[
        Variant({"precision": "bf16-mixed"}, faster, algorithmic=True),
        Variant({"device": "l4-24gb"}, gpu, algorithmic=False),
        Variant({"device": "t4-16gb"}, too_big, algorithmic=False)])
    wall = assess_compute(facts)
    c = _by_key(wall)
    assert c["time_left"].value == pytest.approx(0.5)  # 2 h of 4 h
    assert c["memory_left"].value == pytest.approx(1 - 5 / 8)  # 5 GiB vs the planned 8 GiB
    by = {ch.action: ch for ch in wall.changes}
    alloc = 1 - 1.2e15 / 2.0 / 1e15  # planned MFU: 1.2e15 FLOPs / 2 s / 1e15 FLOP/s = 0.6
    now = ((0.2 + 0.5 + 0.2) / 3 + alloc + (0.5 + 3 / 8) / 2) / 3
    assert by["precision bf16-mixed"].before == pytest.approx(now)
    # The algorithmic change: 2 h, $10, 5 GiB of 10 GiB (no pressure), nothing left on the table.
    assert by["precision bf16-mixed"].after == pytest.approx(((0 + 0.25 + 0.1) / 3 + alloc + 0) / 3)
    # The GPU: 1 h, $2, 6 of 20 GiB; the algorithmic settings left on the table stay.
    assert by["device l4-24gb"].after == pytest.approx(((0 + 1 / 8 + 0.02) / 3 + alloc + (0.5 + 3 / 8) / 2) / 3)
    assert by["device t4-16gb"].after >= now  # does not fit: never an improvement
    best = wall.best_change
    assert best is not None and best.action == "precision bf16-mixed" and best.reduction >= MIN_REDUCTION
    assert "fits, 2 h, $10.00" in best.effect


def test_a_shareable_release_measures_what_a_partner_receives() -> None:
    release = {"records": {"curated": 650, "released": 585}, "epsilon_spent": 1.0, "dp_counts": {"epsilon_total": 1.0},
               "k_anonymity": {"quasi_identifiers": ["age", "zip"], "k_required": 5, "k_achieved": 5, "classes": 40,
                               "records_suppressed": 65}}
    wall = assess_data(_data_facts(release=release))
    c = _by_key(wall)
    assert c["release_suppression"].value == pytest.approx(65 / 650)
    assert c["k_anonymity_gap"].value == 0.0  # enforced by the release, whatever the data card says
    assert c["counts_privacy"].score == pytest.approx(0.1)  # epsilon 1 / epsilon_max 10
    share = (0.03 + 0.1 + 0.0 + 0.1 + 0.2) / 5  # residual PII, withheld, k, counts' epsilon, the model's epsilon
    assert wall.pillars["sharing"] == pytest.approx(share)
    assert any(ch.action.startswith("generalise the quasi-identifiers") for ch in wall.changes)
    assert not any(ch.action.startswith("enforce k") for ch in wall.changes)
