"""Where the echo really is: the delay between the reference's play times and its echo in the mic.

The canceller and the gate read the reference at each mic frame's capture time plus a fixed
lead. That is right only when the devices report play and capture times truthfully; through
ALSA → PulseAudio the reports were off by more than the canceller's ~150 ms window in some runs,
for the whole run, and the bot then heard itself. So the offset is measured, not assumed:
generalised cross-correlation with phase transform (GCC-PHAT) between the last
``window_ms`` of raw mic audio and the reference over every lag in ``[min_lag_ms, max_lag_ms]``.
PHAT whitens both spectra, so the peak is as sharp for speech as for noise and does not move
with the room's colouring; an estimate counts only when its peak stands ``min_confidence``
standard deviations over the rest of the correlation, and the delay moves only when ``settle``
consecutive estimates agree within ``tolerance_ms`` (double talk and pauses give scattered peaks;
moving a known delay takes ``settle_move``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields

import numpy as np

from .reference import EchoReference

#: raw mic kept for :meth:`EchoDelayEstimator.echo_share` (a barge-in's trigger lies well within)
RAW_HISTORY_S = 3.0


@dataclass
class DelayOptions:
    """How the echo delay is tracked (all times in ms; lags: + means echo after its play time).

    Defaults: a 600 ms window every 120 ms finds the echo within the first syllables of the first
    reply (tests/test_echo_delay.py) for three 64k-point FFTs per estimate. Lags from -400 ms (play
    times reported late) to +600 ms (buffering the reports missed, plus the acoustic path). Three
    agreeing estimates, because synthetic voices repeat whole waveform segments: espeak-ng speech
    gave 2-3 confident peaks in a row at a wrong lag when the true one lay outside the range.
    """

    window_ms: int = 600
    every_ms: int = 120
    min_lag_ms: int = -400
    max_lag_ms: int = 600
    #: peak height over the correlation's mean, in standard deviations (noise alone: about 4.5)
    min_confidence: float = 9.0
    #: consecutive confident estimates that must agree before the delay is first set ...
    settle: int = 3
    #: ... and before a known delay moves: a reply that repeats an earlier one (same clip, or a
    #: TTS saying the same words the same way) correlates with its own past at a wrong lag for
    #: up to about half a second around the reply boundary (several agreeing estimates in a row)
    settle_move: int = 8
    tolerance_ms: float = 8.0
    #: reference or mic quieter than this (mean over the window, dBFS) gives no estimate
    floor_dbfs: float = -55.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        if self.window_ms < 100 or self.every_ms < 10:
            raise ValueError("need window_ms >= 100 and every_ms >= 10")
        if self.min_lag_ms >= self.max_lag_ms:
            raise ValueError("min_lag_ms must be below max_lag_ms")
        if not 1 <= self.settle <= self.settle_move or self.tolerance_ms <= 0 or self.min_confidence <= 0:
            raise ValueError("need 1 <= settle <= settle_move, tolerance_ms > 0 and min_confidence > 0")


class EchoDelayEstimator:
    """Tracks how late the echo of played audio reaches the mic, on the pipeline clock.

    Feed every raw (not yet cancelled) mic frame to :meth:`observe`; :attr:`delay_s` is then the
    measured offset (echo capture time minus reported play time), or None until one is known.
    """

    def __init__(self, reference: EchoReference, options: DelayOptions | None = None) -> None:
        self.reference = reference
        o = self.options = options if options is not None else DelayOptions()
        self.rate = reference.rate
        self._window = round(o.window_ms * self.rate / 1000)
        self._every = round(o.every_ms * self.rate / 1000)
        self._lo = round(o.min_lag_ms * self.rate / 1000)
        self._hi = round(o.max_lag_ms * self.rate / 1000)
        span = self._window + (self._hi - self._lo)
        self._fft = 1 << (span + self._window - 1).bit_length()
        freqs = np.fft.rfftfreq(self._fft, 1 / self.rate)
        self._band = (freqs >= 100.0) & (freqs <= 0.45 * self.rate)  # no hum, no resampler edge
        self._floor = 10 ** (o.floor_dbfs / 10) * 32768.0**2
        # the newest mic samples end at _mic_end; room for a second window, so a frame is one copy
        # (the window moves back to the front once per window, not once per frame)
        self._mic = np.zeros(2 * self._window, dtype=np.float64)
        self._mic_end = 0
        self._filled = 0
        self._end_time: float | None = None  # capture time just past the newest mic sample
        self._due = self._every
        self._recent: deque[float] = deque(maxlen=o.settle_move)
        self.delay_s: float | None = None
        self.estimates = 0  # confident estimates so far
        self.moves = 0  # times the delay was set or moved
        #: (window end capture time, lag) of the latest confident estimates, settled or not
        self.found: deque[tuple[float, float]] = deque(maxlen=64)
        #: raw mic frames (capture time, samples) of the last RAW_HISTORY_S, for echo_share: the
        #: capture side may run ahead of the stage that asks (a VAD deciding on older frames)
        self._raw: deque[tuple[float, np.ndarray]] = deque()
        self.confidence = 0.0  # of the latest estimate

    def observe(self, samples: np.ndarray, capture_time: float) -> None:
        """Add mic samples (mono int16 at the reference rate) captured from ``capture_time``."""
        n = len(samples)
        if self._end_time is None or abs(capture_time - self._end_time) > 0.01:
            self._filled = 0  # a gap in the capture (or the first frame): start the window afresh
            self._raw.clear()
        self._raw.append((capture_time, np.array(samples, dtype=np.float64)))
        while self._raw and self._raw[0][0] < capture_time - RAW_HISTORY_S:
            self._raw.popleft()
        self._end_time = capture_time + n / self.rate
        keep = min(n, self._window)
        if self._mic_end + keep > len(self._mic):
            tail = self._window - keep
            self._mic[:tail] = self._mic[self._mic_end - tail : self._mic_end]
            self._mic_end = tail
        self._mic[self._mic_end : self._mic_end + keep] = samples[-keep:]
        self._mic_end += keep
        self._filled = min(self._window, self._filled + n)
        self._due -= n
        if self._due <= 0:
            self._due = self._every
            if self._filled == self._window:
                self._estimate()

    def _estimate(self) -> None:
        assert self._end_time is not None
        rate, window = self.rate, self._window
        start = self._end_time - window / rate
        # mic sample i (time start + i/rate) echoes reference sample i + D, D = hi - lag (samples)
        ref = self.reference.read(start - self._hi / rate, window + self._hi - self._lo).astype(np.float64)
        mic = self._mic[self._mic_end - window : self._mic_end]
        if min(float(np.mean(mic * mic)), float(np.mean(ref * ref))) < self._floor:
            return
        cross = np.conj(np.fft.rfft(mic, self._fft)) * np.fft.rfft(ref, self._fft)
        cross[~self._band] = 0.0
        cross /= np.abs(cross) + 1e-12
        corr = np.fft.irfft(cross, self._fft)[: self._hi - self._lo + 1]
        peak = int(np.argmax(corr))
        std = float(corr.std())
        self.confidence = 0.0 if std == 0.0 else (float(corr[peak]) - float(corr.mean())) / std
        if self.confidence < self.options.min_confidence:
            return
        self.estimates += 1
        self._recent.append((self._hi - peak) / rate)
        self.found.append((self._end_time, (self._hi - peak) / rate))
        tolerance = self.options.tolerance_ms / 1000
        need = self.options.settle if self.delay_s is None else self.options.settle_move
        recent = list(self._recent)[-need:]
        if len(recent) < need or max(recent) - min(recent) > tolerance:
            return
        value = float(np.median(recent))
        if self.delay_s is None or abs(value - self.delay_s) > tolerance:
            self.delay_s = value
            self.moves += 1

    def echo_share(self, start: float, end: float) -> tuple[float, float] | None:
        """(lag_s, share): the delayed copy of the reference that best explains the raw mic over
        ``[start, end)`` (whole frames of the last RAW_HISTORY_S), and the fraction of the
        mic's energy it explains (plain normalised cross-correlation squared, over the lag range).

        None when there is too little mic audio or no playback in reach. Unlike the PHAT peak,
        the share says whether the echo *dominates* the mic: a user talking over the bot keeps
        it low, and the bot's own voice alone keeps it high, whatever the canceller makes of it.
        """
        parts = [(t, x) for t, x in self._raw if t >= start - 1e-6 and t + len(x) / self.rate <= end + 1e-6]
        if not parts or sum(len(x) for _, x in parts) < round(0.1 * self.rate):
            return None
        rate, first = self.rate, parts[0][0]
        mic = np.concatenate([x for _, x in parts])
        n = len(mic)
        lags = self._hi - self._lo + 1
        ref = self.reference.read(first - self._hi / rate, n + lags - 1).astype(np.float64)
        # einsum, not `@`: a BLAS dot wakes BLAS's thread pool, which then spins on the other core
        mic_energy = float(np.einsum("i,i", mic, mic))
        if min(mic_energy / n, float(np.einsum("i,i", ref, ref)) / len(ref)) < self._floor:
            return None
        size = 1 << (len(ref) + n - 1).bit_length()
        cross = np.fft.irfft(np.conj(np.fft.rfft(mic, size)) * np.fft.rfft(ref, size), size)[:lags]
        running = np.concatenate([[0.0], np.cumsum(ref * ref)])
        ref_energy = running[n : n + lags] - running[:lags]
        share = cross * cross / (mic_energy * ref_energy + 1e-9)
        best = int(np.argmax(share))
        return (self._hi - best) / rate, float(share[best])

    def reset(self) -> None:
        """Forget the measured delay (a new device or session)."""
        self._filled = self._mic_end = 0
        self._end_time = None
        self._recent.clear()
        self.found.clear()
        self._raw.clear()
        self.delay_s = None
