"""The TTS stage: reply text pieces in, synthesized audio chunks out (interruptible)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing

import numpy as np

from ..clock import now
from ..frames import AudioChunk, Frame, Interruption, ReplyText
from ..pipeline import Stage
from .base import SynthesisSettings, TtsEngine, TtsSession

_EMPTY = np.zeros(0, dtype=np.int16)


class TtsStage(Stage):
    """Synthesizes each :class:`ReplyText` piece; a barge-in cancels between chunks."""

    name = "tts"
    interruptible = True

    def __init__(self, engine: TtsEngine, voice: str | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.voice = voice
        self.session: TtsSession | None = None
        self._retired: list[TtsSession] = []  # replaced by a voice change; closed once idle
        self.settings = SynthesisSettings()
        #: told (turn id, the piece's text, the text as spoken) when the engine rewrites a piece
        self.on_rewrite: Callable[[int, str, str], None] | None = None

    async def start(self) -> None:
        self.session = self._open(self.voice)

    def _open(self, voice: str | None) -> TtsSession:
        session = self.engine.session(voice)
        if self.settings.given():
            session.configure(self.settings)
        return session

    def set_settings(self, settings: SynthesisSettings) -> None:
        """Synthesize with ``settings`` from the next piece on; a knob the engine does not act on
        raises ValueError and nothing changes."""
        unsupported = settings.given() - self.engine.capabilities.settings
        if unsupported:
            raise ValueError(f"this TTS engine has no setting {', '.join(sorted(unsupported))}")
        if self.session is not None:
            self.session.configure(settings)
        self.settings = settings

    def set_voice(self, voice: str | None) -> None:
        """Speak with ``voice`` from the next piece on (a piece being spoken finishes in the old
        one). The engine checks the voice now: a bad one raises and nothing changes."""
        if self.session is not None:
            replacement = self._open(voice)
            self._retired.append(self.session)
            self.session = replacement
        self.voice = voice

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for session in retired:
            await session.aclose()

    async def process(self, frame: Frame) -> None:
        if self._retired:
            await self._close_retired()
        if not isinstance(frame, ReplyText):
            await self.forward(frame)
            return
        session = self.session
        assert session is not None
        rate = self.engine.sample_rate
        listener = self.on_rewrite
        session.on_rewrite = None if listener is None else _bind(listener, frame.turn_id, frame.text)
        try:
            async with aclosing(session.synthesize(frame.text)) as chunks:
                async for samples in chunks:
                    if len(samples) == 0:
                        continue
                    self.metrics.stamp(frame.turn_id, "tts_first_audio", now())
                    await self.emit(AudioChunk(frame.turn_id, samples, rate, frame.text))
        finally:  # the engine session must not keep this stage's listener (and its page) alive
            session.on_rewrite = None
        # A zero-length marker closes the piece, so chunks never wait for their successor.
        await self.emit(AudioChunk(frame.turn_id, _EMPTY, rate, frame.text, piece_end=True))

    def on_interrupt(self, interruption: Interruption) -> None:
        if self.session is not None:
            self.session.cancel()

    async def stop(self) -> None:
        await self._close_retired()
        if self.session is not None:
            await self.session.aclose()


def _bind(listener: Callable[[int, str, str], None], turn_id: int, text: str) -> Callable[[str], None]:
    return lambda spoken: listener(turn_id, text, spoken)
