"""Federated training on Flower: data stays with its clients, model updates travel.

``shoestring federate`` (stage ``federate``, artifact kind ``model``) partitions a dataset into
clients, runs Flower's simulation or deployment engine with a Flower strategy (FedAvg, FedProx,
FedAdam, FedYogi), optional client-side DP-SGD and SecAgg+, screens broken updates, meters the
bytes of every round, compares the result with centralised and local-only training, and writes
an ordinary model artifact. See docs/ARCHITECTURE.md, "Federated training".
"""

from shoestring.federate.config import FederateConfig

__all__ = ["FederateConfig"]
