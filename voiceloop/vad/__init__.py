"""Voice activity detection and endpointing.

Two layers, because per-frame speech/non-speech decisions are noisy and an agent needs
*utterances*: :class:`WebRtcVad` classifies one frame (a few µs), :class:`Endpointer` turns the
decisions into SpeechStarted / audio / SpeechEnded with a start trigger, a hangover and a
pre-roll. The Endpointer is a pure synchronous state machine so it is trivially testable and
the pipeline stage around it stays thin.
"""

from .detector import VAD_RATES, VoiceDetector, WebRtcVad
from .endpointer import Endpointer
from .offline import Segment, detect_segments, segments_from_events
from .options import VadOptions
from .stage import VadStage

__all__ = [
    "VAD_RATES",
    "Endpointer",
    "Segment",
    "VadOptions",
    "VadStage",
    "VoiceDetector",
    "WebRtcVad",
    "detect_segments",
    "segments_from_events",
]
