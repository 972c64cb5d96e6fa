"""The streaming TTS engine interface.

A :class:`TtsEngine` is a loaded model shared by many pipelines; each pipeline opens a
:class:`TtsSession` (voice and any cross-piece state). Compute runs off the event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

import numpy as np


class TtsSession(ABC):
    """Text pieces in, int16 mono audio chunks (at the engine's rate) out."""

    @abstractmethod
    def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        """Yield audio for one speakable piece as it is generated.

        Closing the iterator early (barge-in) must stop generation before the next chunk.
        """

    def cancel(self) -> None:
        """Stop any generation in flight now (called on barge-in, from the event loop)."""

    async def aclose(self) -> None:
        """Release per-session resources."""


class TtsEngine(ABC):
    """A loaded synthesis model; ``session()`` is cheap and may be called per pipeline."""

    sample_rate: int = 24_000

    @abstractmethod
    def session(self, voice: str | None = None) -> TtsSession:
        """A new independent synthesis stream, optionally with a voice."""

    def voice_names(self) -> list[str]:
        """Saved voices a session may ask for by name (``session(voice=NAME)``); none by default."""
        return []

    @property
    def seed_voices(self) -> bool:
        """Whether ``session(voice="seed:N")`` gives a reproducible voice per integer N."""
        return False
