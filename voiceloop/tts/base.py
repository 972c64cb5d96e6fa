"""The streaming TTS engine interface.

A :class:`TtsEngine` is a loaded model shared by many pipelines; each pipeline opens a
:class:`TtsSession` (voice and any cross-piece state). Compute runs off the event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TtsCapabilities:
    """What an engine can do, for callers (the CLI, the page) that offer options per engine."""

    streaming: bool = True  # audio arrives while a piece is still being synthesized
    voices: bool = False  # session(voice=...) selects among several voices (:meth:`TtsEngine.voices`)
    seed_voices: bool = False  # session(voice="seed:N") gives a reproducible voice per integer N


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
    """A loaded synthesis model; ``session()`` is cheap and may be called per pipeline.

    Everything the loop needs is declared here, so it never looks past this class: the output
    ``sample_rate``, the compute ``device``, ``capabilities``, ``warm_up()`` before the first turn
    and ``close()`` at the end. An engine is registered by name in the ``voiceloop.tts_engines``
    entry-point group (:mod:`voiceloop.engines`).
    """

    sample_rate: int = 24_000

    @abstractmethod
    def session(self, voice: str | None = None) -> TtsSession:
        """A new independent synthesis stream, optionally with a voice."""

    @property
    def device(self) -> str:
        """Where the engine computes ("cpu", "cuda:0", ...): the loop shares the cores on a CPU."""
        return "cpu"

    @property
    def capabilities(self) -> TtsCapabilities:
        return TtsCapabilities(voices=bool(self.voices()), seed_voices=self.seed_voices)

    def voices(self) -> list[str]:
        """Voices a session may ask for by name: built-in ones and saved ones (none by default)."""
        return self.voice_names()

    def voice_names(self) -> list[str]:
        """Saved voices a session may ask for by name (``session(voice=NAME)``); none by default."""
        return []

    @property
    def seed_voices(self) -> bool:
        """Whether ``session(voice="seed:N")`` gives a reproducible voice per integer N."""
        return False

    def check_voice(self, voice: str) -> None:
        """Raise (a UserError naming what is wrong) unless ``session(voice=voice)`` would work; the
        loop calls it at load time, so a bad ``--voice`` fails before the first reply, not at it."""
        self.session(voice)

    def warm_up(self) -> None:
        """Pay first-call costs now (blocking), not during the first reply."""

    @property
    def lanes(self) -> list[Any]:
        """The :class:`~voiceloop.compute.ComputeLane` threads it computes on (none: off-process or
        trivial work); on a CPU the loop has every engine's lanes take turns (``share_cores``)."""
        return []

    def close(self) -> None:
        """Release the engine's threads and processes; no sessions after this."""
