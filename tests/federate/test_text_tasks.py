"""The federated SFT task without Flower: chats split by source, only LoRA tensors travel, local
training lowers the client's loss, and the saved adapter is an ordinary model artifact payload."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shoestring.federate.config import FederateConfig
from shoestring.federate.loader import load_task
from shoestring.federate.tasks import Job
from tiny_models import save_tiny_llama


def _chats(folder: Path) -> Path:
    topics = {"tickets": ("restore", "Open the vault and pick a snapshot to restore."),
              "faq": ("billing", "Invoices are under Settings, then Billing.")}  # fmt: skip
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}  # type: ignore[type-arg]
    for src, (word, answer) in topics.items():
        for i in range(12):
            split = "validation" if i == 0 else "test" if i == 1 else "train"
            msgs = [{"role": "user", "content": f"How do I {word} item {i}?"}, {"role": "assistant", "content": answer}]
            splits[split].append({"id": f"{src}:{i}", "messages": msgs})
    folder.mkdir()
    for name, recs in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return folder


def test_sft_task_splits_by_source_and_sends_only_adapters(tmp_path: Path) -> None:
    model = save_tiny_llama(tmp_path / "llama", hidden=32, intermediate=64, layers=2)
    cfg = FederateConfig.model_validate({"task": "sft", "clients": 2, "partition": "column", "partition_column": "source",
                                         "lr": 5e-3, "seq_len": 64, "local_batch_size": 4,
                                         "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}})  # fmt: skip
    task = load_task(Job(cfg.model_dump(mode="json"), str(_chats(tmp_path / "ds")), str(model), str(tmp_path / "w")))
    assert task.clients == ["faq", "tickets"]
    summary = {r["client"]: r for r in task.partition_summary()}
    assert summary["faq"]["splits"] == {"train": 10, "validation": 1, "test": 1}
    state = task.initial_state()
    assert state and all("lora_" in name for name in state)
    sizes = task.size_bytes()
    assert sizes["travelling"] < 0.05 * sizes["full_model"]

    before = task.evaluate(state, "train", [0])
    update = task.train_client(0, state, seed=0, epochs=3, proximal_mu=0.0, noise=None, delta=None)
    after = task.evaluate(update.state, "train", [0])
    assert update.num_examples == 10 and set(update.state) == set(state)
    assert float(np.mean(after.values["loss"])) < float(np.mean(before.values["loss"]))
    assert not after.higher_is_better and after.headline == "loss"

    extras = task.save(update.state, tmp_path / "out")
    assert extras == {"task": "sft", "base_model": str(model)}
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
