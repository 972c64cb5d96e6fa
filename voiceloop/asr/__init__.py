"""Speech recognition: the streaming engine interface and the stage that drives it."""

from .base import AsrEngine, AsrSession
from .stage import AsrStage

__all__ = ["AsrEngine", "AsrSession", "AsrStage"]
