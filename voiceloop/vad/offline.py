"""Offline segmentation: the live Endpointer (and turn model checks) over a whole recording."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..frames import FRAME_MS, FRAME_SAMPLES, INPUT_RATE, AudioFrame, Frame, SpeechEnded, SpeechStarted
from .endpointer import Endpointer
from .options import VadOptions
from .smart_turn import TurnModel, TurnOptions
from .turn_check import TurnCheck


@dataclass(frozen=True, slots=True)
class Segment:
    """One utterance in stream-time seconds: first voiced frame start .. last voiced frame end.

    ``turn_probability``: a turn model's P(complete) at the utterance's last check (None: not asked);
    ``decided``: when the end was declared (the live loop would start answering then).
    """

    start: float
    end: float
    discarded: bool = False
    reason: str = "silence"
    turn_probability: float | None = None
    decided: float | None = None


def detect_segments(
    samples: np.ndarray,
    options: VadOptions | None = None,
    *,
    turn_model: TurnModel | None = None,
    turn: TurnOptions | None = None,
) -> list[Segment]:
    """Offline segmentation of 16 kHz mono int16 audio by running the Endpointer over 20 ms
    frames (the tail is zero-padded), so offline results match the live pipeline exactly —
    with a turn model too (asked at the same frames as :class:`VadStage` asks it)."""
    if not isinstance(samples, np.ndarray) or samples.dtype != np.int16 or samples.ndim != 1:
        raise ValueError("samples must be a 1-D int16 numpy array at 16 kHz")
    n = -(-len(samples) // FRAME_SAMPLES)
    padded = np.zeros(n * FRAME_SAMPLES, dtype=np.int16)
    padded[: len(samples)] = samples
    endpointer = Endpointer(options)
    end_silence_ms = endpointer.options.end_silence_ms
    check = TurnCheck(turn_model, turn, end_silence_ms) if turn_model is not None else None
    events: list[Frame] = []
    verdicts: dict[int, float] = {}
    for seq in range(n):
        chunk = padded[seq * FRAME_SAMPLES : (seq + 1) * FRAME_SAMPLES]
        frame = AudioFrame(chunk, INPUT_RATE, seq * FRAME_MS / 1000, seq)
        out = endpointer.process(frame)
        events += out
        if check is None:
            continue
        for item in out:
            check.feed(item)
        if endpointer.quiet_frames == check.frames:
            turn_id, probability = endpointer.turn_id, float(check.model.probability(check.audio()))
            verdicts[turn_id] = probability
            events += check.apply(endpointer, probability, (seq + 1) * FRAME_MS / 1000)
    events += endpointer.finish(n * FRAME_MS / 1000)
    return segments_from_events(events, verdicts)


def segments_from_events(events: list[Frame], verdicts: dict[int, float] | None = None) -> list[Segment]:
    """Pair SpeechStarted/SpeechEnded events into Segments (other frames are ignored);
    ``verdicts``: a turn model's last P(complete) per turn id."""
    segments: list[Segment] = []
    start: float | None = None
    verdicts = verdicts or {}
    for ev in events:
        if isinstance(ev, SpeechStarted):
            start = ev.stream_start
        elif isinstance(ev, SpeechEnded) and start is not None:
            probability = verdicts.get(ev.turn_id)
            segments.append(Segment(start, ev.stream_end, ev.discarded, ev.reason, probability, ev.time))
            start = None
    return segments
