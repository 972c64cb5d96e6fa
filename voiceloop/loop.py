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
from .asr.base import AsrEngine
from .compute import ComputeLane, share_cores
from .dialogue import DialogueOptions, DialogueStage, echo
from .engines import EngineSettings, parse_spec
from .engines import load as load_engine
from .errors import UserError
from .model_options import PRECISIONS
from .pipeline import BargeInOptions, Pipeline, Stage
from .timeline import Metrics
from .tts.base import TtsEngine
from .vad import TurnOptions, VadOptions, VadStage

DEFAULT_TTS = "2Noise/ChatTTS"


@dataclass
class LoopOptions:
    """Everything a conversation loop is built from; defaults are the real models from the hub."""

    #: ``ENGINE:MODEL``, or a model of the default engine (wav2vec2 / chattts): a hub id or a local
    #: directory; ``espeak`` alone is the offline espeak-ng voice (see :mod:`voiceloop.engines`)
    asr: str = DEFAULT_ASR
    tts: str = DEFAULT_TTS
    #: engine options by name, for the default engines (None: the engine's default). wav2vec2:
    #: backend torch | onnx; chattts: backend (the GPT's runtime) auto | torch | onnx, start fast |
    #: smooth (smooth: a reply's start waits until the rest can follow without gaps; worth it below
    #: ~2x real-time synthesis), max_seconds per sentence
    asr_backend: str | None = None
    tts_backend: str | None = None
    tts_start: str | None = None
    tts_max_seconds: float | None = None
    #: an engine's own options object (``ChatTtsOptions``, ``EspeakOptions``, ...) instead of the
    #: named fields above; it travels to the engine's loader as it is
    asr_options: Any = None
    tts_options: Any = None
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
        if self.asr_backend not in (None, "torch", "onnx"):
            raise ValueError(f"asr_backend must be torch or onnx, got {self.asr_backend!r}")
        if self.tts_backend not in (None, "auto", "torch", "onnx"):
            raise ValueError(f"tts_backend must be auto, torch or onnx, got {self.tts_backend!r}")
        if self.tts_start not in (None, "fast", "smooth"):
            raise ValueError(f"tts_start must be fast or smooth, got {self.tts_start!r}")
        if self.tts_max_seconds is not None and not self.tts_max_seconds > 0:
            raise ValueError(f"tts_max_seconds must be positive, got {self.tts_max_seconds!r}")
        self.asr_spec = parse_spec(self.asr, "asr")  # an unknown engine name fails here, before loading
        self.tts_spec = parse_spec(self.tts, "tts")
        if self.turn_model is not None:
            self.turn.check_frames(self.vad.end_silence_ms)  # refused before any model loads, not after

    def engine_settings(self, kind: str) -> EngineSettings:
        """What the ``kind`` ("asr" | "tts") engine is loaded with: device, precision, threads and
        its options (the own object, or the named fields that were set)."""
        if kind == "asr":
            own, threads, named = self.asr_options, self.asr_threads, {"backend": self.asr_backend}
        else:
            own, threads = self.tts_options, self.tts_threads
            named = {
                "backend": self.tts_backend,
                "start": self.tts_start,
                "max_seconds": self.tts_max_seconds,
            }
        given = {name: value for name, value in named.items() if value is not None}
        if own is not None and given:
            raise UserError(
                f"give the {kind} engine's options as {kind}_options or as named fields, not both"
            )
        return EngineSettings(self.device, self.precision, threads, own if own is not None else given)


@dataclass
class Engines:
    """The loaded models: load once, share across every pipeline (sessions) of the process. The
    loop knows them only through the engine ABCs (:class:`AsrEngine`, :class:`TtsEngine`)."""

    asr: AsrEngine
    tts: TtsEngine
    turn: Any = None  # a voiceloop.vad.TurnModel, or None

    def warm_up(self) -> None:
        """Pay first-inference costs now, not during the first turn (which would then drop audio)."""
        import numpy as np

        self.asr.warm_up()
        self.tts.warm_up()
        if self.turn is not None:
            self.turn.probability(np.zeros(16_000, np.int16))

    @property
    def on_cpu(self) -> bool:
        return all(str(engine.device).startswith("cpu") for engine in (self.asr, self.tts))

    def close(self) -> None:
        for engine in (self.asr, self.tts):
            engine.close()


def load_engines(options: LoopOptions) -> Engines:
    """Load ASR and TTS (hub ids download with progress bars; offline → a message naming local dirs).

    The models are built on a compute thread, which on a CPU then runs all of both engines' work
    (``share_cores``): torch ops from a second thread — even just loading — slow small ops down.
    """
    compute = ComputeLane("compute")
    try:
        engines = compute.call(_load_engines, options)
    except BaseException:
        compute.close()
        raise
    lanes = [*engines.asr.lanes, *engines.tts.lanes]
    if options.share_cores and engines.on_cpu and lanes:
        share_cores(compute, *lanes)
    else:
        compute.close()
    engines.warm_up()
    return engines


def _load_engines(options: LoopOptions) -> Engines:
    turn = None
    if options.turn_model is not None:  # first: small, and a wrong path should not wait for the big models
        from .vad import SmartTurnModel

        turn = SmartTurnModel.from_pretrained(options.turn_model)
    asr = load_engine(options.asr_spec, "asr", options.engine_settings("asr"))
    tts = load_engine(options.tts_spec, "tts", options.engine_settings("tts"))
    if options.voice is not None:
        tts.check_voice(options.voice)  # fail now, not at the first reply
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
