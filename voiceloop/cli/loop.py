"""``voiceloop run`` (files), ``voiceloop chat`` (desktop devices), ``voiceloop devices``, and the
loop options every loop command shares (``serve`` too)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path

from ..allocator import frozen_heap
from ..errors import UserError

SPEAKER_BARGE_IN_MS = 300  # chat with echo handling: speech needed before a barge-in (see cmd_chat)


def add_loop_arguments(parser: argparse.ArgumentParser) -> None:
    from ..loop import DEFAULT_ASR, DEFAULT_TTS, PRECISIONS

    parser.add_argument("--handler", help="module:function or file.py:function (default: echo)")
    parser.add_argument(
        "--asr",
        default=DEFAULT_ASR,
        metavar="[ENGINE:]MODEL",
        help="speech recognition: ENGINE:MODEL, or a hub id / local directory of the default wav2vec2 "
        "engine (default: %(default)s)",
    )
    parser.add_argument(
        "--asr-backend", choices=("torch", "onnx"), default=None, help="wav2vec2: torch (default) | onnx"
    )
    parser.add_argument(
        "--tts",
        default=DEFAULT_TTS,
        metavar="[ENGINE:]MODEL",
        help="speech synthesis: chattts:HUB_ID|DIR (the default engine: a bare hub id or directory "
        "means chattts), espeak[:VOICE] (offline, espeak-ng), or a plugin's ENGINE:MODEL "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--tts-backend",
        choices=("auto", "torch", "onnx"),
        default=None,
        help="chattts: the GPT's runtime; auto (default): onnxruntime on CPUs (faster steps), else torch",
    )
    parser.add_argument(
        "--tts-start",
        choices=("fast", "smooth"),
        default=None,
        help="chattts: fast (default): a reply plays as soon as its first audio is decoded; smooth: it "
        "waits until the rest can follow without gaps (for CPUs that synthesize below ~2x real time)",
    )
    parser.add_argument("--voice", help="seed:N | a saved voice name | a speaker string | a file holding one")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto (default): int8 on CPU; on CUDA fp16 ASR + fp32 TTS (measured fastest)",
    )
    parser.add_argument("--device", default="auto", help="compute device: auto | cpu | cuda | mps")
    parser.add_argument("--tts-threads", type=int, default=None, help="torch threads for TTS (default: all)")
    parser.add_argument("--asr-threads", type=int, default=None, help="torch threads for ASR (default: all)")
    parser.add_argument(
        "--tts-max-seconds", type=float, default=None, help="longest audio per reply sentence"
    )
    parser.add_argument("--no-barge-in", action="store_true", help="the bot always finishes its reply")
    parser.add_argument(
        "--barge-in-ms", type=int, default=None, help="user speech needed to interrupt the bot"
    )
    parser.add_argument(
        "--preemptive",
        action="store_true",
        help="start the reply at a pause, play it once the end of speech is confirmed (lower latency; "
        "the handler may be called for a turn that continues)",
    )
    parser.add_argument(
        "--turn-model",
        metavar="M",
        nargs="?",
        const="pipecat-ai/smart-turn-v3",
        help="end-of-turn model (Smart Turn v3 ONNX: a hub id, directory or .onnx file; alone: "
        "pipecat-ai/smart-turn-v3): a turn it hears complete ends after --turn-check-ms of quiet, "
        "not after the hangover",
    )
    parser.add_argument(
        "--turn-check-ms",
        type=int,
        default=None,
        help="silence before the turn model is asked (default: 200)",
    )
    parser.add_argument("--metrics-out", metavar="M.jsonl", help="per-turn latency timelines as JSON lines")
    view = parser.add_mutually_exclusive_group()
    view.add_argument("--quiet", action="store_true", help="print nothing but errors")
    view.add_argument("--json", action="store_true", help="one JSON object per event on stdout")


def loop_options(args: argparse.Namespace):
    from ..loop import LoopOptions
    from ..pipeline import BargeInOptions
    from ..vad import TurnOptions

    barge = BargeInOptions(enabled=not args.no_barge_in)
    if args.barge_in_ms is not None:
        if args.barge_in_ms < 0:
            raise UserError("--barge-in-ms must be >= 0")
        barge = replace(barge, min_speech_ms=args.barge_in_ms)
    return LoopOptions(
        asr=args.asr,
        asr_backend=args.asr_backend,
        tts=args.tts,
        tts_backend=args.tts_backend,
        tts_start=args.tts_start,
        tts_max_seconds=args.tts_max_seconds,
        voice=args.voice,
        precision=args.precision,
        device=args.device,
        asr_threads=args.asr_threads,
        tts_threads=args.tts_threads,
        barge_in=barge,
        preemptive=args.preemptive,
        turn_model=args.turn_model,
        turn=TurnOptions() if args.turn_check_ms is None else TurnOptions(check_ms=args.turn_check_ms),
    )


def engines_for(args: argparse.Namespace, options):
    from ..hub import no_progress_bars
    from ..loop import load_engines

    with no_progress_bars() if args.quiet else contextlib.nullcontext():  # --quiet: errors only
        return load_engines(options)


def _view(args: argparse.Namespace):
    from ..io.console import make_view

    return make_view("json" if args.json else "quiet" if args.quiet else "live")


def cmd_run(args: argparse.Namespace) -> int:
    """The whole loop on a file: a time-aligned recording of the bot side + the latency timeline."""
    from ..clock import run
    from ..io.files import FileSource, WavSink
    from ..loop import build_pipeline, load_handler
    from ..timeline import Metrics

    if not Path(args.input).is_file():
        raise UserError(f"input file {args.input!r} does not exist")
    options = loop_options(args)
    handler = load_handler(args.handler)
    # Trailing silence lets the last utterance reach its end of speech and its reply play out.
    # Paced like a microphone; without --realtime the clock skips idle waits (compute still takes
    # real time, so the latencies stay honest) and a file runs faster than it lasts.
    source = FileSource(args.input, pace=True, tail_silence_s=args.tail_s)
    engines = engines_for(args, options)
    metrics = Metrics.to_file(args.metrics_out) if args.metrics_out else Metrics()
    sink = WavSink(args.output, engines.tts.sample_rate)
    pipeline = build_pipeline(source, sink, engines, handler, options, metrics=metrics)
    view = _view(args)
    view.attach(pipeline)
    try:
        with view, frozen_heap():
            run(pipeline.run(), clock="real" if args.realtime else "fast")
    finally:
        summary = metrics.close()
        engines.close()
    if args.json:
        print(json.dumps({"type": "summary", **summary}, ensure_ascii=False), flush=True)
    elif not args.quiet:
        v2v = summary.get("durations", {}).get("voice_to_voice")
        turns = summary.get("turns", len(metrics.finished))
        latency = f", voice-to-voice p50 {v2v['p50']:.3f} s" if v2v else ""
        print(f"wrote {args.output}: {turns} turn(s){latency}", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """The live loop on the desktop: microphone → … → speaker, until Ctrl-C."""
    from ..clock import run
    from ..io.devices import MicSource, SpeakerSink, pick_device
    from ..loop import build_pipeline, load_handler
    from ..timeline import Metrics

    options = loop_options(args)
    handler = load_handler(args.handler)
    # Devices first: a missing microphone should not cost a model download.
    mic_index = pick_device(args.input_device, "input")
    speaker_index = pick_device(args.output_device, "output")
    engines = engines_for(args, options)
    metrics = Metrics.to_file(args.metrics_out) if args.metrics_out else Metrics()
    if args.duration is not None and args.duration <= 0:
        raise UserError("--duration must be positive")
    source = MicSource(mic_index, max_seconds=args.duration)
    sink = SpeakerSink(speaker_index, sample_rate=engines.tts.sample_rate)
    echo = echo_stage(args.echo)
    if echo is not None and args.barge_in_ms is None:
        # On speakers a leak of the bot's own voice past the canceller is short; asking for 300 ms of
        # speech before a barge-in counts rejects it (measured: 2 self-interruptions in 12 loopback runs
        # without this, on a full-level digital echo).
        options.barge_in = replace(options.barge_in, min_speech_ms=SPEAKER_BARGE_IN_MS)
    pipeline = build_pipeline(source, sink, engines, handler, options, metrics=metrics, echo=echo)
    view = _view(args)
    view.attach(pipeline)
    try:
        with view, frozen_heap():
            run(pipeline.run(), clock="real")
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a chat ends
    finally:
        summary = metrics.close()
        engines.close()
    if args.json:
        print(json.dumps({"type": "summary", **summary}, ensure_ascii=False), flush=True)
    return 0


def echo_stage(mode: str):
    """The echo stage for ``--echo`` (None for "off"); "auto" is :func:`voiceloop.aec.default_mode`."""
    if mode == "off":
        return None
    from ..aec import EchoReference, EchoStage

    return EchoStage(EchoReference(), mode)


def cmd_devices(args: argparse.Namespace) -> int:
    from ..io.devices import list_devices

    devices = list_devices()
    if args.json:
        print(json.dumps([d.__dict__ for d in devices], indent=2))
        return 0
    for d in devices:
        marks = ("<" if d.is_default_in else " ") + (">" if d.is_default_out else " ")
        print(f"{marks} {d.index:3d} {d.name}  ({d.inputs} in, {d.outputs} out, {d.default_rate:.0f} Hz)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="the whole conversation loop on an audio file")
    run.add_argument("--input", required=True, help="user side audio (WAV/FLAC/OGG, any rate/channels)")
    run.add_argument("--output", required=True, help="time-aligned recording of the bot side (WAV)")
    run.add_argument(
        "--realtime", action="store_true", help="feed the file at real-time pace on the real clock"
    )
    run.add_argument("--tail-s", type=float, default=3.0, help="silence appended to the input (default: 3)")
    add_loop_arguments(run)
    run.set_defaults(func=cmd_run)

    chat = sub.add_parser("chat", help="talk to it: the live loop on the desktop microphone and speaker")
    chat.add_argument("--input-device", help="microphone: index or name substring (default: the system's)")
    chat.add_argument("--output-device", help="speaker: index or name substring (default: the system's)")
    chat.add_argument(
        "--echo",
        choices=("auto", "aec", "gate", "aec+gate", "off"),
        default="auto",
        help="echo handling when the bot plays through speakers (default: auto = aec+gate if available)",
    )
    chat.add_argument("--duration", type=float, default=None, help="stop after this many seconds (scripts)")
    add_loop_arguments(chat)
    chat.set_defaults(func=cmd_chat)

    devices = sub.add_parser("devices", help="list audio input/output devices")
    devices.add_argument("--json", action="store_true")
    devices.set_defaults(func=cmd_devices)
