"""The ServerApp and ClientApp that Flower's deployment engine loads (``shoestring_federation``).

Both read the job file named by the run config key ``job`` (written by the stage into its work
folder). Secure aggregation is decided per run, so Flower's ``secaggplus_mod`` is applied by a
mod that looks at the job.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from shoestring.federate.client import make_client_app
from shoestring.federate.server import make_server_app
from shoestring.federate.tasks import Job

__all__ = ["client_app", "server_app"]


def job_of(context: Context) -> Job:
    """The job of this run (its path is the run config's ``job``)."""
    return Job.load(str(context.run_config["job"]))


def secagg_if_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's SecAgg+ client mod, when the job turns secure aggregation on."""
    if job_of(context).config.get("secure_aggregation"):
        from flwr.client.mod import secaggplus_mod

        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


server_app = make_server_app(job_of)
client_app = make_client_app(job_of, secure=False, extra_mods=[secagg_if_asked])
