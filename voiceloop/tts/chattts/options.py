"""How a :class:`~voiceloop.tts.chattts.engine.ChatTts` computes and speaks (split from the engine
module, which re-exports it): every default is what the live loop uses."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from ...compute import ModelOptions
from ...ortgraph import available
from .gpt_sampling import REFINE_SAMPLING, SamplingOptions
from .stream_decode import StreamDecodeOptions


@dataclass
class ChatTtsOptions:
    """How the engine computes and speaks; every default is what the live loop uses."""

    model: ModelOptions = field(default_factory=ModelOptions)  # device, dtype, int8, threads
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    stream: StreamDecodeOptions = field(default_factory=StreamDecodeOptions)
    decoder: Literal["hidden", "dvae"] = "hidden"  # hidden: ChatTTS's default (and better) path
    refine: bool = False  # text refinement costs seconds on a CPU: off in the live loop
    refine_control: str = "[oral_2][laugh_0][break_6]"  # the reference's refine prompt
    refine_sampling: SamplingOptions = field(default_factory=lambda: replace(REFINE_SAMPLING))
    speed_prompt: str = "[speed_5]"
    normalize_text: bool = True
    max_sentence_chars: int = 100  # longer texts are split so each GPT run stays well under its limit
    verify_sha256: bool = False
    #: run concurrent sessions' GPT steps as one batched forward (False: one at a time, interleaved)
    batch_sessions: bool = True
    #: the GPT's transformer: "onnx" (onnxruntime, CPU fp32/int8: faster per step than torch, see
    #: benchmarks/gpt_step.py), "torch", or "auto" = onnx on the CPU when onnxruntime is installed,
    #: torch elsewhere
    gpt_backend: Literal["auto", "torch", "onnx"] = "auto"
    #: "fast": every piece as soon as it is decoded (first audio earliest; below ~2x real time the
    #: first pieces leave gaps). "smooth": a reply's first audio waits until the measured speed says
    #: the rest can follow without gaps (voiceloop/tts/chattts/play_through.py), at most 1 s; pair it
    #: with ``stream=SMOOTH_SCHEDULE`` (slowly growing pieces) as ``--tts-start smooth`` does.
    start: Literal["fast", "smooth"] = "fast"

    def __post_init__(self) -> None:
        if self.decoder not in ("hidden", "dvae"):
            raise ValueError(f"decoder must be 'hidden' or 'dvae', got {self.decoder!r}")
        if self.max_sentence_chars < 8:
            raise ValueError("max_sentence_chars must be >= 8")
        if self.gpt_backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"gpt_backend must be auto, torch or onnx, got {self.gpt_backend!r}")
        if self.start not in ("fast", "smooth"):
            raise ValueError(f"start must be fast or smooth, got {self.start!r}")

    def resolved_gpt_backend(self) -> str:
        """``gpt_backend`` with "auto" decided for this machine and these model options."""
        if self.gpt_backend != "auto":
            return self.gpt_backend
        cpu = self.model.resolve_device().type == "cpu" and self.model.dtype == "fp32"
        return "onnx" if cpu and available() else "torch"
