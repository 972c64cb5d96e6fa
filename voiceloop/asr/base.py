"""The streaming ASR engine interface.

An :class:`AsrEngine` is a loaded model, shared by any number of pipelines; each pipeline opens
its own :class:`AsrSession` (all per-stream state lives there). Heavy compute must run off the
event loop — engines use a :class:`voiceloop.compute.ComputeLane`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable

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


class AsrEngine(ABC):
    """A loaded recognition model; ``session()`` is cheap and may be called per pipeline."""

    sample_rate: int = 16_000

    @abstractmethod
    def session(self) -> AsrSession:
        """A new independent stream on this model."""
