"""voiceloop: real-time voice agents as a readable asyncio graph of stages.

    io (capture) → vad → asr → dialogue (your handler) → tts → io (playback)

Most users need :class:`Agent` and a handler function: ``Agent(reply, asr=..., tts=...).run_file(...)``,
``.chat()``, ``.serve()`` or ``await .session(source, sink)``; see README.md.
"""

__version__ = "0.1.0"

from .agent import Agent
from .asr import AsrEngine, AsrSession, AsrStage
from .dialogue import DialogueOptions, DialogueStage, Message, TurnContext, echo
from .engines import EngineSettings
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
from .loop import Engines, LoopOptions, build_pipeline, load_engines, load_handler
from .model_options import ModelOptions
from .pipeline import BargeInOptions, Pipeline, Stage, StageError
from .timeline import Metrics, TurnTimeline
from .tts import TtsEngine, TtsSession, TtsStage
from .vad import SmartTurnModel, TurnOptions, VadOptions, VadStage

__all__ = [
    "Agent",
    "AsrEngine",
    "AsrSession",
    "AsrStage",
    "AudioChunk",
    "AudioFrame",
    "BargeInOptions",
    "DialogueOptions",
    "DialogueStage",
    "EndOfStream",
    "EngineSettings",
    "Engines",
    "FinalTranscript",
    "Frame",
    "Interruption",
    "LoopOptions",
    "Message",
    "Metrics",
    "ModelOptions",
    "PartialTranscript",
    "Pipeline",
    "ReplyEnd",
    "ReplyText",
    "SmartTurnModel",
    "SpeechEnded",
    "SpeechStarted",
    "Stage",
    "StageError",
    "TtsEngine",
    "TtsSession",
    "TtsStage",
    "TurnContext",
    "TurnError",
    "TurnMetrics",
    "TurnOptions",
    "TurnTimeline",
    "VadOptions",
    "VadStage",
    "__version__",
    "build_pipeline",
    "echo",
    "load_engines",
    "load_handler",
]
