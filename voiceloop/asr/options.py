"""The streaming window's geometry: how much audio each step commits, sees before and looks ahead."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StreamingOptions:
    """Window geometry (seconds, rounded to 20 ms frames) and extras.

    Defaults (C=0.64, L=1.0, R=0.24, cached left context): partial updates every 0.64 s; R=0.24 is
    the most lookahead that keeps committed text within the 0.5 s lag goal on 2 cores (R=0.32 lags
    more, R=0.16 agrees less with the offline pass). ``benchmarks/asr_streaming.py`` measures the
    RTF, the committed-text lag and the final's latency after the end of speech of each geometry
    (``benchmarks/results/asr_streaming*.json``).
    """

    chunk_s: float = 0.64
    left_s: float = 1.0
    right_s: float = 0.24
    #: Cache conv features (exact for "layer"-norm encoders; ignored for "group" norm).
    cache_conv: bool = True
    #: Attend to the left context through the keys/values its frames had when they were committed
    #: instead of re-encoding L + C + R frames per step (the ONNX backend always re-encodes).
    cache_context: bool = True
    #: Longest window one encoder pass may take while catching up (bounds memory and latency).
    max_window_s: float = 12.0
    #: Hidden layer whose mean over the utterance rides on the final transcript (None: none).
    embed_layer: int | None = None

    def __post_init__(self) -> None:
        for name in ("chunk_s", "left_s", "right_s", "max_window_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
        if self.chunk_s < 0.02:
            raise ValueError(f"chunk_s must be at least one 20 ms frame, got {self.chunk_s}")
        if self.max_window_s < self.left_s + self.chunk_s + self.right_s:
            raise ValueError("max_window_s must hold at least one window (left + chunk + right)")
