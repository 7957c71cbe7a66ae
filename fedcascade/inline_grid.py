"""An in-process Flower Grid: messages go straight to the ClientApp's handlers, in order.

``[simulation] engine = "inline"`` runs the very same ServerApp and ClientApp code through this
grid instead of Flower's simulation engine: one process, no SuperLink, no Ray, clients one after
another. Results are identical to the Ray engine's for the same config and seed (tested); it
exists because on a 2-core machine a sweep of many short runs spends most of its time starting
Ray and importing torch in fresh workers, not training. Use Ray (the default) for parallel
clients, clusters and anything that should behave like a deployment.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedcascade import client_app


class InlineGrid(Grid):
    """``n_nodes`` simulated SuperNodes with partition ids 0..n-1, served in this process."""

    def __init__(self, n_nodes: int, node_config_extra: dict | None = None) -> None:
        TaskIdentity.run_id = 1
        TaskIdentity.task_id = 1
        TaskIdentity.node_id = 0
        self.contexts = {
            100 + p: Context(
                run_id=1,
                node_id=100 + p,
                node_config={
                    "partition-id": p,
                    "num-partitions": n_nodes,
                    **(node_config_extra or {}),
                },
                state=RecordDict(),
                run_config={},
            )
            for p in range(n_nodes)
        }
        #: every message sent and every reply, for tests that inspect the traffic
        self.sent: list[Message] = []
        self.replies: list[Message] = []

    def set_run(self, run_id: int) -> None:  # pragma: no cover - not used
        pass

    @property
    def run(self):  # pragma: no cover - not used
        return None

    def create_message(
        self, content, message_type, dst_node_id, group_id, ttl=None
    ):  # pragma: no cover
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages):  # pragma: no cover - not used
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover - not used
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        handlers = {
            "train": client_app.train,
            "evaluate": client_app.evaluate,
            "query": client_app.query,
        }
        out = []
        for m in messages:
            self.sent.append(m)
            ctx = self.contexts[m.metadata.dst_node_id]
            reply = handlers[m.metadata.message_type.split(".")[0]](m, ctx)
            self.replies.append(reply)
            out.append(reply)
        return out
