"""voiceloop: real-time voice agents as a readable asyncio graph of stages.

    io (capture) → vad → asr → dialogue (your handler) → tts → io (playback)

Most users need :class:`Pipeline` and a handler function; see README.md.
"""

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
from .vad import SmartTurnModel, TurnOptions, VadOptions, VadStage

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
    "SmartTurnModel",
    "SpeechEnded",
    "SpeechStarted",
    "Stage",
    "StageError",
    "TurnContext",
    "TurnError",
    "TurnMetrics",
    "TurnOptions",
    "TurnTimeline",
    "VadOptions",
    "VadStage",
    "__version__",
    "echo",
]
