"""A whole recording through a streaming ASR session: the words of a voice sample (voice cloning's
transcript, from the library, the CLI and the page's recordings)."""

from __future__ import annotations

import numpy as np

from ..audio import float_to_int16
from .base import AsrEngine


async def transcribe_recording(asr: AsrEngine, samples: np.ndarray, rate: int) -> str:
    """The final text of float ``samples`` at ``rate``: resampled to the engine's rate and fed in the
    ASR stage's 20 ms frames, so it hears exactly what a live turn would."""
    import soxr

    if rate != asr.sample_rate:
        samples = soxr.resample(samples, rate, asr.sample_rate)
    frame = asr.sample_rate // 50
    pcm = float_to_int16(np.pad(samples, (0, -len(samples) % frame)))
    session = asr.session()
    try:
        session.reset()
        for start in range(0, len(pcm), frame):
            await session.accept(pcm[start : start + frame])
        return (await session.finalize()).text
    finally:
        await session.aclose()
