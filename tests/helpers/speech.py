"""Synthetic speech fixtures for tests and benchmarks (espeak-ng).

Why espeak: real speech (with real clause pauses and unvoiced consonants) exercises a VAD or an
ASR far better than tones, and espeak-ng is a small Debian package, so fixtures are generated
on the fly instead of shipping audio files. Clips are cached on disk keyed by their arguments
(``$VOICELOOP_SPEECH_CACHE`` or ``<tmp>/voiceloop-speech-cache``) so repeated runs are fast.
Tests that need speech are skipped with a clear reason when espeak-ng is not installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RATE = 16_000
#: Energy threshold for "true" speech bounds: 10 ms frames within this many dB of the peak.
TRIM_DB = 40.0
_TRIM_FRAME = RATE // 100


def _cache_dir() -> Path:
    default = Path(tempfile.gettempdir()) / "voiceloop-speech-cache"
    path = Path(os.environ.get("VOICELOOP_SPEECH_CACHE") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_espeak() -> str:
    """Path of espeak-ng; skips the calling test (pytest.skip) when it is missing."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        import pytest

        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng) - speech fixtures unavailable")
    return exe


def espeak(text: str, voice: str = "cmn", speed: int = 175, pitch: int = 50) -> np.ndarray:
    """Synthesize ``text`` with espeak-ng; int16 mono at 16 kHz (espeak's 22050 Hz resampled).

    ``speed`` is words per minute (espeak's -s), ``pitch`` 0..99 (-p). The clip keeps espeak's
    own leading/trailing silence; use :func:`trim_bounds` for the speech bounds.
    """
    key = hashlib.sha1(repr((text, voice, int(speed), int(pitch), RATE)).encode()).hexdigest()[:20]
    path = _cache_dir() / f"espeak-{key}.wav"
    if path.exists():
        data, _ = sf.read(path, dtype="int16")
        return data
    exe = require_espeak()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "out.wav"
        cmd = [exe, "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "-w", str(raw), text]
        subprocess.run(cmd, check=True, capture_output=True)
        x, rate = sf.read(raw, dtype="float32")
    if x.ndim > 1:
        x = x.mean(axis=1)
    y = soxr.resample(x, rate, RATE) if rate != RATE else x
    out = np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)
    # Atomic write: parallel test workers may race on the same clip.
    fd, tmp_name = tempfile.mkstemp(suffix=".wav", dir=path.parent)
    os.close(fd)
    sf.write(tmp_name, out, RATE, subtype="PCM_16")
    os.replace(tmp_name, path)
    return out


def _frame_db(x: np.ndarray) -> np.ndarray:
    n = len(x) // _TRIM_FRAME
    frames = x[: n * _TRIM_FRAME].astype(np.float64).reshape(n, _TRIM_FRAME)
    rms = np.sqrt(np.mean(frames**2, axis=1)) + 1e-9
    return 20.0 * np.log10(rms / rms.max())


def trim_bounds(x: np.ndarray, rate: int = RATE, threshold_db: float = TRIM_DB) -> tuple[float, float]:
    """True speech bounds (seconds) of a *clean* clip: first/last 10 ms frame within
    ``threshold_db`` of the loudest frame. This is the ground truth VAD errors are measured
    against, so it must be computed before any noise is added."""
    if x.size < _TRIM_FRAME or not np.any(x):
        raise ValueError("clip is empty or silent")
    active = np.flatnonzero(_frame_db(x) > -threshold_db)
    step = _TRIM_FRAME / rate
    return float(active[0] * step), float((active[-1] + 1) * step)


def make_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise: "white", "pink" (1/f power) or "brown" (1/f^2 power, floored at 20 Hz
    so it does not degenerate into DC drift)."""
    if kind == "white":
        noise = rng.standard_normal(n)
    elif kind in ("pink", "brown"):
        size = 1 << max(n - 1, 1).bit_length()  # power of two: pocketfft is slow on large primes
        spec = np.fft.rfft(rng.standard_normal(size))
        freqs = np.maximum(np.fft.rfftfreq(size, 1.0 / RATE), 20.0)
        spec /= np.sqrt(freqs) if kind == "pink" else freqs
        spec[0] = 0.0
        noise = np.fft.irfft(spec, size)[:n]
    else:
        raise ValueError(f"unknown noise kind {kind!r} (white, pink, brown)")
    return noise / np.sqrt(np.mean(noise**2))


def mix_scene(
    clips: list[np.ndarray],
    gaps_s: float | list[float],
    noise: str | None = "white",
    snr_db: float = 20.0,
    seed: int = 0,
    level_dbfs: float | None = -20.0,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Place speech clips in silence, add noise; returns (int16 signal, true bounds in seconds).

    Each clip is trimmed to its :func:`trim_bounds` first, so the gaps are exact speech-free
    stretches and the returned bounds are exact. ``gaps_s`` is one gap for everywhere, or a list
    of silences before each clip plus the tail (``len(clips)`` items reuse the last as the tail).
    ``level_dbfs`` normalises each clip's RMS (None keeps espeak's level); ``snr_db`` is the
    mean speech power over the noise power (noise covers the whole signal, gaps included).
    """
    gaps = [float(gaps_s)] * (len(clips) + 1) if np.isscalar(gaps_s) else [float(g) for g in gaps_s]
    if len(gaps) == len(clips):
        gaps.append(gaps[-1] if gaps else 0.0)
    if len(gaps) != len(clips) + 1 or min(gaps, default=0.0) < 0:
        raise ValueError("gaps_s must be a non-negative number or a list of len(clips) or len(clips) + 1")
    pieces: list[np.ndarray] = []
    bounds: list[tuple[float, float]] = []
    pos = 0
    for gap, clip in zip(gaps, clips, strict=False):
        start, end = trim_bounds(clip)
        speech = clip[round(start * RATE) : round(end * RATE)].astype(np.float64)
        if level_dbfs is not None:
            speech *= 10 ** (level_dbfs / 20) * 32768.0 / np.sqrt(np.mean(speech**2))
        silence = round(gap * RATE)
        pieces += [np.zeros(silence), speech]
        bounds.append(((pos + silence) / RATE, (pos + silence + len(speech)) / RATE))
        pos += silence + len(speech)
    pieces.append(np.zeros(round(gaps[-1] * RATE)))
    signal = np.concatenate(pieces) if pieces else np.zeros(0)
    if noise is not None and signal.size:
        if clips:
            speech_power = np.mean(np.concatenate(pieces[1::2]) ** 2)
        else:  # noise only: SNR relative to speech at level_dbfs (-20 dBFS when None)
            speech_power = (10 ** ((level_dbfs if level_dbfs is not None else -20.0) / 20) * 32768.0) ** 2
        rng = np.random.default_rng(seed)
        signal = signal + make_noise(signal.size, noise, rng) * np.sqrt(speech_power / 10 ** (snr_db / 10))
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16), bounds
