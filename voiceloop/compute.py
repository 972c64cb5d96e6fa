"""Running model compute off the event loop.

A :class:`ComputeLane` is one worker thread that owns a loaded model's compute: calls from many
pipelines (sessions) are queued on it, so one model serves them all without oversubscribing the
cores, and the event loop never runs a matrix multiply. Engines create one lane per loaded model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .clock import ThreadWork

T = TypeVar("T")

_DONE = object()


class CancelToken:
    """Checked by compute code between steps (``if token.cancelled: return``)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class ComputeLane:
    """A single worker thread for one model's compute (see module docstring)."""

    def __init__(self, name: str, *, setup: Callable[[], None] | None = None) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"voiceloop-{name}", initializer=setup)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the lane and await its result."""
        return await asyncio.wrap_future(self._submit(fn, *args))

    def _submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Submit, counting the job as thread work from now (not from when a thread picks it up).

        A skip-idle clock must not see the loop as idle between submission and pickup, or it would
        jump ahead while compute is merely queued. Released when the job ends or is cancelled.
        """
        work = ThreadWork()

        def call() -> Any:
            try:
                return fn(*args)
            finally:
                work.done()

        future = self._executor.submit(call)
        future.add_done_callback(lambda _: work.done())
        return future

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the lane from synchronous code and wait (warm-ups, CLIs)."""
        return self._executor.submit(fn, *args).result()

    async def stream(
        self, gen_fn: Callable[..., Iterator[T]], *args: Any, cancel: CancelToken | None = None
    ) -> AsyncIterator[T]:
        """Run a sync generator on the lane, yielding its items as they come.

        Stopping the iteration (``break``, task cancellation, ``aclose``) cancels the token, and
        the generator is closed before its next item — "cancellable between chunks". Pass the
        same ``cancel`` token into ``gen_fn`` for a finer-grained check inside a step.
        """
        loop = asyncio.get_running_loop()
        token = cancel or CancelToken()
        items: asyncio.Queue[Any] = asyncio.Queue()

        def pump() -> None:
            gen = gen_fn(*args)
            try:
                for item in gen:
                    if token.cancelled:
                        break
                    loop.call_soon_threadsafe(items.put_nowait, item)
            except BaseException as exc:  # delivered to the consumer, raised there
                loop.call_soon_threadsafe(items.put_nowait, _Failure(exc))
            finally:
                gen.close()
                with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening
                    loop.call_soon_threadsafe(items.put_nowait, _DONE)

        job = asyncio.wrap_future(self._submit(pump))
        try:
            while True:
                item = await items.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            token.cancel()
            if job.done():
                job.result()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error
