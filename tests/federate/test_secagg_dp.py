"""Secure aggregation and client-side DP together, on Flower's simulation engine.

A tiny BERT classifier with LoRA (adapters + head travel) on two clients, SecAgg+ on, DP-SGD
with a per-client epsilon budget. A client-side mod inside SecAgg+ records each client's plain
update; the server's grid records everything the server receives. Checked: nothing the server
received holds an update (no array records, no plaintext float bytes, uniformly masked
integers), the aggregate equals the weighted mean of the plain updates, and every client's
epsilon (Opacus accountant over its rounds) matches the budget.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from shoestring.federate.config import FederateConfig
from shoestring.federate.loader import load_task
from shoestring.federate.simulation import PeakTreeMemory, run_simulation_engine
from shoestring.federate.stage import fix_client_noise
from shoestring.federate.summary import privacy_summary
from shoestring.federate.tasks import Job
from tiny_models import save_tiny_bert

pytestmark = pytest.mark.slow

WORDS = {"backup": "vault snapshot restore archive retention replica", "billing": "invoice refund charge plan card price"}


def _dataset(folder: Path) -> Path:
    rng = random.Random(0)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
    for i in range(96):
        label = "backup" if i % 2 else "billing"
        words = WORDS[label].split()
        text = " ".join(rng.choice(words) for _ in range(8))
        split = "validation" if i % 8 == 0 else "test" if i % 8 == 1 else "train"
        splits[split].append({"id": f"s:{i}", "text": text, "label": label})
    folder.mkdir(parents=True)
    for name, recs in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (folder / "manifest.json").write_text(json.dumps({"kind": "dataset", "hash": "tiny", "stats": {}}))
    return folder


def record_plain_update(folder: str, msg: Any, context: Any, call_next: Any) -> Any:
    """Client mod next to the handler (inside SecAgg+): keep this client's plain update on disk."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import parameters_to_ndarrays

    out = call_next(msg, context)
    if "fitres.parameters" in out.content.array_records:
        rnd = int(compat.recorddict_to_fitins(msg.content, keep_input=True).config["server-round"])
        res = compat.recorddict_to_fitres(out.content, keep_input=True)
        pid = int(context.node_config["partition-id"])
        arrays = parameters_to_ndarrays(res.parameters)
        np.savez(Path(folder) / f"round{rnd}-client{pid}.npz", *arrays, weight=np.asarray(res.num_examples))
    return out


def test_secagg_server_sees_only_the_sum_and_dp_budget_holds(tmp_path: Path) -> None:
    model = save_tiny_bert(tmp_path / "bert", "BertModel", hidden=32, intermediate=64, layers=2, max_positions=64)
    cfg = FederateConfig.model_validate({
        "task": "classification", "model": str(model), "clients": 2, "partition": "iid", "rounds": 2,
        "local_batch_size": 16, "lr": 5e-3, "seq_len": 16, "lora": {"r": 4, "alpha": 8},
        "secure_aggregation": True, "privacy": {"target_epsilon": 5.0, "accountant": "rdp"},
    })  # fmt: skip
    work = tmp_path / "work"
    job = Job(cfg.model_dump(mode="json"), str(_dataset(tmp_path / "ds")), str(model), str(work))
    task = load_task(job)
    job = fix_client_noise(job, task, cfg, Console(quiet=True))
    plain = tmp_path / "plain"
    plain.mkdir()
    received: list[Any] = []
    run_simulation_engine(job, 2, 2, work / "ray.log", PeakTreeMemory(), on_reply=received.append,
                          extra_client_mods=[functools.partial(record_plain_update, str(plain))])  # fmt: skip

    saved = json.loads((work / "server" / "state.json").read_text())
    assert saved["round"] == 2
    names = list(task.initial_state())
    updates = {p.stem: np.load(p) for p in plain.glob("*.npz")}
    assert sorted(updates) == ["round1-client0", "round1-client1", "round2-client0", "round2-client1"]

    # 1. The server never received an update: every reply's array records are empty, no reply
    #    contains a client's float32 bytes, and the masked vectors look uniform over the modulus.
    assert len(received) == 2 * 4 * 2  # 2 rounds x 4 SecAgg+ stages x 2 clients
    blobs, masked = [], []
    for msg in received:
        assert all(len(rec) == 0 for rec in msg.content.array_records.values())
        for rec in msg.content.config_records.values():
            for key, value in rec.items():
                vals = value if isinstance(value, list) else [value]
                blobs += [v for v in vals if isinstance(v, bytes)]
                if key == "masked_params":
                    masked += vals
    for upd in updates.values():
        needle = np.ascontiguousarray(upd["arr_0"]).tobytes()[:64]
        assert not any(needle in b for b in blobs)
    assert len(masked) == 2 * 2 * len(task.initial_state()) + 2 * 2  # every tensor + the weight, per client and round
    from flwr.common import bytes_to_ndarray

    ints = np.concatenate([bytes_to_ndarray(b).reshape(-1).astype(np.float64) for b in masked])
    assert ints.std() > 0.2 * 2**32  # uniform on [0, 2^32): std 0.29 * 2^32; unmasked values sit near 2^21

    # 2. What the server did learn - the sum - is the weighted mean of the plain updates (FedAvg).
    final = json.loads((work / "server" / "state.json").read_text())
    from safetensors.numpy import load_file

    glob = load_file(str(work / "server" / "global.safetensors"))
    w = [float(updates[f"round2-client{c}"]["weight"]) for c in (0, 1)]
    for i, name in enumerate(names):
        mean = sum(wc * updates[f"round2-client{c}"][f"arr_{i}"] for c, wc in zip((0, 1), w, strict=True)) / sum(w)
        np.testing.assert_allclose(glob[name], mean, atol=2e-3)
    assert final["rows"][-1]["accepted"] == 2

    # 3. Client-side DP: each client took part in both rounds, so it spent its whole budget.
    priv = privacy_summary(cfg, job, saved["privacy"], 2)
    assert priv is not None
    for c in priv["epsilon_per_client"]:
        assert c["rounds"] == 2 and c["steps"] > 0
        assert c["epsilon"] == pytest.approx(5.0, rel=0.02)
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(e["noise"], e["sample_rate"], e["steps"]) for e in saved["privacy"] if e["partition_id"] == 0]
    assert priv["epsilon_per_client"][0]["epsilon"] == pytest.approx(acc.get_epsilon(job.delta["0"]), rel=1e-6)
    assert priv["epsilon_overall"] == max(c["epsilon"] for c in priv["epsilon_per_client"])
    # Only the adapters and the head travel: a small fraction of the model's bytes.
    sizes = task.size_bytes()
    assert sizes["travelling"] < 0.2 * sizes["full_model"]
