"""The server's round log: who was sampled, who replied, what was rejected, bytes, quality.

It is also the resume point. After every round the global tensors go to
``<work>/server/global.safetensors`` and the log to ``state.json`` (both written atomically,
tensors first), so a run killed mid-way restarts from its last finished round.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shoestring.core.artifact import atomic_path, atomic_write_json

__all__ = ["RoundLog"]


class RoundLog:
    """Per-round bookkeeping shared by the plain and the secure-aggregation server paths."""

    def __init__(self, work_dir: Path) -> None:
        self.dir = work_dir / "server"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.privacy: list[dict[str, Any]] = []
        """One entry per accepted DP update: partition_id, round, noise, sample_rate, steps."""
        self.done = 0
        self.round = 0
        self._row: dict[str, Any] = {}
        self._t0 = time.perf_counter()

    # -- resume -------------------------------------------------------------------------
    def resume(self, initial: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The global tensors to start from: the last checkpoint, or ``initial()``."""
        state_file, tensors = self.dir / "state.json", self.dir / "global.safetensors"
        if state_file.is_file() and tensors.is_file():
            from safetensors.numpy import load_file

            saved = json.loads(state_file.read_text(encoding="utf-8"))
            self.rows, self.privacy, self.done = saved["rows"], saved["privacy"], int(saved["round"])
            return dict(sorted(load_file(str(tensors)).items()))
        return initial()

    def checkpoint(self, state: dict[str, np.ndarray]) -> None:
        from safetensors.numpy import save_file

        with atomic_path(self.dir / "global.safetensors") as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp))
        atomic_write_json(self.dir / "state.json", {"round": self.done, "rows": self.rows, "privacy": self.privacy})

    # -- events -------------------------------------------------------------------------
    def begin(self, rnd: int, sampled: int) -> None:
        """A training round starts with ``sampled`` clients asked to train."""
        if self._row.get("round") == rnd:
            self._row["sampled"] = sampled
            return
        self.round = rnd
        self._t0 = time.perf_counter()
        self._row = {"round": rnd, "sampled": sampled, "replied": 0, "failed": 0, "timed_out": 0, "accepted": 0,
                     "rejected": {}, "bytes_down": 0, "bytes_up": 0, "messages": 0, "clients": []}  # fmt: skip

    def traffic(self, down: int, up: int, messages: int) -> None:
        if not self._row:  # before round 1 (e.g. SecAgg's initial-parameters exchange)
            self.begin(0, 0)
        self._row["bytes_down"] += down
        self._row["bytes_up"] += up
        self._row["messages"] += messages

    def replies(self, received: int, failed: int, rejected: dict[str, int], accepted: list[dict[str, Any]]) -> None:
        """What came back: ``accepted`` holds the metrics of every update that went into the average."""
        row = self._row
        row["replied"] += received - failed
        row["failed"] += failed
        row["timed_out"] += max(0, row["sampled"] - received)
        for reason, n in rejected.items():
            row["rejected"][reason] = row["rejected"].get(reason, 0) + n
        row["accepted"] += len(accepted)
        losses = [float(m["train-loss"]) for m in accepted if "train-loss" in m]
        if losses:
            row["train_loss"] = float(np.mean(losses))
        for m in accepted:
            pid = int(m.get("partition-id", -1))
            row["clients"].append(pid)
            if m.get("dp-steps"):
                self.privacy.append({"partition_id": pid, "round": self.round, "noise": float(m["dp-noise"]),
                                     "sample_rate": float(m["dp-sample-rate"]), "steps": int(m["dp-steps"])})  # fmt: skip

    def aggregate_rejected(self, reason: str) -> None:
        """The aggregate itself was unusable (e.g. non-finite under SecAgg); the global model is kept."""
        self._row["aggregate_rejected"] = reason

    def end(self, rnd: int, state: dict[str, np.ndarray], metrics: dict[str, float]) -> None:
        """A round finished with ``state`` as the global model; ``metrics`` = held-out scores (may be empty)."""
        if rnd == 0:
            row: dict[str, Any] = {"round": 0, **self._row} if self._row.get("round") == 0 else {"round": 0}
        else:
            row = self._row
            row["seconds"] = round(time.perf_counter() - self._t0, 3)
        row.update({f"test_{k}": v for k, v in metrics.items()})
        self.rows.append(row)
        self.done = rnd
        self._row = {}
        self.checkpoint(state)
