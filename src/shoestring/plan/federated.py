"""Communication cost of a federated run, before it runs.

A round sends the global tensors to every sampled client and gets one update back from each;
with federated evaluation, a fraction of clients also receives the model to score it. Bytes
are those of Flower's serialised messages (the objects its transport pushes and pulls): the
fp32 tensor data plus, measured on Flower 1.42, ~460 bytes per tensor (its header and name),
~66 per extra 5 MiB chunk and ~500-540 per message (metadata, config or metrics). Under SecAgg+
(``secaggplus_mod``) each client uploads its quantised, masked update as int64 (twice the fp32
bytes, plus the weight), and the key exchange adds four small messages per client and round.

Used by ``shoestring plan`` with ``federated: {clients: N, rounds: R, ...}`` (``plan.json`` key
``federated``) and by
the `federate` stage, which records these predictions beside what it measured.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from shoestring.core.config import StageConfig

__all__ = ["FederatedPlanOptions", "plan_traffic", "predict_traffic", "sampled_clients"]

TENSOR_OVERHEAD = 460
"""Bytes added per tensor by the array object's header, dtype/shape and name (Flower 1.42)."""
CHUNK_BYTES = 5 * 2**20
"""Flower splits arrays into chunks of at most 5 MiB (``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``)."""
CHUNK_OVERHEAD = 66
MESSAGE_DOWN = 500
"""Message + record-dict + config-record objects of an instruction."""
MESSAGE_UP = 550
"""Message + record-dict + metric-record objects of a reply (weight, loss, partition id, steps)."""
SECAGG_SETUP = 3_000
"""SecAgg+ per client and round outside the masked vector: keys, encrypted shares, unmasking shares
(grows with the number of neighbours; measured order of magnitude for <= 10 clients)."""


def sampled_clients(clients: int, fraction: float, minimum: int) -> int:
    """Clients Flower's strategies sample in a round: max(int(clients x fraction), minimum), at most all."""
    return min(clients, max(int(clients * fraction), minimum))


def _payload(numels: list[int], bytes_per_value: int = 4) -> int:
    data = sum(numels) * bytes_per_value
    chunks = sum(max(1, math.ceil(n * bytes_per_value / CHUNK_BYTES)) - 1 for n in numels)
    return data + TENSOR_OVERHEAD * len(numels) + CHUNK_OVERHEAD * chunks


def predict_traffic(numels: list[int], clients: int, rounds: int, fraction_train: float = 1.0,
                    min_clients: int = 2, fraction_evaluate: float = 0.0,
                    secure_aggregation: bool = False) -> dict[str, Any]:  # fmt: skip
    """Predicted bytes down (server -> clients) and up per round and in total.

    ``numels`` are the element counts of the tensors that travel (all weights, or LoRA
    adapters + head), fp32.
    """
    train = sampled_clients(clients, fraction_train, min(min_clients, clients))
    evaluate = sampled_clients(clients, fraction_evaluate, 1) if fraction_evaluate > 0 else 0
    payload = _payload(numels)
    down = train * (payload + MESSAGE_DOWN) + evaluate * (payload + MESSAGE_DOWN)
    if secure_aggregation:
        masked = _payload([*numels, 1], bytes_per_value=8)
        up = train * (masked + MESSAGE_UP + SECAGG_SETUP)
    else:
        up = train * (payload + MESSAGE_UP)
    up += evaluate * MESSAGE_UP
    return {
        "clients_per_round": train, "evaluating_clients_per_round": evaluate, "payload_bytes": payload,
        "bytes_down_per_round": down, "bytes_up_per_round": up, "bytes_per_round": down + up,
        "bytes_total": rounds * (down + up), "rounds": rounds, "secure_aggregation": secure_aggregation,
    }  # fmt: skip


class FederatedPlanOptions(StageConfig):
    """Plan a federated run of this model (``plan.json`` key ``federated``): bytes per round and in total."""

    clients: int = Field(10, ge=2)
    """Clients in the federation."""
    rounds: int = Field(20, ge=1)
    """Federated rounds."""
    fraction_train: float = Field(1.0, gt=0, le=1)
    """Fraction of clients sampled per round."""
    min_clients_per_round: int = Field(2, ge=1)
    """Fewest clients sampled per round."""
    fraction_evaluate: float = Field(0.0, ge=0, le=1)
    """Fraction of clients evaluating the global model per round."""
    secure_aggregation: bool = False
    """SecAgg+ uploads (masked int64 vectors and key exchange)."""


def plan_traffic(shape: Any, method: str, lora_targets: list[str], lora_rank: int, trainable: int,
                 opts: FederatedPlanOptions) -> dict[str, Any]:  # fmt: skip
    """What a federated run of the planned model sends: LoRA runs send the adapters (+ a
    classification head), other methods the trainable weights."""
    from shoestring.plan.arch import match_lora_targets

    if method in ("lora", "qlora"):
        numels = []
        for name in match_lora_targets(shape, lora_targets):
            d_in, d_out = shape.linear_shapes[name]
            numels += [lora_rank * d_in, d_out * lora_rank]
        numels += [max(0, trainable - sum(numels))]  # the head peft keeps trainable (classification)
        numels = [n for n in numels if n > 0]
    else:
        weights = [i * o for i, o in shape.linear_shapes.values()]
        numels = [*weights, max(0, trainable - sum(weights))]
    out = predict_traffic(numels, opts.clients, opts.rounds, opts.fraction_train, opts.min_clients_per_round,
                          opts.fraction_evaluate, opts.secure_aggregation)  # fmt: skip
    full = shape.n_params * 4
    out["full_model_bytes"] = full
    out["travelling_fraction_of_full"] = out["payload_bytes"] / full if full else None
    return out
