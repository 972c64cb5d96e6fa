"""Running model compute off the event loop.

A :class:`ComputeLane` is one worker thread that owns a loaded model's compute: calls from many
pipelines (sessions) are queued on it, so one model serves them all without oversubscribing the
cores, and the event loop never runs a matrix multiply. Engines create one lane per loaded model.

Sessions share the model well through **batch calls** (:meth:`ComputeLane.batch`): requests for
the same batch function that pile up while the lane is busy run as one batch when it frees up —
several sessions' ASR windows in one encoder pass, several sessions' GPT steps in one forward.
Nothing waits for company: a lone request runs at once, so batching never adds latency at one
session. Long per-session work (a sentence's generation) runs on a *driver* thread
(:meth:`ComputeLane.stream` with ``driver=True``) that sends only its heavy calls to the lane, so
sessions interleave step by step instead of queueing behind each other's sentences.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .clock import ThreadWork

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - a batch item
R = TypeVar("R")

#: turns a list of items into a list of results, in order (one model call for the whole batch)
BatchFn = Callable[[list[Any]], Sequence[Any]]
#: most driver threads one lane keeps (one per concurrently generating session)
MAX_DRIVERS = 64

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

    def __init__(self, name: str, *, setup: Callable[[], None] | None = None, batching: bool = True) -> None:
        self.name = name
        #: run queued batch calls together (False: one item per call, for comparison benchmarks)
        self.batching = batching
        #: how many items each batch call ran with: {size: count} (benchmarks report it)
        self.batch_sizes: Counter[int] = Counter()
        self._setup = setup
        #: a lock shared with other lanes whose compute must not overlap (see :func:`share_cores`)
        self.gate: FairGate | None = None
        self._lane_thread: int | None = None
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix=f"voiceloop-{name}", initializer=self._init_thread
        )
        self._drivers: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._queued: dict[BatchFn, list[tuple[Any, concurrent.futures.Future]]] = {}

    def _init_thread(self) -> None:
        self._lane_thread = threading.get_ident()
        if self._setup is not None:
            self._setup()

    def on_lane(self) -> bool:
        """Whether the caller is this lane's worker thread (then calls run inline, never queued)."""
        return threading.get_ident() == self._lane_thread

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the lane and await its result."""
        return await asyncio.wrap_future(self._submit(fn, *args))

    async def batch(self, fn: Callable[[list[I]], Sequence[R]], item: I) -> R:
        """Run ``fn([item, ...])`` on the lane together with other queued items for ``fn``."""
        return await asyncio.wrap_future(self._enqueue(fn, item))

    def batch_call(self, fn: Callable[[list[I]], Sequence[R]], item: I) -> R:
        """:meth:`batch` from synchronous code (a driver thread): blocks until the batch ran."""
        if self.on_lane():
            return fn([item])[0]
        return self._enqueue(fn, item).result()

    def _enqueue(self, fn: BatchFn, item: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if not self.batching:
            self._submit(self._run_batch, fn, [(item, future)])
            return future
        with self._lock:
            queue = self._queued.setdefault(fn, [])
            queue.append((item, future))
            first = len(queue) == 1
        if first:  # one job per batch; items queued before it starts ride along
            self._submit(self._run_batch, fn, None)
        return future

    def _run_batch(self, fn: BatchFn, taken: list[tuple[Any, concurrent.futures.Future]] | None) -> None:
        if taken is None:
            with self._lock:
                taken = self._queued.pop(fn, [])
        live = [(item, f) for item, f in taken if f.set_running_or_notify_cancel()]
        if not live:
            return
        self.batch_sizes[len(live)] += 1
        try:
            results = fn([item for item, _ in live])
        except BaseException as exc:
            if len(live) == 1:
                live[0][1].set_exception(exc)
                return
            # one bad request must not fail its batch-mates: rerun each alone, only it fails
            for item, f in live:
                try:
                    f.set_result(fn([item])[0])
                except BaseException as single:
                    f.set_exception(single)
            return
        for (_, f), result in zip(live, results, strict=True):
            f.set_result(result)

    def _submit(
        self, fn: Callable[..., Any], *args: Any, executor: ThreadPoolExecutor | None = None
    ) -> concurrent.futures.Future:
        """Submit, counting the job as thread work from now (not from when a thread picks it up).

        A skip-idle clock must not see the loop as idle between submission and pickup, or it would
        jump ahead while compute is merely queued. Released when the job ends or is cancelled.
        """
        gate = self.gate if executor is None else None  # drivers only orchestrate: never gated
        executor = executor or self._executor
        work = ThreadWork()

        def call() -> Any:
            try:
                if gate is None:
                    return fn(*args)
                with gate:
                    return fn(*args)
            finally:
                work.done()

        future = executor.submit(call)
        future.add_done_callback(lambda _: work.done())
        return future

    def _driver_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._drivers is None:
                self._drivers = ThreadPoolExecutor(
                    MAX_DRIVERS, thread_name_prefix=f"voiceloop-{self.name}-drv"
                )
            return self._drivers

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the lane from synchronous code and wait (warm-ups, CLIs, drivers)."""
        if self.on_lane():
            return fn(*args)
        return self._submit(fn, *args).result()

    async def stream(
        self,
        gen_fn: Callable[..., Iterator[T]],
        *args: Any,
        cancel: CancelToken | None = None,
        driver: bool = False,
    ) -> AsyncIterator[T]:
        """Run a sync generator on the lane, yielding its items as they come.

        ``driver=True`` runs it on a driver thread instead: the generator must send its heavy
        work to the lane itself (:meth:`call`, :meth:`batch_call`) — see the module docstring.

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

        pool = self._driver_pool() if driver else None
        job = asyncio.wrap_future(self._submit(pump, executor=pool))
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
        if self._drivers is not None:
            self._drivers.shutdown(wait=False, cancel_futures=True)


class FairGate:
    """A lock handed to waiters in arrival order.

    ``threading.Lock`` is not fair: a lane with a queue of jobs releases and re-takes it at once,
    and the other lane can starve for seconds (measured: eight WebRTC sessions' ASR finals kept
    the TTS from running at all). Here a release hands the gate straight to the oldest waiter.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
        waiter.acquire()  # released by the holder's release(): the gate is ours, still held

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False

    def __enter__(self) -> FairGate:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def share_cores(*lanes: ComputeLane) -> FairGate:
    """Let at most one of ``lanes`` compute at a time (they take turns job by job).

    Two CPU lanes that each use every core (torch intra-op threads) slow each other down far more
    than taking turns costs: oversubscribed OpenMP threads spin and wait on each other. Measured on
    2 cores, four WebRTC sessions' ASR finals overlapping their TTS steps — see
    ``benchmarks/webrtc_sessions.py``. Jobs are short (one encoder window, one GPT step, one
    decode), so a lane waits at most one of the other's jobs.
    """
    gate = FairGate()
    for lane in lanes:
        lane.gate = gate
    return gate


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error
