"""How a process (server, Ray actor, SuperNode's ClientApp) gets the task of a :class:`Job`.

The one place that knows every task kind: it sits above :mod:`shoestring.federate.tasks` (the
contract) and the kinds that implement it (``recsys_task``, ``text_tasks``).
"""

from __future__ import annotations

from shoestring.federate.tasks import FederatedTask, Job

__all__ = ["load_task"]

_CACHE: dict[str, FederatedTask] = {}


def load_task(job: Job) -> FederatedTask:
    """The task of ``job``, built once per process (Ray actors and the server reuse it across rounds)."""
    key = job.digest
    if key not in _CACHE:
        task = job.config["task"]
        if task == "sequential-recommendation":
            from shoestring.federate.recsys_task import RecsysTask

            _CACHE[key] = RecsysTask(job)
        elif task == "classification":
            from shoestring.federate.text_tasks import ClassificationTask

            _CACHE[key] = ClassificationTask(job)
        else:
            from shoestring.federate.text_tasks import SFTTask

            _CACHE[key] = SFTTask(job)
    return _CACHE[key]
