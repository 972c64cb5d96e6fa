"""One clock for the whole pipeline: the running event loop's ``time()``.

Every timestamp in voiceloop is read from :func:`now`, so swapping the loop swaps the clock:

* a normal loop — real time (``time.monotonic()``);
* :class:`SkipIdleLoop` in ``virtual`` mode — pure virtual time for deterministic tests: the
  clock only moves when every task is waiting on a timer, and then jumps to the next timer;
* :class:`SkipIdleLoop` in ``fast`` mode — "as fast as possible" file runs: real time, except
  that waits with nothing to compute are skipped. Compute running in worker threads (tracked by
  :func:`thread_work`) still takes its real duration, so latencies measured in a fast run are
  the same as in a real-time run, only the idle waits vanish.
"""

from __future__ import annotations

import asyncio
import selectors
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_inflight = 0
_inflight_lock = threading.Lock()


def now() -> float:
    """Seconds on the pipeline clock (the running loop's time, else ``time.monotonic()``)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class ThreadWork:
    """A unit of compute running off the loop; while any is open a skip-idle clock waits for real.

    ``done()`` is idempotent so abandoned work (a hung handler thread) can be released by the
    caller that gave up on it.
    """

    __slots__ = ("_open",)

    def __init__(self) -> None:
        global _inflight
        with _inflight_lock:
            _inflight += 1
        self._open = True

    def done(self) -> None:
        global _inflight
        with _inflight_lock:
            if self._open:
                self._open = False
                _inflight -= 1


@contextmanager
def thread_work() -> Iterator[None]:
    """Context form of :class:`ThreadWork` for compute that always finishes."""
    work = ThreadWork()
    try:
        yield
    finally:
        work.done()


def tracked(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a function that runs in a worker thread with :func:`thread_work`."""

    def run(*args: Any, **kwargs: Any) -> T:
        with thread_work():
            return fn(*args, **kwargs)

    return run


def threads_busy() -> bool:
    return _inflight > 0


class _SkippingSelector:
    """Selector wrapper: where the loop would sleep with nothing to do, advance the clock instead."""

    def __init__(self, inner: selectors.BaseSelector, loop: SkipIdleLoop) -> None:
        self._inner = inner
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            return self._inner.select(timeout)
        if threads_busy():
            # Compute in a worker thread: wait for it in real time (in virtual mode the clock
            # stays put, so compute is instantaneous there).
            return self._inner.select(min(timeout, 0.005) if self._loop.mode == "virtual" else timeout)
        events = self._inner.select(0)
        if not events:
            self._loop.advance(timeout)
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class SkipIdleLoop(asyncio.SelectorEventLoop):
    """Event loop whose clock skips idle waits (see module docstring). ``mode``: virtual | fast."""

    def __init__(self, mode: str = "virtual", start: float = 1000.0) -> None:
        if mode not in ("virtual", "fast"):
            raise ValueError(f"SkipIdleLoop mode must be 'virtual' or 'fast', got {mode!r}")
        super().__init__()
        self.mode = mode
        self._virtual = start
        self._offset = 0.0
        self._selector = _SkippingSelector(self._selector, self)  # type: ignore[has-type]

    def time(self) -> float:
        if self.mode == "virtual":
            return self._virtual
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        if self.mode == "virtual":
            self._virtual += seconds
        else:
            self._offset += seconds


def run(main: Any, *, clock: str = "real", start: float = 1000.0) -> Any:
    """Run a coroutine on a real, ``fast`` or ``virtual`` clock (see module docstring); a virtual
    clock reads ``start`` when the coroutine starts (tests whose frames carry fixed capture times
    start it there, so the pipeline's clock and the frames' times agree)."""
    if clock == "real":
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=lambda: SkipIdleLoop(clock, start)) as runner:
        return runner.run(main)


#: Start-time estimates later than the sample count implies by more than this re-anchor a SampleClock.
RESYNC_S = 0.1


class SampleClock:
    """Pipeline time of a stream's samples (microphone, speaker, WebRTC track), from arrival times.

    Callbacks and arrivals only ever run late, so the earliest estimate of a block's start anchors
    sample 0 and later blocks follow the sample count, free of scheduling jitter; an estimate later
    than the count implies by more than RESYNC_S (clock drift, a stall, a device gap — or an explicit
    ``resync``) re-anchors it.

    ``trust_count``: for a stream that reports its own losses (PortAudio's input-overflow flag), the
    count is the truth and arrival times are not: a loaded machine runs the callbacks late and then
    in a burst, with no sample lost, and following those estimates moved the times forward and then
    back (frames dated before their predecessors). Then only ``resync`` moves the anchor, and only
    forward, so times are monotone: no block is placed before its predecessor's end.
    """

    __slots__ = ("origin", "samples", "trust_count")

    def __init__(self, *, trust_count: bool = False) -> None:
        self.origin: float | None = None  # pipeline time of sample 0
        self.samples = 0  # samples so far, dropped or zero-filled ones included
        self.trust_count = trust_count

    def place(self, estimate: float, frames: int, rate: int, *, resync: bool = False) -> float:
        """The time of the first of ``frames`` new samples, whose start was estimated at ``estimate``."""
        offset = self.samples / rate
        if self.origin is None:
            self.origin = estimate - offset
        elif self.trust_count:
            if resync:
                self.origin = max(self.origin, estimate - offset)
        elif resync or not 0.0 <= estimate - (self.origin + offset) <= RESYNC_S:
            self.origin = estimate - offset
        self.samples += frames
        return self.origin + offset
