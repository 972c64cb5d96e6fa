"""The conversation loop assembled: engines, the user's handler, and the stage line for files or devices.

``voiceloop run`` and ``voiceloop chat`` (and library users who want the whole thing) build the same
pipeline: ``source → [echo] → vad → asr → dialogue → tts → output``. Only the two ends differ — a
file and a time-aligned WAV recorder, or the microphone and the speaker.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .asr.base import DEFAULT_MODEL as DEFAULT_ASR
from .compute import ComputeLane, share_cores
from .dialogue import DialogueOptions, DialogueStage, echo
from .errors import UserError
from .pipeline import BargeInOptions, Pipeline, Stage
from .timeline import Metrics
from .vad import TurnOptions, VadOptions, VadStage

DEFAULT_TTS = "2Noise/ChatTTS"
PRECISIONS = ("auto", "fp32", "int8", "bf16", "fp16")


@dataclass
class LoopOptions:
    """Everything a conversation loop is built from; defaults are the real models from the hub."""

    asr: str = DEFAULT_ASR  # hub id or local directory
    asr_backend: str = "torch"  # torch | onnx
    tts: str = DEFAULT_TTS
    tts_backend: str = "auto"  # the GPT's: auto (onnxruntime on CPUs when installed) | torch | onnx
    #: fast: each reply's audio as soon as it is decoded; smooth: its start waits until the rest
    #: can follow without gaps (ChatTtsOptions.start; worth it below ~2x real-time synthesis)
    tts_start: str = "fast"
    voice: str | None = None  # seed:N | name | speaker string | file; None: one random voice per session
    precision: str = "auto"  # auto: int8 on CPU (the only way near real time there); CUDA: AUTO_PRECISION
    device: str = "auto"
    # Both engines may use every core: the ASR computes while the user speaks, the TTS while the bot
    # does: on 2 cores 2 ASR threads give an earlier final transcript and voice-to-voice than 1
    # (benchmarks/voice_to_voice.py --asr-threads 1 / 2).
    asr_threads: int | None = None  # None: torch's default (all cores)
    tts_threads: int | None = None
    #: on a CPU, ASR and TTS take turns on the cores job by job instead of computing at once (two
    #: all-core torch workloads oversubscribe; see compute.share_cores); concurrent sessions need it
    share_cores: bool = True
    #: generate the reply during the VAD's hangover from the final computed at the pause hint; it
    #: plays once the end of speech is confirmed and is retracted if the user goes on (AsrStage).
    #: Off by default: a handler may then be called for a turn that continues.
    preemptive: bool = False
    #: end-of-turn model (voiceloop.vad: Smart Turn v3 ONNX; hub id, directory or .onnx file). None:
    #: the VAD's silence hangover alone decides; with a model a turn it hears complete ends after
    #: turn.check_ms of silence instead of end_silence_ms
    turn_model: str | None = None
    turn: TurnOptions = field(default_factory=TurnOptions)
    vad: VadOptions = field(default_factory=VadOptions)
    barge_in: BargeInOptions = field(default_factory=BargeInOptions)
    dialogue: DialogueOptions = field(default_factory=DialogueOptions)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.asr_backend not in ("torch", "onnx"):
            raise ValueError(f"asr_backend must be torch or onnx, got {self.asr_backend!r}")
        if self.tts_backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"tts_backend must be auto, torch or onnx, got {self.tts_backend!r}")
        if self.tts_start not in ("fast", "smooth"):
            raise ValueError(f"tts_start must be fast or smooth, got {self.tts_start!r}")
        if self.turn_model is not None:
            self.turn.check_frames(self.vad.end_silence_ms)  # refused before any model loads, not after


#: precision="auto" per engine and device. CUDA (benchmarks/gpu.sh: results/*-cuda.json): the ASR's
#: steps are faster in fp16 than in fp32; the TTS's GPT steps are launch-bound (one token at a time)
#: and slower in fp16 (more kernels per step), so the TTS stays fp32.
AUTO_PRECISION = {
    ("asr", "cpu"): "int8",
    ("tts", "cpu"): "int8",
    ("asr", "cuda"): "fp16",
    ("tts", "cuda"): "fp32",
}


def model_options(device: str, precision: str, threads: int | None, engine: str = "asr"):
    """The ``ModelOptions`` for a precision choice (auto: :data:`AUTO_PRECISION`, fp32 elsewhere)."""
    from .compute import ModelOptions

    base = ModelOptions(device=device, threads=threads)
    resolved = base.resolve_device().type
    if precision == "auto":
        precision = AUTO_PRECISION.get((engine, resolved), "fp32")
    if precision == "int8":
        return ModelOptions(device="cpu", quantize="int8", threads=threads)
    return ModelOptions(device=device, dtype=precision, threads=threads)


@dataclass
class Engines:
    """The loaded models: load once, share across every pipeline (sessions) of the process."""

    asr: Any
    tts: Any
    turn: Any = None  # a voiceloop.vad.TurnModel, or None

    def warm_up(self) -> None:
        """Pay first-inference costs now, not during the first turn (which would then drop audio)."""
        import numpy as np

        self.asr.lane.call(self.asr.transcribe, np.zeros(16_000, np.int16))
        self.tts.warm_up()
        if self.turn is not None:
            self.turn.probability(np.zeros(16_000, np.int16))

    @property
    def on_cpu(self) -> bool:
        asr_device = str(getattr(self.asr.checkpoint, "device", "cpu"))  # ONNX checkpoints: CPU
        tts_device = getattr(self.tts, "device", None) or self.tts.gpt.device  # engines without a GPT say it
        return asr_device.startswith("cpu") and str(tts_device).startswith("cpu")

    def close(self) -> None:
        for engine in (self.asr, self.tts):
            lane = getattr(engine, "lane", None)
            if lane is not None:
                lane.close()


def load_engines(options: LoopOptions) -> Engines:
    """Load ASR and TTS (hub ids download with progress bars; offline → a message naming local dirs).

    The models are built on a compute thread, which on a CPU then runs all of both engines' work
    (``share_cores``): torch ops from a second thread — even just loading — slow small ops down.
    """
    compute = ComputeLane("compute")
    engines = compute.call(_load_engines, options)
    if options.share_cores and engines.on_cpu:
        share_cores(compute, engines.asr.lane, engines.tts.lane)
    else:
        compute.close()
    engines.warm_up()
    return engines


def _load_engines(options: LoopOptions) -> Engines:
    from .asr.streaming import Wav2Vec2Engine
    from .tts.chattts.engine import ChatTts, ChatTtsOptions
    from .tts.chattts.play_through import SMOOTH_SCHEDULE

    turn = None
    if options.turn_model is not None:  # first: small, and a wrong path should not wait for the big models
        from .vad import SmartTurnModel

        turn = SmartTurnModel.from_pretrained(options.turn_model)

    if options.asr_backend == "onnx":
        from .asr.onnx import OnnxCheckpoint

        checkpoint = OnnxCheckpoint.from_directory(options.asr, threads=options.asr_threads)
        asr = Wav2Vec2Engine(checkpoint)
    else:
        asr_model = model_options(options.device, options.precision, options.asr_threads)
        asr = Wav2Vec2Engine.from_pretrained(options.asr, asr_model)
    tts_model = model_options(options.device, options.precision, options.tts_threads, engine="tts")
    tts_options = ChatTtsOptions(model=tts_model, gpt_backend=options.tts_backend)
    if options.tts_start == "smooth":  # the gate, and pieces that grow slowly enough to need little hold
        tts_options = replace(tts_options, start="smooth", stream=SMOOTH_SCHEDULE)
    tts = ChatTts.from_pretrained(options.tts, tts_options)
    if options.voice is not None:
        tts.speaker(options.voice)  # fail now, not at the first reply
    return Engines(asr, tts, turn)


def load_handler(spec: str | None) -> Callable[..., Any]:
    """``module:function`` or ``path/to/file.py:function`` → the callable; None → echo."""
    if spec is None or spec == "echo":
        return echo
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"--handler must look like module:function or file.py:function, got {spec!r}")
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise UserError(f"handler file {str(path)!r} does not exist")
            module_spec = importlib.util.spec_from_file_location(f"voiceloop_handler_{path.stem}", path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except UserError:
        raise
    except Exception as exc:  # the user's module failed to import: say which and why, one line
        raise UserError(f"cannot import handler module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UserError(f"{module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if inspect.isclass(target):
        target = target()  # a handler class with __call__: instantiate once per process
    if not callable(target):
        raise UserError(f"handler {spec!r} is not callable")
    return target


def _output_reference(sink: Any, echo: Any) -> Any:
    """Who tells echo handling what plays: the device sink itself when it can (from its callback,
    exact through underruns), else the output stage (from the sink's play-time estimates)."""
    if echo is None:
        return None
    if hasattr(sink, "echo_reference"):
        sink.echo_reference = echo.reference
        return None
    return echo.reference


def build_pipeline(
    source: Stage,
    sink: Any,
    engines: Engines,
    handler: Callable[..., Any],
    options: LoopOptions,
    *,
    metrics: Metrics | None = None,
    echo: Any = None,
) -> Pipeline:
    """``source → [echo] → vad → [echo turn filter] → asr → dialogue → tts → output(sink)``.

    ``echo`` is a :class:`voiceloop.aec.EchoStage` (desktop speakers): it cleans the microphone
    against what the output reports playing, and vetoes barge-ins the bot's own voice caused.
    """
    from .asr import AsrStage
    from .io.output import OutputStage
    from .tts import TtsStage

    barge_in = options.barge_in
    stages: list[Stage] = [source]
    vad = VadStage(
        options.vad, turn_model=engines.turn, turn=options.turn if engines.turn is not None else None
    )
    if echo is not None:
        stages += [echo, vad, echo.turn_filter()]
        user_allow = barge_in.allow
        allow = echo.allow_barge_in
        if user_allow is not None:
            allow = lambda started: echo.allow_barge_in(started) and user_allow(started)  # noqa: E731
        barge_in = replace(barge_in, allow=allow)
    else:
        stages.append(vad)
    stages += [
        AsrStage(engines.asr, preemptive=options.preemptive),
        DialogueStage(handler, options=options.dialogue),
        TtsStage(engines.tts, voice=options.voice),
        OutputStage(sink, echo_reference=_output_reference(sink, echo)),
    ]
    return Pipeline(stages, metrics=metrics, barge_in=barge_in)
