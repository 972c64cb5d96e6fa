"""Speech synthesis: the streaming engine interface and the stage that drives it."""

from .base import TtsEngine, TtsSession
from .stage import TtsStage

__all__ = ["TtsEngine", "TtsSession", "TtsStage"]
