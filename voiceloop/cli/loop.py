"""``voiceloop run`` (files), ``voiceloop chat`` (desktop devices), ``voiceloop devices``, and the
loop options every loop command shares (``serve`` too)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path

from ..errors import UserError


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
        help="auto (default): int8 on CPU; on CUDA fp16 ASR + fp32 TTS (the fastest in benchmarks/gpu.sh)",
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


def _view(args: argparse.Namespace):
    from ..io.console import make_view

    return make_view("json" if args.json else "quiet" if args.quiet else "live")


def agent_for(args: argparse.Namespace, options=None, *, echo: str = "off", load: bool = True):
    """The :class:`voiceloop.Agent` the flags describe, its engines loaded (quietly with --quiet;
    ``load=False``: not here, e.g. a cluster gateway whose workers load them)."""
    from ..agent import Agent
    from ..hub import no_progress_bars

    agent = Agent(args.handler, echo=echo, options=options or loop_options(args))
    if not load:
        return agent
    with no_progress_bars() if args.quiet else contextlib.nullcontext():  # --quiet: errors only
        return agent.load()


def _finish(args: argparse.Namespace, summary: dict, done: str | None = None) -> int:
    if args.json:
        print(json.dumps({"type": "summary", **summary}, ensure_ascii=False), flush=True)
    elif done is not None and not args.quiet:
        v2v = summary.get("durations", {}).get("voice_to_voice")
        latency = f", voice-to-voice p50 {v2v['p50']:.3f} s" if v2v else ""
        print(f"{done}: {summary.get('turns', 0)} turn(s){latency}", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole loop on a file: a time-aligned recording of the bot side + the latency timeline."""
    if not Path(args.input).is_file():
        raise UserError(f"input file {args.input!r} does not exist")
    options = loop_options(args)  # bad flags fail before any model loads
    with agent_for(args, options) as agent:
        view = _view(args)
        summary = agent.run_file(
            args.input,
            args.output,
            clock="real" if args.realtime else args.clock,
            tail_s=args.tail_s,
            metrics_out=args.metrics_out,
            on_pipeline=lambda pipeline: (view.attach(pipeline), view)[1],
        )
    return _finish(args, summary, f"wrote {args.output}")


def cmd_chat(args: argparse.Namespace) -> int:
    """The live loop on the desktop: microphone → … → speaker, until Ctrl-C."""
    from ..agent import SPEAKER_BARGE_IN_MS
    from ..io.devices import pick_device

    options = loop_options(args)
    if args.duration is not None and args.duration <= 0:
        raise UserError("--duration must be positive")
    pick_device(args.input_device, "input")  # devices first: a missing microphone costs no model load
    pick_device(args.output_device, "output")
    with agent_for(args, options, echo=args.echo) as agent:
        view = _view(args)
        summary = agent.chat(
            input_device=args.input_device,
            output_device=args.output_device,
            duration=args.duration,
            metrics_out=args.metrics_out,
            on_pipeline=lambda pipeline: (view.attach(pipeline), view)[1],
            speaker_barge_in_ms=None if args.barge_in_ms is not None else SPEAKER_BARGE_IN_MS,
        )
    return _finish(args, summary)


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
    run.add_argument(
        "--clock",
        choices=["fast", "virtual", "real"],
        default="fast",
        help="fast (default): idle waits skipped, compute in real time (honest latencies); virtual: "
        "compute takes no time either (the same conversation on any machine); real: as --realtime",
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
