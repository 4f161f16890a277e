"""Federated vs centralised vs local-only, on the same held-out units, with intervals and per client.

* **centralised** - one model trained on every client's training data pooled (what the
  federation would be if the data could move);
* **local-only** - every client trains alone on its own data; on the shared held-out set it is
  reported as the mean over clients of their models' scores (per unit, then averaged), and per
  client as that client's own model on that client's held-out units.

Baselines are trained by the task's ordinary trainer with early stopping on validation and are
checkpointed in the work folder (``baselines/``), so a killed stage does not retrain finished ones.
Intervals are percentile bootstrap over held-out units (users for recommendation, records
otherwise); differences are paired per unit (``evaluate.stats.paired_comparison``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shoestring.core.artifact import atomic_path
from shoestring.evaluate.stats import bootstrap_ci, paired_comparison
from shoestring.federate.config import FederateConfig
from shoestring.federate.tasks import FederatedTask, Scores, State

__all__ = ["compare_systems", "train_baselines"]


def _load(path: Path) -> State | None:
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    return dict(sorted(load_file(str(path)).items()))


def _save(path: Path, state: State) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp))


def _local_clients(task: FederatedTask, cfg: FederateConfig) -> list[int]:
    order = sorted(range(len(task.clients)), key=lambda c: (-task.client_examples(c), c))
    return sorted(order[: cfg.baselines.max_local_clients] if cfg.baselines.max_local_clients else order)


def train_baselines(task: FederatedTask, cfg: FederateConfig, work: Path, console: Any) -> dict[str, Any]:
    """Centralised and local-only states (trained now or read back from ``work/baselines``)."""
    b = cfg.baselines
    epochs = b.epochs or cfg.rounds * cfg.local_epochs
    root = work / "baselines"
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    if b.centralised:
        path = root / "centralised.safetensors"
        state = _load(path)
        if state is None:
            console.print(f"  federate: centralised baseline (all clients' data pooled, up to {epochs} epochs)")
            (root / "centralised").mkdir(exist_ok=True)
            state = task.train_baseline(None, epochs=epochs, patience=b.patience, seed=cfg.seed,
                                        work_dir=root / "centralised")  # fmt: skip
            _save(path, state)
        out["centralised"] = state
    if b.local_only:
        local: dict[int, State] = {}
        clients = _local_clients(task, cfg)
        console.print(f"  federate: local-only baselines for {len(clients)} client(s), up to {epochs} epochs each")
        for c in clients:
            path = root / f"local-{c:04d}.safetensors"
            state = _load(path)
            if state is None:
                (root / f"local-{c:04d}").mkdir(exist_ok=True)
                state = task.train_baseline([c], epochs=epochs, patience=b.patience, seed=cfg.seed + 1 + c,
                                            work_dir=root / f"local-{c:04d}")  # fmt: skip
                _save(path, state)
            local[c] = state
        out["local"] = local
    return out


def _ci(values: np.ndarray, cfg: FederateConfig, seed: int = 0) -> dict[str, Any]:
    return bootstrap_ci(values, n_boot=1000, confidence=0.95, seed=cfg.seed + seed)


def compare_systems(task: FederatedTask, cfg: FederateConfig, federated: State,
                    baselines: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The comparison table, paired differences and the per-client table (``comparison.json``)."""
    fed = task.evaluate(federated, "test")
    head = fed.headline
    systems: dict[str, Scores] = {"federated": fed}
    if "centralised" in baselines:
        systems["centralised"] = task.evaluate(baselines["centralised"], "test")
    local_own: np.ndarray | None = None
    if baselines.get("local"):
        per_client = {c: task.evaluate(s, "test") for c, s in baselines["local"].items()}
        mean = {m: np.mean([s.values[m] for s in per_client.values()], axis=0) for m in fed.values}
        systems["local-only (mean over clients)"] = Scores(mean, fed.client, head, fed.higher_is_better)
        # Each unit scored by its own client's local model (clients without one: NaN, left out).
        local_own = np.full(len(fed.client), np.nan)
        for c, s in per_client.items():
            local_own[fed.client == c] = s.values[head][fed.client == c]
    table = {name: {m: _ci(v, cfg) for m, v in s.values.items()} for name, s in systems.items()}
    paired = {f"federated - {name}": paired_comparison(fed.values[head], s.values[head], n_boot=1000, seed=cfg.seed)
              for name, s in systems.items() if name != "federated"}  # fmt: skip
    clients = []
    for c, name in enumerate(task.clients):
        sel = fed.client == c
        row: dict[str, Any] = {"client": name, "partition_id": c, "held_out_units": int(sel.sum())}
        if sel.any():
            row["federated"] = _ci(fed.values[head][sel], cfg, c)
            if "centralised" in systems:
                row["centralised"] = _ci(systems["centralised"].values[head][sel], cfg, c)
            if local_own is not None and np.isfinite(local_own[sel]).all():
                row["local-only (own model)"] = _ci(local_own[sel], cfg, c)
        clients.append(row)
    central = table.get("centralised", {}).get(head, {}).get("value")
    ratio = table["federated"][head]["value"] / central if central else None
    return {"headline": head, "higher_is_better": fed.higher_is_better, "systems": table, "paired": paired,
            "clients": clients, "federated_over_centralised": ratio}  # fmt: skip
