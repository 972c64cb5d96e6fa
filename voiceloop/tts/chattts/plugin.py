"""The ChatTTS-compatible engine as a plugin: ``--tts chattts:MODEL`` (the default TTS engine).

``MODEL`` is a hub id (default ``2Noise/ChatTTS``) or a local directory in the official layout.
Named options (what the CLI's flags set): ``backend`` (the GPT's runtime: auto | torch | onnx),
``start`` (fast | smooth, see :class:`ChatTtsOptions`), ``max_seconds`` (longest audio per sentence).
"""

from __future__ import annotations

import math
from dataclasses import replace

from ...engines import EngineSettings, take_options
from ...model_options import ModelOptions
from . import assets
from .engine import STEPS_PER_SECOND, ChatTts, ChatTtsOptions
from .play_through import SMOOTH_SCHEDULE


def load(model: str | None, settings: EngineSettings) -> ChatTts:
    def build(backend: str = "auto", start: str = "fast", max_seconds: float | None = None) -> ChatTtsOptions:
        compute = ModelOptions.for_precision(settings.device, settings.precision, settings.threads, "tts")
        options = ChatTtsOptions(model=compute, gpt_backend=backend, start=start)  # type: ignore[arg-type]
        if start == "smooth":  # the gate, and pieces that grow slowly enough to need little hold
            options = replace(options, stream=SMOOTH_SCHEDULE)
        if max_seconds is not None:
            if not max_seconds > 0:
                raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
            steps = max(1, math.ceil(max_seconds * STEPS_PER_SECOND))
            options = replace(options, sampling=replace(options.sampling, max_new_tokens=steps))
        return options

    options = take_options("chattts", settings.options, ChatTtsOptions, build)
    return ChatTts.from_pretrained(model or assets.DEFAULT_REPO, options)
