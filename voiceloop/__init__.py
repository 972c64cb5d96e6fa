"""voiceloop: real-time voice agents as a readable asyncio graph of stages.

    io (capture) → vad → asr → dialogue (your handler) → tts → io (playback)

Most users need :class:`Pipeline` and a handler function; see README.md.
"""

import os as _os

# ASR and TTS share the cores in one process: with OpenMP's default busy-waiting, two torch
# workloads side by side slowed ASR 13x (1.3 s window: 0.19 s alone, 2.5 s with a competitor);
# passive waiting cut that to 2.2x for a 16 % cost when alone (shared/research/asr.md §2.3).
# Takes effect only if torch is imported after voiceloop; set the variable yourself to override.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from .dialogue import DialogueOptions, DialogueStage, Message, TurnContext, echo
from .frames import (
    AudioChunk,
    AudioFrame,
    EndOfStream,
    FinalTranscript,
    Frame,
    Interruption,
    PartialTranscript,
    ReplyEnd,
    ReplyText,
    SpeechEnded,
    SpeechStarted,
    TurnError,
    TurnMetrics,
)
from .pipeline import BargeInOptions, Pipeline, Stage, StageError
from .timeline import Metrics, TurnTimeline
from .vad import VadOptions, VadStage

__all__ = [
    "AudioChunk",
    "AudioFrame",
    "BargeInOptions",
    "DialogueOptions",
    "DialogueStage",
    "EndOfStream",
    "FinalTranscript",
    "Frame",
    "Interruption",
    "Message",
    "Metrics",
    "PartialTranscript",
    "Pipeline",
    "ReplyEnd",
    "ReplyText",
    "SpeechEnded",
    "SpeechStarted",
    "Stage",
    "StageError",
    "TurnContext",
    "TurnError",
    "TurnMetrics",
    "TurnTimeline",
    "VadOptions",
    "VadStage",
    "__version__",
    "echo",
]
