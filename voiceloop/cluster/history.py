"""Call checkpoints that outlive a worker: a Ray actor on the gateway's node.

Each worker writes a call's conversation after every turn (fire and forget, off its event loop's
critical path); a worker that takes over a call reads it back. The actor runs on the node of the
gateway that made it (a node affinity, not a guess), so losing a worker node loses no history; it
is named, so every worker and gateway of the cluster finds the same one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..dialogue import Message
from ..serve.history import CallBook, Checkpoint, pack, unpack

log = logging.getLogger(__name__)

#: the checkpoint actor's name (in the cluster namespace)
HISTORY_ACTOR = "voiceloop-history"


class HistoryActor:
    """The store itself (wrapped by ``ray.remote`` in :func:`start_history`)."""

    def __init__(self, max_calls: int, ttl_s: float) -> None:
        self.book = CallBook(max_calls, ttl_s)

    def get(self, call: str) -> Checkpoint:
        return self.book.get(call)

    def put(self, call: str, checkpoint: Checkpoint) -> None:
        self.book.put(call, checkpoint)

    def drop(self, call: str) -> None:
        self.book.drop(call)

    def size(self) -> int:
        return len(self.book)


def start_history(namespace: str, max_calls: int = 10_000, ttl_s: float = 3600.0) -> Any:
    """The cluster's checkpoint actor, made on this node (the gateway's) if it does not exist yet."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(HistoryActor).options(
        name=HISTORY_ACTOR,
        namespace=namespace,
        get_if_exists=True,
        lifetime="detached",  # gateways come and go; the conversations stay
        num_cpus=0,
        max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
    )
    return actor.remote(max_calls, ttl_s)


class RayHistory:
    """:class:`voiceloop.serve.history.CallHistory` over the checkpoint actor."""

    def __init__(self, actor: Any, timeout_s: float = 3.0) -> None:
        self.actor = actor
        self.timeout_s = timeout_s

    @classmethod
    def find(cls, namespace: str) -> RayHistory:
        import ray

        return cls(ray.get_actor(HISTORY_ACTOR, namespace=namespace))

    async def get(self, call: str) -> list[Message]:
        """The call's turns; none when the store does not answer within ``timeout_s`` (the call
        still starts, without its history, rather than not at all)."""
        try:
            return unpack(await asyncio.wait_for(self.actor.get.remote(call), self.timeout_s))
        except Exception:
            log.warning("call history unavailable: the call starts without its earlier turns", exc_info=True)
            return []

    def put(self, call: str, messages: list[Message]) -> None:
        self.actor.put.remote(call, pack(messages))

    def drop(self, call: str) -> None:
        self.actor.drop.remote(call)
