"""The streaming ASR engine interface.

An :class:`AsrEngine` is a loaded model, shared by any number of pipelines; each pipeline opens
its own :class:`AsrSession` (all per-stream state lives there). Heavy compute must run off the
event loop — engines use a :class:`voiceloop.compute.ComputeLane`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..frames import FinalTranscript, PartialTranscript

#: The default checkpoint: XLSR-53 large fine-tuned on Mandarin (Common Voice zh-CN, CER 19 %).
DEFAULT_MODEL = "jonatasgrosman/wav2vec2-large-xlsr-53-chinese-zh-cn"


def normalize_audio(audio: np.ndarray, enabled: bool = True) -> np.ndarray:
    """Zero-mean unit-variance like ``Wav2Vec2FeatureExtractor`` (shared by every backend)."""
    samples = np.asarray(audio, dtype=np.float32)
    if not enabled or samples.size == 0:
        return samples
    wide = samples.astype(np.float64)
    return ((wide - wide.mean()) / np.sqrt(wide.var() + 1e-7)).astype(np.float32)


def conv_frames(n_samples: int, receptive_field: int, stride: int) -> int:
    """Frames an unpadded conv stack yields for ``n_samples``."""
    return 0 if n_samples < receptive_field else (n_samples - receptive_field) // stride + 1


class AsrSession(ABC):
    """Per-stream recognition state for one utterance at a time.

    The stage calls :meth:`reset` at speech start, :meth:`accept` for every 20 ms int16 16 kHz
    frame of the utterance, and :meth:`finalize` at speech end. Transcript times are stream-time
    seconds; the stage fills in turn ids.
    """

    @abstractmethod
    async def accept(self, samples: np.ndarray) -> PartialTranscript | None:
        """Feed one frame; return a new partial transcript when the hypothesis changed."""

    @abstractmethod
    async def finalize(self) -> FinalTranscript:
        """End of utterance: decode what is left and return the final transcript, then reset."""

    def finalize_preview(self) -> Awaitable[FinalTranscript | None]:
        """The final transcript of the audio so far, without ending the utterance (None: unsupported).

        Called on a SpeechPaused hint, so the final is ready when the end of speech is declared.
        Implementations capture the stream state before returning: the stream goes on meanwhile.
        """
        return _unsupported()

    @abstractmethod
    def reset(self) -> None:
        """Forget the current utterance (also used for discarded, too-short speech)."""

    async def aclose(self) -> None:
        """Release per-session resources."""


async def _unsupported() -> None:
    return None


@dataclass(frozen=True)
class AsrCapabilities:
    """What an engine can do, for the stage and the CLI."""

    streaming_partials: bool = True  # PartialTranscripts while the user speaks
    preview_final: bool = False  # AsrSession.finalize_preview works (preemptive replies, turn checks)


class AsrEngine(ABC):
    """A loaded recognition model; ``session()`` is cheap and may be called per pipeline.

    Everything the loop needs is declared here: the input ``sample_rate``, the compute ``device``,
    ``capabilities``, ``warm_up()`` before the first turn and ``close()`` at the end. An engine is
    registered by name in the ``voiceloop.asr_engines`` entry-point group (:mod:`voiceloop.engines`).
    """

    sample_rate: int = 16_000

    @abstractmethod
    def session(self) -> AsrSession:
        """A new independent stream on this model."""

    @property
    def device(self) -> str:
        """Where the engine computes ("cpu", "cuda:0", ...): the loop shares the cores on a CPU."""
        return "cpu"

    @property
    def capabilities(self) -> AsrCapabilities:
        return AsrCapabilities()

    def warm_up(self) -> None:
        """Pay first-inference costs now (blocking), not during the first turn (it would drop audio)."""

    @property
    def lanes(self) -> list[Any]:
        """The :class:`~voiceloop.compute.ComputeLane` threads it computes on (none: off-process or
        trivial work); on a CPU the loop has every engine's lanes take turns (``share_cores``)."""
        return []

    def close(self) -> None:
        """Release the engine's threads; no sessions after this."""
