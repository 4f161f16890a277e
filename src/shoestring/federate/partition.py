"""Split the units of a dataset (users, records) into federated clients.

Three schemes, all seeded and deterministic:

* ``iid`` - units shuffled and dealt into ``n`` near-equal clients;
* ``dirichlet`` - label skew (Hsu et al. 2019): for every label value, the share of its units
  that each client gets is drawn from Dirichlet(alpha); small alpha = few labels per client.
  Draws are repeated until every client has ``min_units`` units;
* ``column`` - one client per distinct value of a column (source, site, user, ...).

The result records, per client, how many units and records it holds and its label mix, so
the manifest shows exactly what each client had.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shoestring.core.errors import ShoestringError

__all__ = ["Partition", "partition_units"]

MAX_DIRICHLET_DRAWS = 1000


@dataclass
class Partition:
    """Which client each unit belongs to, and what every client holds."""

    clients: list[str]
    """Client names, index = partition id (``client-00``... or the column's values)."""
    assignment: list[int]
    """Client index of every unit, aligned with the units given to :func:`partition_units`."""
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    def members(self, client: int) -> list[int]:
        """Indices of the units that belong to ``client``."""
        return [i for i, c in enumerate(self.assignment) if c == client]

    def counts(self, labels: Sequence[str | None] | None = None,
               records: Sequence[int] | None = None) -> list[dict[str, Any]]:  # fmt: skip
        """Per client: units, records (when each unit's record count is given) and label mix."""
        out: list[dict[str, Any]] = []
        for c, name in enumerate(self.clients):
            idx = self.members(c)
            row: dict[str, Any] = {"client": name, "partition_id": c, "units": len(idx)}
            if records is not None:
                row["records"] = int(sum(records[i] for i in idx))
            if labels is not None:
                row["labels"] = dict(sorted(Counter(str(labels[i]) for i in idx).items()))
            out.append(row)
        return out


def _iid(n_units: int, n_clients: int, rng: np.random.Generator) -> list[int]:
    order = rng.permutation(n_units)
    out = [0] * n_units
    for rank, unit in enumerate(order):
        out[int(unit)] = rank % n_clients
    return out


def _dirichlet(labels: Sequence[str | None], n_clients: int, alpha: float, min_units: int,
               rng: np.random.Generator) -> tuple[list[int], int]:  # fmt: skip
    """Label-skewed assignment; returns it and the number of draws it took."""
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(str(lab), []).append(i)
    for draw in range(1, MAX_DIRICHLET_DRAWS + 1):
        out = [0] * len(labels)
        sizes = np.zeros(n_clients, dtype=np.int64)
        for lab in sorted(by_label):
            members = np.asarray(by_label[lab])
            rng.shuffle(members)
            shares = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for client, part in enumerate(np.split(members, cuts)):
                for unit in part:
                    out[int(unit)] = client
                sizes[client] += len(part)
        if sizes.min() >= min_units:
            return out, draw
    raise ShoestringError(
        f"partition: dirichlet: no draw in {MAX_DIRICHLET_DRAWS} gave every one of {n_clients} clients "
        f">= {min_units} units (alpha {alpha}, {len(labels)} units); raise alpha, lower clients or min_client_units"
    )


def partition_units(
    n_units: int,
    method: str,
    n_clients: int,
    *,
    labels: Sequence[str | None] | None = None,
    column_values: Sequence[Any] | None = None,
    alpha: float = 0.5,
    min_units: int = 1,
    seed: int = 0,
) -> Partition:
    """Assign ``n_units`` units to clients by ``method`` (iid, dirichlet or column).

    ``labels`` (one per unit) drive the Dirichlet skew; ``column_values`` (one per unit) name
    the clients of the ``column`` scheme. Errors a user can cause are one line.
    """
    rng = np.random.default_rng(seed)
    if method == "column":
        if column_values is None:
            raise ShoestringError("partition: column needs partition_column values for every unit")
        values = [str(v) for v in column_values]
        clients = sorted(set(values))
        if len(clients) < 2:
            raise ShoestringError(
                f"partition: column: the column has {len(clients)} distinct value(s); a federation needs >= 2 clients"
            )
        index = {v: i for i, v in enumerate(clients)}
        return Partition(clients, [index[v] for v in values], method)
    if n_units < n_clients * min_units:
        raise ShoestringError(
            f"partition: {n_units} units cannot give {n_clients} clients >= {min_units} each; lower clients"
        )
    names = [f"client-{c:0{len(str(n_clients - 1))}d}" for c in range(n_clients)]
    if method == "iid":
        return Partition(names, _iid(n_units, n_clients, rng), method)
    if method == "dirichlet":
        if labels is None:
            raise ShoestringError("partition: dirichlet needs a label per unit (set partition_label)")
        assignment, draws = _dirichlet(labels, n_clients, alpha, min_units, rng)
        return Partition(names, assignment, method, {"alpha": alpha, "draws": draws})
    raise ShoestringError(f"partition: unknown method {method!r}; use iid, dirichlet or column")
