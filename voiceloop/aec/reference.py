"""The playback reference: what the speaker plays, placed on the pipeline clock.

An echo canceller can only remove what it knows was played, and only if it knows *when*. The
output side pushes every chunk it hands to the sink together with the clock time its first
sample is played; the capture side reads back the reference for the clock interval a mic frame
covers. Both sides agree only through the pipeline clock, so no queue between them needs to
stay in step and an underrun, a flush or a late write cannot shift the alignment.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ..audio import StreamResampler, check_pcm, check_rate, downmix, float_to_int16
from ..frames import INPUT_RATE

#: A push whose start is off the previous push's end by more than this starts a new stretch
#: (sink underrun, new reply, a flush); smaller offsets are clock jitter and are ignored, so a
#: continuous stream is never cut and re-filtered.
CONTIGUITY_S = 0.02
#: The resampler holds back ~16 ms of every stretch until more audio comes. It is written out
#: once reads are this far past the end of everything pushed (the reply is over, or the sink
#: starved), never earlier: a writer just behind the reader must not cut a stream into pieces.
DRAIN_AFTER_S = 0.1


class EchoReference:
    """Bot audio as actually played, resampled once to ``rate`` and kept for ``capacity_s``.

    ``push`` is called by the output side (any rate, mono or multichannel, int16 or float),
    ``read`` by the capture side. A lock makes both safe from different threads, e.g. a device
    callback pushing while the event loop reads. Unplayed time reads as silence.
    """

    def __init__(self, rate: int = INPUT_RATE, *, capacity_s: float = 10.0) -> None:
        self.rate = check_rate(rate, what="reference rate")
        if not (isinstance(capacity_s, (int, float)) and math.isfinite(capacity_s) and capacity_s >= 1.0):
            raise ValueError(f"capacity_s must be a number >= 1 s, got {capacity_s!r}")
        self.capacity = round(capacity_s * self.rate)
        self._ring = np.zeros(self.capacity, dtype=np.int16)
        self._end: int | None = None  # absolute sample index just past the newest written sample
        self._lock = threading.Lock()
        self._resampler: StreamResampler | None = None
        self._in_rate = 0
        self._next_time = -math.inf  # clock time the next contiguous input sample plays at
        self._cursor = 0  # absolute index where the resampler's next output sample goes
        self._pending_tail = False  # the resampler holds back samples not yet written
        self.pushed_s = 0.0  # seconds of audio pushed, for diagnostics

    # -- output side ---------------------------------------------------------------------------
    def push(self, samples: np.ndarray, rate: int, play_time: float) -> None:
        """Record that ``samples`` (at ``rate``) start playing at clock time ``play_time``."""
        rate = check_rate(rate, what="reference rate")
        if not isinstance(play_time, (int, float)) or not math.isfinite(play_time):
            raise ValueError(f"play_time must be a finite clock time in seconds, got {play_time!r}")
        if isinstance(samples, np.ndarray) and samples.size == 0:
            return
        x = check_pcm(samples, what="reference audio")
        x = float_to_int16(downmix(x))  # the room hears the sum of all channels
        with self._lock:
            if rate != self._in_rate or abs(play_time - self._next_time) > CONTIGUITY_S:
                self._restart(rate, play_time)
            assert self._resampler is not None
            y = self._resampler.process(x)
            self._pending_tail = not self._resampler.passthrough
            self._write(self._cursor, y)
            self._cursor += len(y)
            self._next_time += len(x) / rate
            self.pushed_s += len(x) / rate

    def flush(self, at: float) -> None:
        """Nothing after clock time ``at`` will play (barge-in flush): forget it."""
        with self._lock:
            self._drain_tail()
            self._resampler = None
            self._in_rate = 0
            self._next_time = -math.inf
            cut = round(at * self.rate)
            if self._end is not None and cut < self._end:
                self._zero(max(cut, self._end - self.capacity), self._end)
                self._end = cut

    # -- capture side --------------------------------------------------------------------------
    def read(self, start: float, n: int) -> np.ndarray:
        """``n`` int16 samples at ``rate`` played from clock time ``start``; silence where none."""
        first = round(start * self.rate)
        out = np.zeros(n, dtype=np.int16)
        with self._lock:
            if self._pending_tail and start >= self._next_time + DRAIN_AFTER_S:
                self._drain_tail()  # all pushed audio has played: the reply ended, its tail is due
            if self._end is None:
                return out
            lo, hi = max(first, self._end - self.capacity), min(first + n, self._end)
            if lo < hi:
                out[lo - first : hi - first] = self._take(lo, hi)
        return out

    @property
    def final_until(self) -> float:
        """Clock time up to which the reference is written and will not change (-inf: nothing yet).

        A canceller that reads past it gets silence where audio is still to come, and AEC3 fed a
        far end with holes loses the echo path (``tests/test_echo_delay.py`` shows it).
        """
        with self._lock:
            return -math.inf if self._end is None else self._cursor / self.rate

    @property
    def end_time(self) -> float | None:
        """Clock time at which the last pushed sample has been played (None before any push)."""
        with self._lock:
            if self._end is None:
                return None
            return max(self._end / self.rate, self._next_time)  # the resampler may hold the tail back

    # -- internals (lock held) -----------------------------------------------------------------
    def _restart(self, rate: int, play_time: float) -> None:
        self._drain_tail()
        if self._resampler is None or rate != self._in_rate:
            self._resampler = StreamResampler(rate, self.rate)
            self._in_rate = rate
        else:
            self._resampler.reset()
        self._next_time = play_time
        self._cursor = round(play_time * self.rate)

    def _drain_tail(self) -> None:
        if self._pending_tail and self._resampler is not None:
            tail = self._resampler.flush()
            self._write(self._cursor, tail)
            self._cursor += len(tail)
        self._pending_tail = False

    def _write(self, first: int, y: np.ndarray) -> None:
        if not len(y):
            return
        cap = self.capacity
        if len(y) > cap:
            first, y = first + len(y) - cap, y[-cap:]
        end = first + len(y)
        if self._end is None:
            self._end = first
        if first > self._end:  # a gap since the last write: it played silence
            self._zero(max(self._end, first - cap), first)
        self._store(first, y)
        self._end = max(self._end, end)

    def _slices(self, lo: int, hi: int) -> list[tuple[slice, slice]]:
        """Ring slices for absolute [lo, hi) (at most capacity long), with the matching data slices."""
        cap = self.capacity
        a = lo % cap
        first = min(hi - lo, cap - a)
        parts = [(slice(a, a + first), slice(0, first))]
        if first < hi - lo:
            parts.append((slice(0, hi - lo - first), slice(first, hi - lo)))
        return parts

    def _store(self, lo: int, y: np.ndarray) -> None:
        for ring, data in self._slices(lo, lo + len(y)):
            self._ring[ring] = y[data]

    def _zero(self, lo: int, hi: int) -> None:
        if lo < hi:
            for ring, _ in self._slices(lo, hi):
                self._ring[ring] = 0

    def _take(self, lo: int, hi: int) -> np.ndarray:
        out = np.empty(hi - lo, dtype=np.int16)
        for ring, data in self._slices(lo, hi):
            out[data] = self._ring[ring]
        return out

    def __repr__(self) -> str:
        return f"EchoReference(rate={self.rate}, pushed={self.pushed_s:.2f} s)"
