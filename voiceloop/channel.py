"""The bounded FIFO between two stages (see :mod:`voiceloop.pipeline` for the queue policy)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from .frames import Frame


class Channel:
    """A bounded FIFO between two stages (cheaper than ``asyncio.Queue``; one consumer).

    ``drop_oldest=True`` makes ``put_nowait`` evict the oldest frame when full (counted in
    ``dropped``); otherwise producers ``await put()`` for space.
    """

    __slots__ = ("_getter", "_items", "_loop", "_putters", "drop_oldest", "dropped", "maxsize", "name")

    def __init__(self, name: str, maxsize: int, *, drop_oldest: bool = False) -> None:
        if maxsize < 1:
            raise ValueError(f"queue {name!r}: maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self.drop_oldest = drop_oldest
        self.dropped = 0
        self._items: deque[Frame] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._items)

    def _wake_getter(self) -> None:
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def put_nowait(self, frame: Frame) -> None:
        """Enqueue without waiting. Full: drop the oldest (drop_oldest) or raise ``QueueFull``."""
        if len(self._items) >= self.maxsize:
            if not self.drop_oldest:
                raise asyncio.QueueFull(self.name)
            self._items.popleft()
            self.dropped += 1
        self._items.append(frame)
        self._wake_getter()

    async def put(self, frame: Frame) -> None:
        """Enqueue, waiting for space (backpressure) unless the channel drops the oldest."""
        while len(self._items) >= self.maxsize and not self.drop_oldest:
            waiter = asyncio.get_running_loop().create_future()
            self._putters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._putters:
                    self._putters.remove(waiter)
        self.put_nowait(frame)

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Remember the running loop (saves a lookup per frame; unbound channels look it up)."""
        self._loop = loop

    async def get(self) -> Frame:
        items = self._items
        while not items:
            getter = self._getter = (self._loop or asyncio.get_running_loop()).create_future()
            try:
                await getter
            finally:
                self._getter = None
            items = self._items  # discard() may have replaced the deque
        frame = items.popleft()
        if self._putters:
            putter = self._putters.popleft()
            if not putter.done():
                putter.set_result(None)
        return frame

    def discard(self, drop: Callable[[Frame], bool]) -> int:
        """Remove queued frames for which ``drop(frame)`` is true; returns how many."""
        kept = [f for f in self._items if not drop(f)]
        removed = len(self._items) - len(kept)
        if removed:
            self._items = deque(kept)
            while self._putters:
                putter = self._putters.popleft()
                if not putter.done():
                    putter.set_result(None)
        return removed
