"""Per-frame speech/non-speech decisions: the WebRTC GMM detector, or anything with ``is_speech``."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import webrtcvad

from ..frames import INPUT_RATE

#: Sample rates the WebRTC VAD accepts.
VAD_RATES = (8000, 16000, 32000, 48000)


class WebRtcVad:
    """The WebRTC GMM voice detector; ``aggressiveness`` 0 (permissive) .. 3 (strict)."""

    def __init__(self, aggressiveness: int = 3) -> None:
        if type(aggressiveness) is not int or aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness!r}")
        self.aggressiveness = int(aggressiveness)
        self._vad = webrtcvad.Vad(self.aggressiveness)

    def reset(self) -> None:
        """Forget the adapted noise model (a new stream may have a different noise floor)."""
        self._vad = webrtcvad.Vad(self.aggressiveness)

    def is_speech(self, samples: np.ndarray, sample_rate: int = INPUT_RATE) -> bool:
        """Whether one 10, 20 or 30 ms frame of int16 mono audio is speech."""
        if sample_rate not in VAD_RATES:
            raise ValueError(f"sample_rate must be one of {VAD_RATES}, got {sample_rate}")
        if not isinstance(samples, np.ndarray) or samples.dtype != np.int16 or samples.ndim != 1:
            raise ValueError("samples must be a 1-D int16 numpy array (mono PCM)")
        n = samples.shape[0] * 100
        if n != sample_rate and n != 2 * sample_rate and n != 3 * sample_rate:
            raise ValueError(
                f"frame of {samples.shape[0]} samples at {sample_rate} Hz is not 10, 20 or 30 ms"
            )
        return self._vad.is_speech(np.ascontiguousarray(samples).tobytes(), sample_rate)


class VoiceDetector(Protocol):
    """Anything that classifies one frame (WebRtcVad, or a replay/fake in tests and benchmarks)."""

    def is_speech(self, samples: np.ndarray, sample_rate: int = INPUT_RATE) -> bool: ...
