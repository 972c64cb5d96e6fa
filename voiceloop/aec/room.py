"""Synthetic echo paths: what a mic hears of the speaker, for tests, benchmarks and tuning.

A loudspeaker's sound reaches the mic late (device buffers + air), smeared (reflections) and
scaled; the mic adds its own noise and maybe the user. :class:`EchoPath` models exactly that,
so echo handling can be measured without devices and reproduced from a seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soxr

from ..audio import check_rate, float_to_int16, int16_to_float
from ..frames import FRAME_SAMPLES, INPUT_RATE, AudioFrame


@dataclass(frozen=True)
class EchoPath:
    """Speaker → mic: ``delay_ms`` late, convolved with an exponentially decaying impulse
    response (``decay_ms`` time constant, ``length_ms`` long: a direct path 6 dB over random
    reflections, unit energy, so ``gain_db`` is exact for white noise), scaled by ``gain_db``,
    optionally overdriven (``drive`` > 0: tanh soft clipping of the loudspeaker), plus white mic
    noise at ``noise_dbfs``."""

    delay_ms: float = 80.0
    gain_db: float = -6.0
    decay_ms: float = 15.0
    length_ms: float = 60.0
    noise_dbfs: float = -70.0
    drive: float = 0.0
    seed: int = 0

    def impulse_response(self, rate: int = INPUT_RATE) -> np.ndarray:
        """Unit-energy impulse response (without the delay)."""
        rng = np.random.default_rng(self.seed)
        n = max(1, round(self.length_ms * rate / 1000))
        ir = rng.standard_normal(n) * np.exp(-np.arange(n) / (self.decay_ms * rate / 1000))
        ir[0] = 2.0 * np.sqrt(np.sum(ir[1:] ** 2)) + 1.0  # direct path 6 dB over the reflections
        return ir / np.sqrt(np.sum(ir**2))

    def echo(self, played: np.ndarray, rate: int, *, out_rate: int = INPUT_RATE) -> np.ndarray:
        """The echo of ``played`` (int16 or float, mono, at ``rate``) at the mic, float in [-1, 1)
        scale at ``out_rate``, same duration; no noise."""
        x = int16_to_float(np.asarray(played)).astype(np.float64)
        if x.ndim != 1:
            raise ValueError(f"played audio must be mono 1-D, got shape {x.shape}")
        rate, out_rate = check_rate(rate), check_rate(out_rate)
        if rate != out_rate:
            x = soxr.resample(x, rate, out_rate)
        if self.drive > 0:
            x = np.tanh(self.drive * x) / self.drive
        y = np.convolve(x, self.impulse_response(out_rate))[: len(x)]
        d = round(self.delay_ms * out_rate / 1000)
        y = np.concatenate([np.zeros(d), y])[: len(x)]
        return y * 10 ** (self.gain_db / 20)

    def mic(
        self,
        played: np.ndarray,
        rate: int,
        near: np.ndarray | None = None,
        *,
        out_rate: int = INPUT_RATE,
    ) -> np.ndarray:
        """int16 mic signal at ``out_rate``: echo + noise (+ ``near``, int16 at ``out_rate``,
        starting at sample 0; padded or cut to the echo's length)."""
        y = self.echo(played, rate, out_rate=out_rate)
        rng = np.random.default_rng(self.seed + 1)
        y = y + rng.standard_normal(len(y)) * 10 ** (self.noise_dbfs / 20)
        if near is not None:
            v = int16_to_float(np.asarray(near)).astype(np.float64)[: len(y)]
            y[: len(v)] += v
        return float_to_int16(y)


def scale_to_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    """int16 copy of ``x`` with its mean power set to ``dbfs`` (active speech level for trimmed clips)."""
    v = np.asarray(x, dtype=np.float64)
    v = v * (10 ** (dbfs / 20) * 32768.0 / np.sqrt(np.mean(v**2) + 1e-12))
    return np.clip(np.round(v), -32768, 32767).astype(np.int16)


def run_frames(
    process: Callable[[AudioFrame], AudioFrame],
    mic: np.ndarray,
    *,
    start_time: float = 0.0,
    frame_samples: int = FRAME_SAMPLES,
    rate: int = INPUT_RATE,
    on_frame: Callable[[AudioFrame, AudioFrame], None] | None = None,
) -> np.ndarray:
    """Feed ``mic`` (int16) through ``process`` as consecutive frames captured from
    ``start_time`` on; returns the concatenated output. ``on_frame(input, output)`` sees each."""
    out = []
    for seq in range(len(mic) // frame_samples):
        chunk = mic[seq * frame_samples : (seq + 1) * frame_samples]
        frame = AudioFrame(chunk, rate, start_time + seq * frame_samples / rate, seq)
        result = process(frame)
        if on_frame is not None:
            on_frame(frame, result)
        out.append(result.samples)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)
