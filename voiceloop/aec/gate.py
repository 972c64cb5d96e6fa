"""The echo gate: while the bot plays, only mic energy the echo cannot explain counts as the user.

It needs no canceller: the echo's *power* in a 10 ms block is, to a few dB, a fixed mix of the
reference power played over the preceding ~0.3 s (delay, reverberation and loudspeaker gain
folded into a short non-negative filter: the room's coupling). The filter is fitted by least
squares on the frames the gate judges echo-only while the bot talks; how far those frames
scatter above the fit (a high percentile, in dB) is measured too. A frame belongs to the user
when it is louder than fit + scatter + ``margin_db``. Behind a canceller the same measurement
learns the *residual* coupling, so the gate is also a second line of defence.

Uses: :meth:`EchoGate.allow` is a ``BargeInOptions(allow=...)`` predicate; ``suppress`` mutes
echo-only frames (or every frame: half duplex) while the bot plays, so the VAD never opens an
utterance on the bot's voice.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields

import numpy as np

from ..frames import AudioFrame, SpeechStarted
from .canceller import check_mic_frame
from .delay import EchoDelayEstimator
from .reference import EchoReference

SUPPRESS = ("off", "echo", "all")
BLOCK_S = 0.01
_FULL_SCALE = 32768.0**2
_EPS = 1e-10  # -100 dBFS: digital silence still has a level


def _db(power: float) -> float:
    return 10.0 * math.log10(power + _EPS)


def level_db(x: np.ndarray) -> float:
    """Mean power of int16 samples in dBFS (full-scale square wave = 0 dB)."""
    v = x.astype(np.float64)
    return _db(float(np.dot(v, v)) / (len(v) * _FULL_SCALE))


def _block_powers(x: np.ndarray, block: int) -> np.ndarray:
    v = x.astype(np.float64).reshape(-1, block)
    return np.einsum("ij,ij->i", v, v) / (block * _FULL_SCALE)


@dataclass
class GateOptions:
    """Echo gate settings (``benchmarks/echo.py`` measures them on synthetic rooms).

    ``margin_db``: a frame is the user's when it is this much louder than the echo estimate.
    ``taps_ms`` / ``lead_ms``: the echo of a mic block may come from reference played up to
    ``lead_ms`` after it (device timestamps off) and ``taps_ms - lead_ms`` before it (acoustic
    delay, reverberation, output latency).
    ``floor_dbfs``: reference quieter than this is no playback (no echo expected).
    ``initial_coupling_db``: before the first fit, echo is taken as the loudest reference block
    in the window times this gain (0 dB: as loud as played; cautious).
    ``warmup_ms``: the first playback is learned from whatever it sounds like (the gate cannot
    tell yet); after it, only frames judged echo train the fit, and frames judged the user's
    nudge the scatter up 1 dB, so a louder speaker is learned but talking over the bot is not.
    ``history_ms`` / ``percentile``: fit and scatter over this much recent playback.
    ``min_user_ms``: :meth:`EchoGate.allow` accepts a SpeechStarted when at least this much audio
    from its speech onset to its decision was louder than the echo estimate.
    ``suppress``: "echo" mutes frames the echo explains while the bot plays (keeping ``hold_ms``
    after each frame judged the user's, so the VAD hears whole syllables), "all" mutes every
    frame while the bot plays (half duplex: no barge-in by voice), "off" never mutes.
    """

    margin_db: float = 6.0
    taps_ms: int = 320
    lead_ms: int = 40
    floor_dbfs: float = -55.0
    initial_coupling_db: float = 0.0
    warmup_ms: int = 1000
    history_ms: int = 6000
    percentile: float = 90.0
    min_user_ms: int = 40
    suppress: str = "echo"
    hold_ms: int = 200

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "suppress":
                if value not in SUPPRESS:
                    raise ValueError(f"suppress must be one of {', '.join(SUPPRESS)}, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
            elif f.name.endswith("_ms") and (value < 0 or value % 10):
                raise ValueError(f"{f.name} must be a non-negative multiple of 10 ms, got {value!r}")
        if not 50.0 <= self.percentile <= 100.0:
            raise ValueError(f"percentile must be in [50, 100], got {self.percentile}")
        if self.history_ms < 500 or self.taps_ms < 50 or self.lead_ms >= self.taps_ms:
            raise ValueError("need history_ms >= 500, taps_ms >= 50 and lead_ms < taps_ms")


@dataclass(slots=True)
class GateFrame:
    """The gate's verdict on one mic frame (kept for the barge-in decision)."""

    time: float
    duration: float
    mic_db: float
    echo_db: float  # estimated echo level; -inf when the bot was silent
    user: bool  # louder than the echo can explain (or no playback at all)

    @property
    def playing(self) -> bool:
        return self.echo_db > -math.inf


class EchoPowerModel:
    """Block echo power = reference block powers (newest first) · ``taps``.

    Ridge least squares over the most recent ``history`` training blocks, clipped to
    non-negative taps. The normal equations are kept up to date block by block, so a refit is
    one small solve (a fresh ``X.T @ X`` wakes BLAS threads, which is slow on a busy machine).
    """

    REFIT_BLOCKS = 50  # refit every 0.5 s of training audio

    def __init__(self, taps: int, history: int, prior_db: float) -> None:
        self.taps: np.ndarray | None = None
        self.prior = 10 ** (prior_db / 10)
        self.fits = 0
        self._n = taps
        self._x: deque[np.ndarray] = deque()
        self._y: deque[float] = deque()
        self._history = history
        self._gram = np.zeros((taps, taps))
        self._xy = np.zeros(taps)
        self._since_fit = 0

    def estimate(self, x: np.ndarray) -> np.ndarray:
        """Echo power per block for reference rows ``x`` (blocks × taps)."""
        if self.taps is None:
            return x.max(axis=1) * self.prior
        return x @ self.taps

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Train on reference rows ``x`` whose mic block powers were ``y`` (echo only)."""
        self._gram += np.einsum("ki,kj->ij", x, x)
        self._xy += np.einsum("ki,k->i", x, y)
        self._x.extend(x)
        self._y.extend(y)
        drop = len(self._y) - self._history
        if drop > 0:
            old = np.stack([self._x.popleft() for _ in range(drop)])
            old_y = np.fromiter((self._y.popleft() for _ in range(drop)), float, drop)
            self._gram -= np.einsum("ki,kj->ij", old, old)
            self._xy -= np.einsum("ki,k->i", old, old_y)
        self._since_fit += len(y)
        if self._since_fit >= self.REFIT_BLOCKS and len(self._y) >= 4 * self._n:
            self.fit()

    def shift(self, blocks: int) -> None:
        """The reference rows move ``blocks`` later (the echo was measured that much earlier):
        keep the fitted taps, moved to match, and restart the training history on the new rows."""
        if self.taps is not None:
            moved = np.zeros_like(self.taps)
            if abs(blocks) < self._n:
                if blocks >= 0:
                    moved[: self._n - blocks] = self.taps[blocks:]
                else:
                    moved[-blocks:] = self.taps[: self._n + blocks]
            self.taps = moved if moved.any() else None
        self._x.clear()
        self._y.clear()
        self._gram[:] = 0.0
        self._xy[:] = 0.0
        self._since_fit = 0

    def fit(self) -> None:
        self._since_fit = 0
        if self.fits % 64 == 63:  # re-sum now and then: running sums drift with rounding
            x = np.stack(self._x)
            self._gram = np.einsum("ki,kj->ij", x, x)
            self._xy = np.einsum("ki,k->i", x, np.fromiter(self._y, float))
        ridge = 1e-3 * np.trace(self._gram) / self._n + 1e-18
        taps = np.linalg.solve(self._gram + ridge * np.eye(self._n), self._xy)
        self.taps = np.maximum(taps, 0.0)
        self.fits += 1

    def training_ratios(self, blocks_per_frame: int) -> np.ndarray:
        """dB of training frames over their current estimate (frames = consecutive block groups)."""
        y = np.fromiter(self._y, float)
        n = len(y) // blocks_per_frame * blocks_per_frame
        x = np.stack(list(self._x)[len(y) - n :])
        est = self.estimate(x).reshape(-1, blocks_per_frame).mean(axis=1)
        mic = y[len(y) - n :].reshape(-1, blocks_per_frame).mean(axis=1)
        return 10.0 * np.log10(mic + _EPS) - 10.0 * np.log10(est + _EPS)


class EchoGate:
    """Per-frame echo-versus-user decisions from mic and reference levels.

    Call :meth:`process` (or :meth:`observe`) for every mic frame, in order; :meth:`allow` then
    judges a SpeechStarted by the frames between its speech onset and its decision.
    """

    def __init__(
        self,
        reference: EchoReference,
        options: GateOptions | None = None,
        delay: EchoDelayEstimator | None = None,
    ) -> None:
        self.reference = reference
        #: measured echo delay (fed by its owner); None: trust the reported play times
        self.delay = delay
        self._shift_blocks = 0  # reference rows are read this many 10 ms blocks earlier
        o = self.options = options if options is not None else GateOptions()
        self.rate = reference.rate
        self._block = round(self.rate * BLOCK_S)
        self._taps = o.taps_ms // 10
        self._row_index: dict[int, np.ndarray] = {}
        self.model = EchoPowerModel(self._taps, o.history_ms // 10, o.initial_coupling_db)
        self.scatter_db = 0.0  # how far echo-only frames rise above the fitted estimate
        self._ratios: deque[float] = deque(maxlen=o.history_ms // 20)
        self._floor = 10 ** (o.floor_dbfs / 10)
        self._warmup_s = o.warmup_ms / 1000
        self._hold_until = -math.inf
        self._frames: deque[GateFrame] = deque(maxlen=200)  # 4 s of 20 ms frames: covers any trigger
        self.refused: deque[int] = deque(maxlen=64)  # turn ids of refused barge-ins, newest last
        self.suppressed = 0  # frames muted so far

    def observe(self, frame: AudioFrame) -> GateFrame:
        """Judge one mic frame (mono int16 at the reference rate) and update the echo model."""
        x = check_mic_frame(frame, self.rate)
        t, dur = frame.capture_time, len(x) / self.rate
        mic = _block_powers(x, self._block)
        rows = self._reference_rows(t, len(mic))
        mic_db = _db(float(mic.mean()))
        if float(rows.max()) < self._floor:
            verdict = GateFrame(t, dur, mic_db, -math.inf, True)
        else:
            echo_db = _db(float(self.model.estimate(rows).mean()))
            ratio = mic_db - echo_db
            user = ratio > self.scatter_db + self.options.margin_db
            verdict = GateFrame(t, dur, mic_db, echo_db + self.scatter_db, user)
            self._learn(rows, mic, ratio, user, dur)
        self._frames.append(verdict)
        return verdict

    def process(self, frame: AudioFrame) -> AudioFrame:
        """Observe the frame; return it, or a muted copy when ``suppress`` says so."""
        verdict = self.observe(frame)
        mode = self.options.suppress
        if verdict.user and verdict.playing:
            self._hold_until = verdict.time + verdict.duration + self.options.hold_ms / 1000
        if mode == "off" or not verdict.playing:
            return frame
        if mode == "echo" and (verdict.user or verdict.time < self._hold_until - 1e-9):
            return frame
        self.suppressed += 1
        silent = np.zeros(len(frame.samples), dtype=np.int16)
        return AudioFrame(silent, frame.sample_rate, frame.capture_time, frame.seq)

    def allow(self, started: SpeechStarted) -> bool:
        """Barge-in predicate: True unless the speech that triggered the VAD is explained by echo."""
        window = [f for f in self._frames if started.speech_time - 1e-6 <= f.time < started.time]
        if not any(f.playing for f in window):
            return True  # nothing was playing (or the gate never saw these frames)
        user_s = sum(f.duration for f in window if f.user)
        if user_s * 1000 + 1e-6 >= self.options.min_user_ms:
            return True
        self.refused.append(started.turn_id)
        return False

    def explain(self, started: SpeechStarted) -> str:
        """What :meth:`allow` saw, for logs: user-loud time, frames, the loudest mic-over-echo."""
        window = [f for f in self._frames if started.speech_time - 1e-6 <= f.time < started.time]
        playing = [f for f in window if f.playing]
        if not playing:
            return f"nothing playing ({len(window)} frames)"
        user_ms = 1000 * sum(f.duration for f in window if f.user)
        over = max(f.mic_db - f.echo_db for f in playing)
        coupling = "prior" if self.coupling_db is None else f"{self.coupling_db:.1f} dB"
        return (
            f"{user_ms:.0f} ms louder than the echo in {len(window)} frames (max {over:+.1f} dB over "
            f"the estimate, scatter {self.scatter_db:.1f} dB, coupling {coupling})"
        )

    def reads_until(self, capture_time: float, duration: float) -> float:
        """The latest reference time judging a mic frame at ``capture_time`` reads."""
        return capture_time + duration + self.options.lead_ms / 1000 - self._shift_blocks * BLOCK_S

    def _covers(self, delay_s: float) -> bool:
        """Whether the taps (as shifted now) see an echo ``delay_s`` after the reported play time,
        with 20 ms to spare at either end. Only then is the alignment left alone: a wrong estimate
        (a repeated reply correlating with itself) must not move a gate that works."""
        early = self._shift_blocks * BLOCK_S - self.options.lead_ms / 1000  # earliest echo the taps see
        late = early + (self._taps - 1) * BLOCK_S
        return early + 0.02 <= delay_s <= late - 0.02

    @property
    def coupling_db(self) -> float | None:
        """Total echo gain of the fitted path in dB (None before the first fit)."""
        taps = self.model.taps
        return None if taps is None else _db(float(taps.sum()))

    # -- internals -----------------------------------------------------------------------------
    def _reference_rows(self, t: float, blocks: int) -> np.ndarray:
        """Per mic block: reference block powers from ``lead_ms`` after it backwards (blocks × taps)."""
        taps, b = self._taps, self._block
        measured = self.delay.delay_s if self.delay is not None else None
        if measured is not None and not self._covers(measured):  # the echo is past the taps: follow it
            shift = round(measured / BLOCK_S)
            if shift != self._shift_blocks:
                self.model.shift(shift - self._shift_blocks)
                self._ratios.clear()
                self._shift_blocks = shift
        start = t + self.options.lead_ms / 1000 - (taps - 1 + self._shift_blocks) * BLOCK_S
        powers = _block_powers(self.reference.read(start, (taps - 1 + blocks) * b), b)
        index = self._row_index.get(blocks)
        if index is None:  # row j, tap k -> block (taps - 1) + j - k: newest first
            index = self._row_index[blocks] = (taps - 1) + np.arange(blocks)[:, None] - np.arange(taps)
        return powers[index]

    def _learn(self, rows: np.ndarray, mic: np.ndarray, ratio: float, user: bool, dur: float) -> None:
        if self._warmup_s > 0:
            self._warmup_s -= dur
        elif user:
            self._ratios.append(self.scatter_db + 1.0)  # may be the user: a real rise shows slowly
            return
        fits = self.model.fits
        self.model.add(rows, mic)
        if self.model.fits != fits:  # ratios to the old estimate are meaningless now
            self._ratios.clear()
            self._ratios.extend(self.model.training_ratios(len(mic)))
        else:
            self._ratios.append(ratio)
        ratios = np.fromiter(self._ratios, float, len(self._ratios))
        k = round(self.options.percentile / 100 * (len(ratios) - 1))
        scatter = float(np.partition(ratios, k)[k])
        # During warm-up a few frames (echo still in flight, a pause) can say anything: stay at
        # least as cautious as the prior until it is over.
        self.scatter_db = max(scatter, 0.0) if self._warmup_s > 0 else scatter
