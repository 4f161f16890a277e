"""plan.json as the typed contract between plan and train: round trip, old files, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoestring.core.errors import ShoestringError
from shoestring.core.plan_contract import PlanDocument, load_plan, write_plan
from shoestring.train.config import TrainConfig
from shoestring.train.settings import resolve_settings
from shoestring.train.stage import _adopt_plan_extras

# A plan.json as planners before the typed contract wrote it (same keys), trimmed of the long sections.
OLD_PLAN = {
    "model": "smollm2-135m-instruct", "task": "causal-lm", "method": "lora",
    "lora": {"rank": 8, "targets": ["q_proj", "v_proj"], "dropout": 0.05}, "trainable_layers": None,
    "seq_len": 256, "packing": True, "micro_batch_size": 2, "grad_accum": 4, "batch_size": 8,
    "precision": "bf16-mixed", "optimizer": "adamw", "activation_checkpointing": False, "parallelism": "single",
    "devices": 1, "device": {"name": "cpu", "kind": "cpu", "memory_bytes": 8 << 30, "usable_bytes": 6 << 30,
                             "usd_per_hour": 0.1, "utilisation": 0.3, "peak_flops": 1e11, "calibrated": True},
    "fits": True, "reason": "", "suggestion": "",
    "predicted": {"peak_memory_bytes": 3 << 30, "step_seconds": 1.5, "total_seconds": 150.0, "cost_usd": 0.01,
                  "memory_terms": {"weights": 1 << 30}},
    "run": {"setup_seconds": 4.0}, "calibration": {"fingerprint": "f1"}, "feedback": None,
    "candidates": [{"micro_batch_size": 2, "fits": True}], "explain": [],
}  # fmt: skip


def test_an_old_plan_json_loads_and_round_trips_unchanged(tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text(json.dumps(OLD_PLAN))
    plan = load_plan(tmp_path)
    assert plan.micro_batch_size == 2 and plan.lora is not None and plan.lora.targets == ["q_proj", "v_proj"]
    assert plan.device is not None and plan.device.kind == "cpu"
    assert plan.predicted.peak_memory_bytes == 3 << 30 and plan.run == {"setup_seconds": 4.0}
    assert plan.as_json() == OLD_PLAN  # untyped sections ride along, nothing is added
    (tmp_path / "again").mkdir()
    write_plan(tmp_path / "again", plan)
    assert json.loads((tmp_path / "again" / "plan.json").read_text()) == OLD_PLAN


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (json.dumps({**OLD_PLAN, "micro_batch_size": 0}), "micro_batch_size: Input should be greater than or equal to 1"),
        (json.dumps({k: v for k, v in OLD_PLAN.items() if k != "seq_len"}), "missing required key 'seq_len'"),
        (json.dumps({**OLD_PLAN, "lora": {"rank": "eight"}}), "lora.rank"),
        ('{"model": "m", "task":', "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
    ],
)
def test_a_malformed_plan_json_is_one_clear_line(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / "plan.json").write_text(text)
    with pytest.raises(ShoestringError) as err:
        load_plan(tmp_path)
    msg = str(err.value)
    assert says in msg and "\n" not in msg and msg.endswith("re-run `shoestring plan`")
    assert str(tmp_path / "plan.json") in msg


def test_a_missing_plan_json_and_a_planner_bug_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ShoestringError, match=r"has no plan\.json"):
        load_plan(tmp_path)
    with pytest.raises(ShoestringError, match=r"the planner's plan\.json: grad_accum"):
        write_plan(tmp_path, {**OLD_PLAN, "grad_accum": -1})
    assert not (tmp_path / "plan.json").exists()


def test_train_reads_the_typed_fields() -> None:
    plan = PlanDocument.model_validate(OLD_PLAN)
    s = resolve_settings(TrainConfig.model_validate({"micro_batch_size": 4}), plan, cuda_available=False)
    assert (s.model, s.task, s.method, s.seq_len, s.grad_accum) == ("smollm2-135m-instruct", "causal-lm", "lora", 256, 4)
    assert s.precision == "bf16" and s.deviations == ["micro_batch_size: planned 2, running 4"]
    assert s.predicted["step_seconds"] == 1.5 and s.predicted["memory_terms"] == {"weights": 1 << 30}
    cfg = _adopt_plan_extras(TrainConfig(), plan)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (8, 16, ["q_proj", "v_proj"])
    # A frozen-layers plan (old files spell it "freeze") hands over its trainable depth.
    frozen = PlanDocument.model_validate({**OLD_PLAN, "method": "freeze", "lora": None, "trainable_layers": 5})
    assert frozen.method == "frozen" and _adopt_plan_extras(TrainConfig(), frozen).trainable_layers == 5
    assert _adopt_plan_extras(TrainConfig(trainable_layers=1), frozen).trainable_layers == 1  # the recipe wins
