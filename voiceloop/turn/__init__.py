"""End-of-turn detection from the audio itself: whether the user has finished, not just paused.

Silence alone cannot tell a clause pause from the end of a turn, so the VAD waits out a 360 ms
hangover on every turn. A turn model (Smart Turn v3) listens to the utterance after a short
silence and, when it hears a finished turn, lets the VAD end it at once (``VadStage(turn=...)``).
"""

from .smart_turn import (
    DEFAULT_FILE,
    DEFAULT_MODEL,
    SmartTurnModel,
    TurnModel,
    TurnModelError,
    TurnModelNotAvailable,
    TurnOptions,
)

__all__ = [
    "DEFAULT_FILE",
    "DEFAULT_MODEL",
    "SmartTurnModel",
    "TurnModel",
    "TurnModelError",
    "TurnModelNotAvailable",
    "TurnOptions",
]
