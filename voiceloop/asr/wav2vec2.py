"""The wav2vec2 CTC engine as a plugin: ``--asr wav2vec2:MODEL`` (the default ASR engine).

``MODEL`` is a hub id (default: :data:`~voiceloop.asr.base.DEFAULT_MODEL`) or a local directory in
the transformers layout, or, with ``backend="onnx"``, a directory ``voiceloop asr export-onnx`` wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engines import EngineSettings, take_options
from ..model_options import ModelOptions
from .base import DEFAULT_MODEL
from .options import StreamingOptions
from .streaming import Wav2Vec2Engine


@dataclass(frozen=True)
class Wav2Vec2Options:
    """The engine's own options (``--asr-backend`` sets ``backend``)."""

    backend: str = "torch"  # torch | onnx
    streaming: StreamingOptions = field(default_factory=StreamingOptions)

    def __post_init__(self) -> None:
        if self.backend not in ("torch", "onnx"):
            raise ValueError(f"the wav2vec2 backend must be torch or onnx, got {self.backend!r}")


def load(model: str | None, settings: EngineSettings) -> Wav2Vec2Engine:
    options = take_options("wav2vec2", settings.options, Wav2Vec2Options, Wav2Vec2Options)
    name = model or DEFAULT_MODEL
    if options.backend == "onnx":
        from .onnx import OnnxCheckpoint

        return Wav2Vec2Engine(
            OnnxCheckpoint.from_directory(name, threads=settings.threads), options.streaming
        )
    compute = ModelOptions.for_precision(settings.device, settings.precision, settings.threads, "asr")
    return Wav2Vec2Engine.from_pretrained(name, compute, options.streaming)
