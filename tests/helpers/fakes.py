"""Scripted engines and helpers for deterministic pipeline tests (tests only, never shipped).

Every delay is an ``asyncio.sleep`` so that, on the virtual clock, timeline durations equal the
scripted delays exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from voiceloop.asr import AsrEngine, AsrSession
from voiceloop.frames import FRAME_SAMPLES, FinalTranscript, Frame, PartialTranscript
from voiceloop.pipeline import Stage
from voiceloop.tts import TtsEngine, TtsSession


class ScriptedVoice:
    """A VAD decision by script: speech in the given stream-time intervals (seconds)."""

    def __init__(self, intervals: list[tuple[float, float]]) -> None:
        self.intervals = intervals
        self.position = 0.0

    def is_speech(self, samples: np.ndarray, sample_rate: int = 16_000) -> bool:
        t = self.position
        self.position += len(samples) / sample_rate
        return any(a <= t < b for a, b in self.intervals)


def frames_of(seconds: float) -> np.ndarray:
    """Input audio of the given length (content is irrelevant to scripted engines)."""
    n = round(seconds * 50) * FRAME_SAMPLES
    return (np.sin(np.arange(n) * 0.05) * 3000).astype(np.int16)


class FakeAsrSession(AsrSession):
    def __init__(self, engine: FakeAsr) -> None:
        self.engine = engine
        self.frames = 0

    async def accept(self, samples: np.ndarray) -> PartialTranscript | None:
        self.frames += 1
        if self.frames % self.engine.partial_every == 0:
            return PartialTranscript(text="…" * (self.frames // self.engine.partial_every))
        return None

    async def finalize(self) -> FinalTranscript:
        await asyncio.sleep(self.engine.final_delay)
        text = self.engine.texts.pop(0) if self.engine.texts else ""
        self.reset()
        return FinalTranscript(text=text)

    async def finalize_preview(self) -> FinalTranscript | None:  # type: ignore[override]
        """With ``preview=True``: like finalize (consumes one text), without ending the utterance."""
        if not self.engine.preview:
            return None
        await asyncio.sleep(self.engine.final_delay)
        return FinalTranscript(text=self.engine.texts.pop(0) if self.engine.texts else "")

    def reset(self) -> None:
        self.frames = 0


class FakeAsr(AsrEngine):
    """Partial every ``partial_every`` frames; finals from ``texts`` after ``final_delay``.

    ``preview``: finals at pause hints too (each final or preview takes the next text).
    """

    def __init__(
        self, texts: list[str], *, final_delay: float = 0.1, partial_every: int = 10, preview: bool = False
    ) -> None:
        self.preview = preview
        self.texts = list(texts)
        self.final_delay = final_delay
        self.partial_every = partial_every

    def session(self) -> AsrSession:
        return FakeAsrSession(self)


class FakeTtsSession(TtsSession):
    def __init__(self, engine: FakeTts, voice: str | None = None) -> None:
        self.engine = engine
        self.voice = voice
        self.cancelled = 0
        self.closed = False

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        engine = self.engine
        await asyncio.sleep(engine.first_delay)
        total = round(engine.seconds_per_char * len(text) * engine.sample_rate)
        step = round(engine.chunk_s * engine.sample_rate)
        for start in range(0, total, step):
            if start:
                await asyncio.sleep(engine.chunk_delay)
            engine.synthesized += min(step, total - start)
            yield np.full(min(step, total - start), 1000, dtype=np.int16)

    def cancel(self) -> None:
        self.cancelled += 1

    async def aclose(self) -> None:
        self.closed = True


class FakeTts(TtsEngine):
    """``seconds_per_char`` of audio per character, first chunk after ``first_delay``."""

    def __init__(
        self,
        *,
        sample_rate: int = 24_000,
        first_delay: float = 0.2,
        chunk_delay: float = 0.05,
        chunk_s: float = 0.1,
        seconds_per_char: float = 0.1,
        voices: list[str] | None = None,
        seeds: bool = True,
    ) -> None:
        self.sample_rate = sample_rate
        #: voices like ChatTTS offers them: saved names, and whether ``seed:N`` works
        self.names = list(voices or [])
        self.seeds = seeds
        self.first_delay = first_delay
        self.chunk_delay = chunk_delay
        self.chunk_s = chunk_s
        self.seconds_per_char = seconds_per_char
        self.synthesized = 0
        self.sessions: list[FakeTtsSession] = []

    def voice_names(self) -> list[str]:
        return list(self.names)

    @property
    def seed_voices(self) -> bool:
        return self.seeds

    def session(self, voice: str | None = None) -> TtsSession:
        session = FakeTtsSession(self, voice)
        self.sessions.append(session)
        return session


class Collect(Stage):
    """A last stage that keeps every frame it receives and records end of stream and stop."""

    name = "collect"

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self.ended = False
        self.stopped = False

    async def process(self, frame: Frame) -> None:
        self.frames.append(frame)

    async def finish(self) -> None:
        self.ended = True

    async def stop(self) -> None:
        self.stopped = True
