"""Secure aggregation: Flower's SecAgg+ workflow around the chosen strategy.

In Flower 1.42 SecAgg+ exists as a workflow of the legacy server API
(``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` over a ``LegacyContext``), so this
path drives the legacy twins of the strategies (``flwr.server.strategy.FedAvg``, ``FedProx``,
``FedAdam``, ``FedYogi``). Clients mask and quantise their weighted update; the server sums the
masked vectors, recovers the masks of clients that dropped out from their neighbours' secret
shares, and only then learns the weighted sum, which it hands to the strategy. It never holds
an individual update, so it cannot screen one: a corrupt client poisons the sum, and the only
defence left is to reject a non-finite aggregate and keep the previous model
(:class:`LoggedLegacyStrategy`). Clients still refuse to send updates they know are broken.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Context
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.serverapp import Grid

from shoestring.federate.config import FederateConfig
from shoestring.federate.rounds import RoundLog
from shoestring.federate.tasks import State

__all__ = ["LoggedLegacyStrategy", "run_secure_rounds"]


class LoggedLegacyStrategy(LegacyStrategy):
    """Wraps a legacy strategy: logs sampled / replied / failed per round, rejects a non-finite
    aggregate, evaluates the global model after each round through ``on_round_end``."""

    def __init__(self, inner: LegacyStrategy, log: RoundLog, names: list[str], round_offset: int,
                 on_round_end: Any) -> None:  # fmt: skip
        self.inner, self.log, self.names, self.offset, self.on_round_end = inner, log, names, round_offset, on_round_end

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:  # fmt: skip
        rnd = server_round + self.offset
        pairs = self.inner.configure_fit(rnd, parameters, client_manager)
        self.log.begin(rnd, len(pairs))
        return pairs

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:  # fmt: skip
        # Under SecAgg+ every FitRes carries the same (already summed) parameters; only the
        # plaintext metrics are per client.
        accepted = [{**res.metrics, "num-examples": res.num_examples} for _, res in results]
        self.log.replies(len(results) + len(failures), len(failures), {}, accepted)
        params, metrics = self.inner.aggregate_fit(server_round + self.offset, results, failures)
        if params is not None and not all(np.isfinite(a).all() for a in parameters_to_ndarrays(params)):
            self.log.aggregate_rejected("non_finite")
            return None, metrics
        return params, metrics

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list[Any]:
        return []  # federated evaluation rounds are not run under secure aggregation

    def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[Any, dict[str, Any]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        state = dict(zip(self.names, parameters_to_ndarrays(parameters), strict=True))
        metrics = self.on_round_end(server_round + self.offset, state)
        if not metrics:
            return None
        return 0.0, dict(metrics)


def _legacy_strategy(cfg: FederateConfig, n_clients: int, state: State, round_offset: int) -> LegacyStrategy:
    from flwr.server import strategy as S

    def fit_config(rnd: int) -> dict[str, Scalar]:
        return {"server-round": rnd, "local-epochs": cfg.local_epochs}

    common: dict[str, Any] = {
        "fraction_fit": cfg.fraction_train, "fraction_evaluate": 0.0,
        "min_fit_clients": min(max(2, cfg.min_clients_per_round), n_clients), "min_evaluate_clients": 0,
        "min_available_clients": n_clients, "on_fit_config_fn": fit_config,
        "initial_parameters": ndarrays_to_parameters(list(state.values())),
    }  # fmt: skip
    if cfg.strategy == "fedprox":
        return S.FedProx(**common, proximal_mu=cfg.proximal_mu)
    if cfg.strategy in ("fedadam", "fedyogi"):
        cls = S.FedAdam if cfg.strategy == "fedadam" else S.FedYogi
        return cls(**common, eta=cfg.server_lr, tau=cfg.server_tau)
    return S.FedAvg(**common)


def run_secure_rounds(grid: Grid, context: Context, cfg: FederateConfig, n_clients: int, state: State,
                      log: RoundLog, on_round_end: Any, max_weight: float) -> None:  # fmt: skip
    """Run the remaining rounds (after ``log.done``) under SecAgg+."""
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    done = log.done
    strategy = LoggedLegacyStrategy(_legacy_strategy(cfg, n_clients, state, done), log, list(state), done, on_round_end)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.rounds - done,
                                                                round_timeout=cfg.round_timeout_s),
                           strategy=strategy)  # fmt: skip
    sa = cfg.secagg
    shares: int | float = sa.num_shares if sa.num_shares <= 1 else int(sa.num_shares)
    threshold: int | float = sa.reconstruction_threshold if sa.reconstruction_threshold <= 1 else int(
        sa.reconstruction_threshold)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=shares, reconstruction_threshold=threshold, max_weight=max_weight,
        clipping_range=sa.clipping_range, quantization_range=sa.quantization_range, timeout=cfg.round_timeout_s))  # fmt: skip
    workflow(grid, legacy)
