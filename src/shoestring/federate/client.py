"""The Flower ClientApp: local training and evaluation of the global model on one client's data.

The same app runs in the simulation engine (a Ray actor per worker) and on a SuperNode of the
deployment engine. A train message carries the global tensors and the round's config
(``server-round``, ``local-epochs``, FedProx's ``proximal-mu``); the reply carries the new tensors
and ``num-examples`` (the averaging weight), the training loss, the client's partition id and,
with client-side DP, the noise multiplier, sample rate and steps of this round's DP-SGD (the
server composes them into epsilon per client).

Under secure aggregation the app is wrapped by Flower's ``secaggplus_mod``, which speaks the
legacy FitIns/FitRes record layout; :func:`_instruction` / :func:`_reply` read and write both
layouts. A client never sends an update it can tell is broken (non-finite): it fails the round
instead. Injected faults (``faults:``) model crashes, stragglers and corrupt updates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from shoestring.federate.loader import load_task
from shoestring.federate.tasks import Job, State

__all__ = ["ClientFailure", "draw_fault", "make_client_app"]

LEGACY_PARAMS = "fitins.parameters"


class ClientFailure(RuntimeError):
    """A client that cannot (or, by fault injection, will not) reply to this round."""


@dataclass
class _Instruction:
    state: State
    config: dict[str, Any]
    legacy: bool


def draw_fault(job: Job, rnd: int, partition_id: int) -> str | None:
    """The fault this client shows in this round: dropout, straggler, corrupt, wrong_shape or None."""
    faults = job.cfg().faults
    if not faults.any:
        return None
    u = float(np.random.default_rng([faults.seed, rnd, partition_id]).random())
    for name, p in (("dropout", faults.dropout), ("straggler", faults.straggler), ("corrupt", faults.corrupt),
                    ("wrong_shape", faults.wrong_shape)):  # fmt: skip
        if u < p:
            return name
        u -= p
    return None


def _instruction(msg: Message, names: list[str]) -> _Instruction:
    content = msg.content
    if LEGACY_PARAMS in content.array_records:  # SecAgg+ speaks the FitIns layout
        import flwr.compat.common.recorddict_compat as compat
        from flwr.common import parameters_to_ndarrays

        fitins = compat.recorddict_to_fitins(content, keep_input=True)
        arrays = parameters_to_ndarrays(fitins.parameters)
        return _Instruction(dict(zip(names, arrays, strict=True)), dict(fitins.config), True)
    record = content.array_records.get("arrays")
    state = {k: a.numpy() for k, a in record.items()} if record is not None else {}
    config = dict(content.config_records.get("config", ConfigRecord()))
    return _Instruction(state, config, False)


def _reply(msg: Message, state: State, metrics: dict[str, float], num_examples: int, legacy: bool) -> Message:
    if legacy:
        import flwr.compat.common.recorddict_compat as compat
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(list(state.values())), num_examples,
                     dict(metrics))  # type: ignore[arg-type]  # fmt: skip
        return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)
    record = ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in state.items()})
    return Message(RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": num_examples, **metrics})}),
                   reply_to=msg)  # fmt: skip


def _inject(fault: str | None, state: State) -> State:
    """Damage an update the way a buggy or hostile client would (after the client's own checks)."""
    if fault not in ("corrupt", "wrong_shape"):
        return state
    out = dict(state)
    first = next(iter(out))
    a = np.array(out[first], copy=True)
    if fault == "corrupt":
        a.reshape(-1)[::2] = np.nan
        a.reshape(-1)[1::2] = np.inf
    else:
        a = a.reshape(-1)[:-1]
    out[first] = a
    return out


def train_handler(msg: Message, context: Context, job: Job) -> Message:
    """One round of local training on this node's partition."""
    cfg = job.cfg()
    task = load_task(job)
    pid = int(context.node_config["partition-id"])
    ins = _instruction(msg, list(task.initial_state()))
    rnd = int(ins.config.get("server-round", 0))
    fault = draw_fault(job, rnd, pid)
    if fault == "dropout":
        raise ClientFailure(f"client {pid} dropped out of round {rnd} (injected fault)")
    if fault == "straggler":
        time.sleep(cfg.round_timeout_s + 2.0)
    mu = float(ins.config.get("proximal-mu", ins.config.get("proximal_mu", 0.0)))
    update = task.train_client(pid, ins.state, seed=cfg.seed * 1_000_003 + rnd * 10_007 + pid,
                               epochs=int(ins.config.get("local-epochs", cfg.local_epochs)), proximal_mu=mu,
                               noise=job.noise.get(str(pid)), delta=job.delta.get(str(pid)))  # fmt: skip
    if not all(np.isfinite(a).all() for a in update.state.values() if np.issubdtype(a.dtype, np.floating)):
        raise ClientFailure(f"client {pid}: local training diverged (non-finite weights); not sending them")
    metrics = {**update.metrics, "partition-id": float(pid)}
    if update.privacy is not None:
        metrics.update({"dp-noise": update.privacy[0], "dp-sample-rate": update.privacy[1],
                        "dp-steps": float(update.privacy[2])})  # fmt: skip
    return _reply(msg, _inject(fault, update.state), metrics, update.num_examples, ins.legacy)


def evaluate_handler(msg: Message, context: Context, job: Job) -> Message:
    """Federated evaluation: the global model scored on this client's validation units."""
    task = load_task(job)
    pid = int(context.node_config["partition-id"])
    ins = _instruction(msg, list(task.initial_state()))
    scores = task.evaluate(ins.state, "validation", [pid])
    values = {f"val-{k}": float(np.mean(v)) if len(v) else 0.0 for k, v in scores.values.items()}
    n = len(scores.client)
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": max(n, 1), **values})}), reply_to=msg)


def make_client_app(job_of: Callable[[Context], Job], secure: bool, extra_mods: list[Any] | None = None) -> ClientApp:
    """A ClientApp for the job ``job_of(context)`` returns; ``secure`` adds Flower's SecAgg+ mod.

    ``extra_mods`` run inside the SecAgg+ mod, next to the handler (they see the plain update).
    """
    mods: list[Any] = []
    if secure:
        from flwr.client.mod import secaggplus_mod

        mods.append(secaggplus_mod)
    mods.extend(extra_mods or [])
    app = ClientApp(mods=mods)

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return train_handler(msg, context, job_of(context))

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate_handler(msg, context, job_of(context))

    return app
