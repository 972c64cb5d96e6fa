"""Voice activity detection, endpointing and the end-of-turn check.

Two layers, because per-frame speech/non-speech decisions are noisy and an agent needs
*utterances*: :class:`WebRtcVad` classifies one frame (a few µs), :class:`Endpointer` turns the
decisions into SpeechStarted / audio / SpeechEnded with a start trigger, a hangover and a
pre-roll. The Endpointer is a pure synchronous state machine so it is trivially testable and
the pipeline stage around it stays thin.

Silence alone cannot tell a clause pause from the end of a turn, so the Endpointer waits out a
hangover on every turn. An end-of-turn model (Smart Turn v3, :mod:`.smart_turn`) listens to the
utterance after a short quiet and, when it hears a finished turn, lets the VAD end it at once
(``VadStage(turn=...)``, :mod:`.turn_check`).
"""

from .detector import VAD_RATES, VoiceDetector, WebRtcVad
from .endpointer import Endpointer
from .offline import Segment, detect_segments, segments_from_events
from .options import VadOptions
from .smart_turn import DEFAULT_MODEL as DEFAULT_TURN_MODEL
from .smart_turn import (
    SmartTurnModel,
    TurnModel,
    TurnModelError,
    TurnModelNotAvailable,
    TurnOptions,
)
from .stage import VadStage

__all__ = [
    "DEFAULT_TURN_MODEL",
    "VAD_RATES",
    "Endpointer",
    "Segment",
    "SmartTurnModel",
    "TurnModel",
    "TurnModelError",
    "TurnModelNotAvailable",
    "TurnOptions",
    "VadOptions",
    "VadStage",
    "VoiceDetector",
    "WebRtcVad",
    "detect_segments",
    "segments_from_events",
]
