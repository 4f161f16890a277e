"""The Flower ServerApp: the rounds, driven by a Flower strategy, with the round log as resume point.

``run_server(grid, context, job)`` is the body of the ServerApp in both engines. It resumes
from the last finished round, wraps the grid to meter bytes, and runs the remaining rounds with
``FedAvg`` / ``FedProx`` / ``FedAdam`` / ``FedYogi`` from ``flwr.serverapp.strategy`` (screened
by :class:`ScreenedStrategy`), or under secure aggregation through :mod:`.secure`. After every
round the global model is scored on the held-out records (every ``eval_every`` rounds) and
checkpointed. The final tensors and the log land in ``<work>/server/``, where the stage reads them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp

from shoestring.core.artifact import atomic_write_json
from shoestring.federate.config import FederateConfig
from shoestring.federate.loader import load_task
from shoestring.federate.metering import MeteredGrid
from shoestring.federate.rounds import RoundLog
from shoestring.federate.screening import ScreenedStrategy
from shoestring.federate.tasks import FederatedTask, Job, State

__all__ = ["DONE_MARKER", "make_server_app", "make_strategy", "run_server"]

DONE_MARKER = "finished.json"


def make_strategy(cfg: FederateConfig, n_clients: int) -> Any:
    """The Flower message strategy the config names (not yet screened)."""
    from flwr.serverapp import strategy as S

    common: dict[str, Any] = {
        "fraction_train": cfg.fraction_train, "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": min(cfg.min_clients_per_round, n_clients),
        "min_evaluate_nodes": 1 if cfg.fraction_evaluate > 0 else 0, "min_available_nodes": n_clients,
    }  # fmt: skip
    if cfg.strategy == "fedprox":
        return S.FedProx(**common, proximal_mu=cfg.proximal_mu)
    if cfg.strategy == "fedadam":
        return S.FedAdam(**common, eta=cfg.server_lr, tau=cfg.server_tau)
    if cfg.strategy == "fedyogi":
        return S.FedYogi(**common, eta=cfg.server_lr, tau=cfg.server_tau)
    return S.FedAvg(**common)


def _held_out(task: FederatedTask, state: State) -> dict[str, float]:
    scores = task.evaluate(state, "test")
    return {k: float(np.mean(v)) for k, v in scores.values.items()}


def _round_end(cfg: FederateConfig, task: FederatedTask, log: RoundLog) -> Callable[[int, State], dict[str, float]]:
    def end(rnd: int, state: State) -> dict[str, float]:
        if rnd < log.done or (rnd == log.done and rnd > 0):
            return {}  # resumed: this round was finished (and scored) before the restart
        due = rnd == 0 or rnd % cfg.eval_every == 0 or rnd == cfg.rounds
        metrics = _held_out(task, state) if due else {}
        log.end(rnd, state, metrics)
        return metrics

    return end


def run_server(grid: Grid, context: Context, job: Job, on_reply: Callable[[Message], None] | None = None) -> None:
    """All remaining rounds of ``job``; results in ``<work>/server``."""
    cfg = job.cfg()
    task = load_task(job)
    log = RoundLog(Path(job.work_dir))
    state = log.resume(task.initial_state)
    n = len(task.clients)
    random.seed(cfg.seed * 7919 + log.done)  # Flower samples clients with the `random` module
    metered = MeteredGrid(grid, log.traffic, on_reply)
    end = _round_end(cfg, task, log)
    if log.done < cfg.rounds:
        if cfg.secure_aggregation:
            from shoestring.federate.secure import run_secure_rounds

            weight = cfg.secagg.max_weight or float(max(task.client_examples(c) for c in range(n)))
            run_secure_rounds(metered, context, cfg, n, state, log, end, weight)
        else:
            _run_plain_rounds(metered, cfg, n, state, log, end)
    atomic_write_json(log.dir / DONE_MARKER, {"rounds": log.done})


def _run_plain_rounds(grid: Grid, cfg: FederateConfig, n: int, state: State, log: RoundLog,
                      end: Callable[[int, State], dict[str, float]]) -> None:  # fmt: skip
    done = log.done
    strategy = ScreenedStrategy(make_strategy(cfg, n), log, round_offset=done)

    def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
        metrics = end(rnd + done, {k: a.numpy() for k, a in arrays.items()})
        return MetricRecord(metrics) if metrics else None  # type: ignore[arg-type]

    initial = ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in state.items()})
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=cfg.rounds - done, timeout=cfg.round_timeout_s,
                   train_config=ConfigRecord({"local-epochs": cfg.local_epochs}), evaluate_config=ConfigRecord({}),
                   evaluate_fn=evaluate_fn)  # fmt: skip


def make_server_app(job_of: Callable[[Context], Job], on_reply: Callable[[Message], None] | None = None) -> ServerApp:
    """A ServerApp running :func:`run_server` for the job ``job_of(context)`` returns."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(grid, context, job_of(context), on_reply)

    return app
