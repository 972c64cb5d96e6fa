"""Running model compute off the event loop.

A :class:`ComputeLane` is one worker thread that owns a loaded model's compute: calls from many
pipelines (sessions) are queued on it, so one model serves them all without oversubscribing the
cores, and the event loop never runs a matrix multiply. Engines create one lane per loaded model;
on a CPU, :func:`share_cores` gives several lanes one thread (see there for why).

Sessions share the model well through **batch calls** (:meth:`ComputeLane.batch`): requests for
the same batch function that pile up while the lane is busy run as one batch when it frees up —
several sessions' ASR windows in one encoder pass, several sessions' GPT steps in one forward.
Nothing waits for company: a lone request runs at once, so batching never adds latency at one
session. Long per-session work (a sentence's generation) runs as a **cooperative stream**
(:meth:`ComputeLane.stream` with ``cooperative=True``): a greenlet on the lane's thread that
pauses at each :meth:`ComputeLane.batch_call`, so concurrent sessions advance step by step, their
steps batch, and other jobs (ASR windows) run between rounds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from greenlet import getcurrent, greenlet

from .clock import ThreadWork
from .model_options import ModelOptions  # noqa: F401  (re-exported: every engine computes by it)

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - a batch item
R = TypeVar("R")

#: turns a list of items into a list of results, in order (one model call for the whole batch)
BatchFn = Callable[[list[Any]], Sequence[Any]]

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


class _Worker:
    """The thread a lane computes on (one per lane, or shared by :func:`share_cores`)."""

    def __init__(self, name: str, setups: list[Callable[[], None]]) -> None:
        self.setups = setups
        self.ident: int | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"voiceloop-{name}", initializer=self._init)
        #: seconds this thread spent running jobs, and the longest a job waited for it since the
        #: last :meth:`ComputeLane.take_wait` (written by the thread only): a server's load report
        self.busy_s = 0.0
        self.max_wait_s = 0.0

    def _init(self) -> None:
        self.ident = threading.get_ident()
        for setup in self.setups:
            setup()

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        queued = time.perf_counter()

        def timed() -> Any:
            start = time.perf_counter()
            self.max_wait_s = max(self.max_wait_s, start - queued)
            try:
                return fn(*args)
            finally:
                self.busy_s += time.perf_counter() - start

        return self.executor.submit(timed)


class _Coop(greenlet):
    """A cooperative stream's greenlet (created on the lane thread: greenlets belong to a thread)."""

    def __init__(self, body: Callable[[], None], future: concurrent.futures.Future, work: ThreadWork) -> None:
        super().__init__(body)
        self.future = future
        self.work = work
        self.outcome: tuple[bool, Any] | None = None  # what it is resumed with (None: first start)


class ComputeLane:
    """A single worker thread for one model's compute (see module docstring)."""

    def __init__(self, name: str, *, setup: Callable[[], None] | None = None, batching: bool = True) -> None:
        self.name = name
        #: run queued batch calls together (False: one item per call, for comparison benchmarks)
        self.batching = batching
        #: how many items each batch call ran with: {size: count} (benchmarks report it)
        self.batch_sizes: Counter[int] = Counter()
        self._worker = _Worker(name, [setup] if setup is not None else [])
        self._lock = threading.Lock()
        self._queued: dict[BatchFn, list[tuple[Any, concurrent.futures.Future]]] = {}
        #: streams started from the loop, not yet run: (body, future, work)
        self._coop_new: list[tuple[Callable[[], None], concurrent.futures.Future, ThreadWork]] = []
        self._coop_ready: list[_Coop] = []  # resumable at the next round (lane thread only)
        self._coop_scheduled = False

    @property
    def thread(self) -> object:
        """Who computes: lanes that :func:`share_cores` joined return the same object."""
        return self._worker

    @property
    def busy_s(self) -> float:
        """Seconds this lane's thread has spent computing (all lanes sharing the thread)."""
        return self._worker.busy_s

    def take_wait(self) -> float:
        """The longest a job waited for this lane's thread since the last call (then reset):
        how far compute falls behind what sessions ask of it."""
        wait, self._worker.max_wait_s = self._worker.max_wait_s, 0.0
        return wait

    def on_lane(self) -> bool:
        """Whether the caller is this lane's worker thread (then calls run inline, never queued)."""
        return threading.get_ident() == self._worker.ident

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the lane and await its result."""
        return await asyncio.wrap_future(self._submit(fn, *args))

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the lane from synchronous code and wait (inline when already there)."""
        if self.on_lane():
            return fn(*args)
        return self._submit(fn, *args).result()

    async def batch(self, fn: Callable[[list[I]], Sequence[R]], item: I) -> R:
        """Run ``fn([item, ...])`` on the lane together with other queued items for ``fn``."""
        return await asyncio.wrap_future(self._enqueue(fn, item))

    def batch_call(self, fn: Callable[[list[I]], Sequence[R]], item: I) -> R:
        """:meth:`batch` from synchronous code: in a cooperative stream it pauses the stream until
        the round's batch ran; elsewhere on the lane it runs alone; off the lane it blocks."""
        current = getcurrent()
        if isinstance(current, _Coop):
            ok, value = current.parent.switch((fn, item))
            if ok:
                return value
            raise value
        if self.on_lane():
            return fn([item])[0]
        return self._enqueue(fn, item).result()

    # -- queued batch calls (from the event loop or other threads) ------------------------------
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
        for (_, f), (ok, value) in zip(live, self._apply(fn, [item for item, _ in live]), strict=True):
            if ok:
                f.set_result(value)
            else:
                f.set_exception(value)

    def _apply(self, fn: BatchFn, items: list[Any]) -> list[tuple[bool, Any]]:
        """``fn(items)`` as (ok, result or error) per item; one bad item fails alone."""
        self.batch_sizes[len(items)] += 1
        try:
            return [(True, r) for r in fn(items)]
        except Exception as exc:
            if len(items) == 1:
                return [(False, exc)]
        outcomes: list[tuple[bool, Any]] = []
        for item in items:  # rerun each alone: only the culprit fails
            try:
                outcomes.append((True, fn([item])[0]))
            except Exception as single:
                outcomes.append((False, single))
        return outcomes

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

        future = self._worker.submit(call)
        future.add_done_callback(lambda _: work.done())
        return future

    # -- cooperative streams ------------------------------------------------------------------
    def _start_coop(self, body: Callable[[], None]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._coop_new.append((body, future, ThreadWork()))
            schedule, self._coop_scheduled = not self._coop_scheduled, True
        if schedule:
            self._worker.submit(self._coop_round)
        return future

    def _coop_round(self) -> None:
        """Resume every runnable stream until it asks for a batch call or ends; run the calls."""
        with self._lock:
            new, self._coop_new = self._coop_new, []
        runnable, self._coop_ready = self._coop_ready + [_Coop(*args) for args in new], []
        waiting: dict[BatchFn, list[tuple[_Coop, Any]]] = {}
        for stream in runnable:
            try:
                request = stream.switch() if stream.outcome is None else stream.switch(stream.outcome)
            except BaseException as exc:  # the body reports its own errors; this is a guard
                request = None
                stream.future.set_exception(exc)
            if stream.dead:
                if not stream.future.done():
                    stream.future.set_result(None)
                stream.work.done()
                continue
            fn, item = request
            waiting.setdefault(fn, []).append((stream, item))
        for fn, members in waiting.items():
            groups = [members] if self.batching else [[m] for m in members]
            for group in groups:
                outcomes = self._apply(fn, [item for _, item in group])
                for (stream, _), outcome in zip(group, outcomes, strict=True):
                    stream.outcome = outcome
                    self._coop_ready.append(stream)
        with self._lock:
            self._coop_scheduled = bool(self._coop_ready or self._coop_new)
            again = self._coop_scheduled
        if again:  # a new job, so jobs queued meanwhile (other lanes' too) run between rounds
            self._worker.submit(self._coop_round)

    async def stream(
        self,
        gen_fn: Callable[..., Iterator[T]],
        *args: Any,
        cancel: CancelToken | None = None,
        cooperative: bool = False,
    ) -> AsyncIterator[T]:
        """Run a sync generator on the lane, yielding its items as they come.

        ``cooperative=True`` runs it as a cooperative stream (see the module docstring): it
        pauses at each :meth:`batch_call` instead of holding the lane until it ends.

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
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(items.put_nowait, _Failure(exc))
            finally:
                gen.close()
                with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening
                    loop.call_soon_threadsafe(items.put_nowait, _DONE)

        job = asyncio.wrap_future(self._start_coop(pump) if cooperative else self._submit(pump))
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
        self._worker.executor.shutdown(wait=False, cancel_futures=True)


def share_cores(*lanes: ComputeLane) -> None:
    """Give ``lanes`` one worker thread: their jobs take turns, first come first served.

    On a CPU, torch work from two threads is slow even when it never overlaps: each thread that
    runs a parallel op gets its own OpenMP team, and with more team threads than cores libgomp
    stops spinning, so every small op pays a futex wake-up: on 2 cores small int8 linear layers
    ran markedly slower once a second thread had run torch, and a ChatTTS stream was slower
    with its GPT steps on one thread and its sampling or decoding on another. One thread for all
    models keeps one team — so also build the models on that thread (``first.call(load)``), as
    :func:`voiceloop.loop.load_engines` does. Call before the other lanes run anything; their thread
    setups then run on the shared thread, in order (so they should agree on the thread count).
    """
    first, *rest = lanes
    for lane in rest:
        lane._worker.executor.shutdown(wait=False)
        setups, lane._worker = lane._worker.setups, first._worker
        first._worker.setups.extend(setups)
        for setup in setups:
            first.call(setup)


class LaneMeter:
    """How loaded some lanes' threads are between two :meth:`sample` calls: the busy fraction of the
    busiest thread (0..1) and the longest a job waited for a thread (lag behind what was asked).
    A server reports these for admission (voiceloop.cluster); ``clock`` is wall time."""

    def __init__(self, lanes: Sequence[ComputeLane], clock: Callable[[], float] = time.perf_counter) -> None:
        threads: dict[int, ComputeLane] = {}
        for lane in lanes:
            threads.setdefault(id(lane.thread), lane)
        self.lanes = list(threads.values())  # one lane per distinct thread
        self.clock = clock
        self._last = (clock(), [lane.busy_s for lane in self.lanes])

    def sample(self) -> tuple[float, float]:
        """(busy fraction, max wait in s) since the previous sample."""
        now, busy = self.clock(), [lane.busy_s for lane in self.lanes]
        then, before = self._last
        self._last = (now, busy)
        span = now - then
        fractions = [(b - a) / span for a, b in zip(before, busy, strict=True)] if span > 0 else []
        waits = [lane.take_wait() for lane in self.lanes]
        return min(1.0, max(fractions, default=0.0)), max(waits, default=0.0)


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error
