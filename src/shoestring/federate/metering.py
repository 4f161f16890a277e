"""Bytes on the wire per round, measured where the server's messages leave and arrive.

:class:`MeteredGrid` wraps the Grid Flower hands a ServerApp (the simulation's in-memory grid
or the deployment engine's HTTP grid) and counts, for every message sent to a node and every
reply, the bytes of its serialised object tree - the message, its record dict, records and
array chunks, deflated exactly as Flower's transport pushes and pulls them
(:func:`message_bytes`). A message the server sends to ten nodes counts ten times: each node
downloads its copy. Transport framing (HTTP/gRPC headers, TLS) is not included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

if TYPE_CHECKING:
    from flwr.proto.node_pb2 import NodeInfo
    from flwr.supercore.run import Run

__all__ = ["MeteredGrid", "message_bytes"]


def message_bytes(msg: Message) -> int:
    """Serialised size of a message as Flower's transport sends it: the sum of its deflated objects."""
    if not msg.has_content():
        return len(msg.deflate())
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


class MeteredGrid(Grid):
    """A Grid that reports (bytes down to nodes, bytes up from nodes, messages) to ``on_traffic``."""

    def __init__(self, inner: Grid, on_traffic: Callable[[int, int, int], None],
                 on_reply: Callable[[Message], None] | None = None) -> None:  # fmt: skip
        self.inner = inner
        self.on_traffic = on_traffic
        self.on_reply = on_reply
        """Called with every reply the server receives (tests use it to see what the server sees)."""

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # fmt: skip
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.inner.get_nodes()

    def _sent(self, messages: Iterable[Message]) -> list[Message]:
        out = list(messages)
        self.on_traffic(sum(message_bytes(m) for m in out), 0, len(out))
        return out

    def _received(self, replies: Iterable[Message]) -> list[Message]:
        out = list(replies)
        self.on_traffic(0, sum(message_bytes(m) for m in out), len(out))
        if self.on_reply is not None:
            for m in out:
                self.on_reply(m)
        return out

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(self._sent(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._received(self.inner.pull_messages(message_ids))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._received(self.inner.send_and_receive(self._sent(messages), timeout=timeout))
