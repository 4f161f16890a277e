"""The planner's prediction of a federated run's bytes agrees with what federate sends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shoestring.federate.config import FederateConfig
from shoestring.federate.loader import load_task
from shoestring.federate.metering import message_bytes
from shoestring.federate.tasks import Job
from shoestring.plan.federated import (
    TENSOR_OVERHEAD,
    FederatedPlanOptions,
    plan_traffic,
    predict_traffic,
    sampled_clients,
)
from tiny_models import save_tiny_bert


def test_sampling_follows_flower() -> None:
    assert sampled_clients(10, 0.3, 2) == 3 and sampled_clients(10, 0.1, 2) == 2 and sampled_clients(3, 1.0, 5) == 3


def test_predicted_message_bytes_match_flower_serialisation() -> None:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    rng = np.random.default_rng(0)
    numels = [1683 * 64, 3 * 64 * 64, 3 * 64 * 64, 192, 192, 64 * 64, 64, 2_000_000]
    rec = ArrayRecord(array_dict={f"layer.{i}.weight": Array(rng.standard_normal(n).astype(np.float32))
                                  for i, n in enumerate(numels)})  # fmt: skip
    msg = Message(RecordDict({"arrays": rec, "config": ConfigRecord({"server-round": 3, "local-epochs": 1})}),
                  message_type="train", dst_node_id=7)  # fmt: skip
    pred = predict_traffic(numels, clients=1, rounds=1, min_clients=1)
    assert abs(message_bytes(msg) / pred["bytes_down_per_round"] - 1) < 0.002


def test_plan_of_a_lora_classifier_predicts_what_federate_sends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoestring.plan import hardware
    from shoestring.plan.arch import describe_model, load_model_config

    model = save_tiny_bert(tmp_path / "bert", "BertModel", hidden=32, intermediate=64, layers=2, max_positions=64)
    ds = tmp_path / "ds"
    ds.mkdir()
    for split in ("train", "validation", "test"):
        (ds / f"{split}.jsonl").write_text("".join(json.dumps({"id": f"{split}{i}", "text": f"word {i}", "label": i % 3}) + "\n"
                                                   for i in range(24)))  # fmt: skip
    cfg = FederateConfig.model_validate({"task": "classification", "clients": 3, "partition": "iid",
                                         "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}})  # fmt: skip
    task = load_task(Job(cfg.model_dump(mode="json"), str(ds), str(model), str(tmp_path / "work")))
    sent = sum(task.tensor_numels())
    shape = describe_model(load_model_config(str(model)), "classification")
    opts = FederatedPlanOptions(clients=3, rounds=5)
    plan = plan_traffic(shape, "lora", ["query", "value"], 4, sent, opts)
    measured = predict_traffic(task.tensor_numels(), 3, 5)
    # Same tensor data; the plan does not know how peft splits the head into tensors (460 B each).
    slack = TENSOR_OVERHEAD * len(task.tensor_numels())
    assert abs(plan["payload_bytes"] - measured["payload_bytes"]) <= slack
    assert plan["full_model_bytes"] == pytest.approx(task.size_bytes()["full_model"], rel=0.05)
    assert plan["travelling_fraction_of_full"] == plan["payload_bytes"] / plan["full_model_bytes"]
    assert plan["bytes_total"] == 5 * plan["bytes_per_round"]

    # And `shoestring plan` writes it into plan.json when asked.
    monkeypatch.setenv("SHOESTRING_CACHE", str(tmp_path / "cache"))
    hardware.save_hardware({"version": hardware.PROBE_VERSION, "machine": "test", "cpu_cores": 2, "torch_threads": 2,
                            "ram_bytes": 24 * 1024**3, "cpu_capability": "test", "cpu_fp32_flops": 1.0e11,
                            "cpu_bf16_flops": 5.0e10, "cpu_bandwidth_bytes_s": 1.0e10, "gpus": []})  # fmt: skip
    from shoestring.plan.stage import PlanConfig, make_plan

    doc = make_plan(PlanConfig(model=str(model), task="classification", method="lora", lora_rank=4,
                               lora_targets=["query", "value"], dataset_tokens=2_000, device="cpu", seq_len=32,
                               federated=opts))  # fmt: skip
    assert doc["federated"]["clients_per_round"] == 3
    assert abs(doc["federated"]["payload_bytes"] - measured["payload_bytes"]) <= slack
