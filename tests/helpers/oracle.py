"""Checking the bot by ear: the bundled tiny ASR was trained on espeak-ng Mandarin, so what the bot
said with ``--tts espeak`` can be transcribed back and compared with the handler's sentence."""

from __future__ import annotations

import re

import numpy as np
import soxr

from voiceloop.asr.corpus import char_error_rate


def speech_only(audio: np.ndarray, rate: int, threshold: int = 100, pad_s: float = 0.3) -> np.ndarray:
    """``audio`` (int16) from its first to its last sample above ``threshold``, with ``pad_s`` around."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > threshold)
    if not len(loud):
        return audio[:0]
    pad = round(pad_s * rate)
    return audio[max(0, loud[0] - pad) : loud[-1] + pad]


def at_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    """int16 (or float in [-1, 1)) audio at ``rate`` as int16 at 16 kHz, what the ASR takes."""
    x = audio.astype(np.float32) / 32768.0 if audio.dtype == np.int16 else audio.astype(np.float32)
    y = soxr.resample(x, rate, 16_000)
    return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)


def cer_against(reply: str, said: str) -> float:
    """Character error rate of ``said`` against the handler's ``reply`` (punctuation and spaces out)."""
    return char_error_rate([re.sub(r"[，。！？、\s]", "", reply)], [said.replace(" ", "")])
