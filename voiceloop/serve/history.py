"""Where a call's conversation is checkpointed after each turn, outside the pipeline that holds it.

A call outlives its WebRTC connection: when the connection is lost (the worker process died, the
network dropped) the page offers again with the call id the first answer gave it, and the new
session starts with the turns already done (``ctx.history``). Only the utterance or sentence in flight
is lost. One machine keeps the checkpoints in memory (:class:`MemoryHistory`); a Ray cluster keeps them
in an actor on the gateway's node (:mod:`voiceloop.cluster.history`), so a worker's death loses none.

A call id is a capability (it reads the conversation back): the server makes it (``new_call_id``, 128
random bits), the page keeps it in memory only, and a hung-up call's checkpoint is dropped.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from ..dialogue import Message

#: what a call id looks like (new_call_id's output); anything else in an offer is refused (400)
CALL_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")

#: a checkpoint as it travels (tuples pickle and serialise cheaply): (role, text, turn_id)
Checkpoint = list[tuple[str, str, int]]


def new_call_id() -> str:
    """A fresh, unguessable call id."""
    return secrets.token_urlsafe(16)


def pack(messages: list[Message]) -> Checkpoint:
    return [(m.role, m.text, m.turn_id) for m in messages]


def unpack(checkpoint: Checkpoint | None) -> list[Message]:
    return [Message(role, text, turn_id) for role, text, turn_id in checkpoint or []]


class CallHistory(Protocol):
    """A per-call checkpoint store. ``put`` must not block the event loop (fire and forget)."""

    async def get(self, call: str) -> list[Message]: ...

    def put(self, call: str, messages: list[Message]) -> None: ...

    def drop(self, call: str) -> None: ...


class CallBook:
    """Bounded, expiring checkpoints by call id (the store behind both kinds of history).

    ``max_calls``: oldest-touched calls are forgotten beyond it; ``ttl_s``: a call untouched this
    long is forgotten (a page that never came back)."""

    def __init__(
        self, max_calls: int = 10_000, ttl_s: float = 3600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_calls < 1 or not ttl_s > 0:
            raise ValueError("max_calls must be >= 1 and ttl_s > 0")
        self.max_calls, self.ttl_s, self.clock = max_calls, ttl_s, clock
        self._calls: OrderedDict[str, tuple[float, Checkpoint]] = OrderedDict()

    def get(self, call: str) -> Checkpoint:
        self._expire()
        entry = self._calls.get(call)
        return list(entry[1]) if entry is not None else []

    def put(self, call: str, checkpoint: Checkpoint) -> None:
        self._calls[call] = (self.clock(), list(checkpoint))
        self._calls.move_to_end(call)
        self._expire()

    def drop(self, call: str) -> None:
        self._calls.pop(call, None)

    def __len__(self) -> int:
        self._expire()
        return len(self._calls)

    def _expire(self) -> None:
        oldest = self.clock() - self.ttl_s
        while self._calls:
            call, (touched, _) = next(iter(self._calls.items()))
            if touched >= oldest and len(self._calls) <= self.max_calls:
                break
            del self._calls[call]


class MemoryHistory:
    """Checkpoints in this process: survives a lost connection, not the process (one machine)."""

    def __init__(self, book: CallBook | None = None) -> None:
        self.book = book if book is not None else CallBook()

    async def get(self, call: str) -> list[Message]:
        return unpack(self.book.get(call))

    def put(self, call: str, messages: list[Message]) -> None:
        self.book.put(call, pack(messages))

    def drop(self, call: str) -> None:
        self.book.drop(call)
