"""Audio files: a source that plays a WAV/FLAC file into the pipeline, and a recording sink.

``FileSource(pace=True)`` delivers 20 ms frames on the clock's schedule, like a microphone (and,
like a microphone, into a drop-oldest queue). Run it on a ``fast`` clock
(:func:`voiceloop.clock.run`) to go as fast as the compute allows while keeping every latency
honest. ``pace=False`` pushes frames as fast as the consumers take them (backpressured).

``WavSink`` records the bot side time-aligned with the input: sample ``k`` of the recording is
what a speaker would have played at ``k / rate`` seconds after the pipeline started, silence
where the bot was silent, and a reply cut by a barge-in stops where it was cut.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import soundfile

from ..audio import InputAdapter, check_pcm, check_rate
from ..clock import now
from ..frames import FRAME_MS, AudioFrame, EndOfStream
from ..pipeline import Stage
from .output import PacedSink


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV/FLAC/OGG file as float32 ``(samples, channels)`` and its sample rate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"cannot decode {path} as audio: {exc}") from exc
    if data.size == 0:
        raise ValueError(f"audio file {path} contains no samples")
    return data, int(rate)


def read_canonical(path: str | Path) -> np.ndarray:
    """A whole file as canonical 16 kHz mono int16 (what the VAD and ASR take)."""
    data, rate = read_audio(path)
    adapter = InputAdapter(rate, data.shape[1])
    frames = adapter.push(data) + adapter.flush()
    return np.concatenate(frames) if frames else np.zeros(0, np.int16)


class FileSource(Stage):
    """Plays an audio file (or an array) into the pipeline as canonical 20 ms frames."""

    name = "file"

    def __init__(
        self,
        audio: str | Path | np.ndarray,
        *,
        sample_rate: int | None = None,
        pace: bool = True,
        tail_silence_s: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(audio, np.ndarray):
            if sample_rate is None:
                raise ValueError("sample_rate is required when the audio is an array")
            data, rate = check_pcm(audio), check_rate(sample_rate)
        else:
            data, rate = read_audio(audio)
        channels = 1 if data.ndim == 1 else data.shape[1]
        adapter = InputAdapter(rate, channels)
        self.frames = adapter.push(data) + adapter.flush()
        if tail_silence_s > 0:
            silence = np.zeros_like(self.frames[0]) if self.frames else np.zeros(320, np.int16)
            self.frames += [silence] * round(tail_silence_s * 1000 / FRAME_MS)
        self.pace = pace
        self.live = pace  # paced input behaves like a microphone: it never waits for consumers

    @property
    def duration(self) -> float:
        return len(self.frames) * FRAME_MS / 1000

    async def produce(self) -> None:
        step = FRAME_MS / 1000
        start = now()
        for seq, samples in enumerate(self.frames):
            if self.pace:  # like a microphone, a frame is delivered once its last sample is in
                captured = start + seq * step
                delay = captured + step - now()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.emit_nowait(AudioFrame(samples, capture_time=captured, seq=seq))
            else:
                await self.emit(AudioFrame(samples, capture_time=now(), seq=seq))
        await self.emit(EndOfStream())


class WavSink(PacedSink):
    """A simulated speaker that records what it plays, time-aligned, to a WAV file."""

    def __init__(self, path: str | Path, sample_rate: int = 24_000, *, buffer_s: float = 0.2) -> None:
        super().__init__(check_rate(sample_rate), buffer_s=buffer_s)
        self.path = Path(path)
        self._origin: float | None = None
        self._segments: list[tuple[int, np.ndarray]] = []  # (first sample index, samples)

    async def open(self) -> None:
        self._origin = now()
        self._segments = []

    def _index(self, t: float) -> int:
        assert self._origin is not None, "WavSink used before open()"
        return round((t - self._origin) * self.sample_rate)

    def _played(self, start: float, samples: np.ndarray) -> None:
        self._segments.append((self._index(start), samples))

    def _flushed(self, at: float) -> None:
        cut = self._index(at)
        kept = []
        for first, samples in self._segments:
            if first < cut:
                kept.append((first, samples[: cut - first]))
        self._segments = kept

    def recording(self, until: float | None = None) -> np.ndarray:
        """The recording so far (to ``until`` on the clock, default now) as int16."""
        end = max(
            [self._index(until if until is not None else now())]
            + [first + len(s) for first, s in self._segments]
        )
        out = np.zeros(max(0, end), dtype=np.int16)
        for first, samples in self._segments:
            out[first : first + len(samples)] = samples
        return out

    async def close(self) -> None:
        audio = self.recording()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(self.path), audio, self.sample_rate, subtype="PCM_16")
