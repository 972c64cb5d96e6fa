"""Voice-to-voice latency of the whole loop with full-size random-weight models, real-time paced.

End of user speech → first bot sample played, p50/p95, with the per-stage breakdown (endpointing,
ASR finalisation, handler, TTS first audio, output queue/buffering), for fp32 and int8 on the CPU.
Models: a random XLSR-53-large wav2vec2 CTC (the default ASR's geometry) and random ChatTTS assets
in the official layout (20-layer GPT) — the same compute as the real ones. Input: espeak-ng
utterances with long gaps, fed at real-time pace; the handler echoes (a fixed sentence when the
random ASR hears nothing). Paths: ``file`` (FileSource → … → a simulated device on the real clock)
and ``pulse`` (PulseAudio null sinks: the utterances are played into a virtual microphone and the bot
is played to a virtual speaker; needs pulseaudio, see tests/pulse.py).

    python benchmarks/voice_to_voice.py [--turns 6] [--precisions fp32,int8] [--paths file,pulse]

``--turn off,complete`` adds rows with an end-of-turn model (voiceloop.vad): a full-size random
Smart Turn v3 graph (int8, the released CPU build's layout and compute) whose output bias makes it
hear every turn as complete — the latency of the path where the model ends a turn at its check.
How often the real model calls a turn complete is its own accuracy, not measured here.

``--paths`` may add ``pulse+echo``: the pulse path with ``voiceloop chat``'s default echo handling
(AEC3 + gate) between the mic and the VAD. Prints a table and writes
``benchmarks/results/voice_to_voice.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from helpers.asr_fixtures import make_tiny_checkpoint  # noqa: E402
from helpers.chattts_fixtures import write_random_assets  # noqa: E402
from helpers.speech import espeak  # noqa: E402
from machine import finish, machine_info, print_table  # noqa: E402

from voiceloop.cli.loop import echo_stage  # noqa: E402
from voiceloop.clock import run  # noqa: E402
from voiceloop.dialogue import TurnContext  # noqa: E402
from voiceloop.io.files import FileSource  # noqa: E402
from voiceloop.io.output import PacedSink  # noqa: E402
from voiceloop.loop import Engines, LoopOptions, build_pipeline, load_engines  # noqa: E402
from voiceloop.timeline import Metrics  # noqa: E402
from voiceloop.tts.chattts.play_through import SMOOTH_SCHEDULE  # noqa: E402
from voiceloop.tts.chattts.stream_decode import StreamDecodeOptions  # noqa: E402

UTTERANCES = ["你好", "今天天气很好", "明天早上八点", "请问车站在哪里", "我要买水", "谢谢再见"]
FALLBACK_REPLY = "好的，我知道了。"
STAGES = ["endpointing", "asr_finalisation", "handler_first_text", "tts_first_audio", "output_queue"]
STAGES += ["output_buffering", "voice_to_voice"]


def random_asr(cache: Path) -> Path:
    """A full-size random XLSR-53-large checkpoint in the modern hub layout (written once)."""
    root = cache / "asr-random-large"
    if not (root / "model.safetensors").is_file():
        print(f"writing a random XLSR-53-large checkpoint to {root} ...", file=sys.stderr)
        chars = [chr(c) for c in range(0x4E00, 0x4E00 + 2845)]
        vocab = {
            "<pad>": 0,
            "<s>": 1,
            "</s>": 2,
            "<unk>": 3,
            "|": 4,
            **{c: i + 5 for i, c in enumerate(chars)},
        }
        make_tiny_checkpoint(
            root,
            layout="modern",
            vocab=vocab,
            hidden=1024,
            layers=24,
            heads=16,
            conv_dim=(512,) * 7,
            num_conv_pos_embeddings=128,
            num_conv_pos_embedding_groups=16,
        )
    return root


def random_tts(cache: Path) -> Path:
    root = cache / "chattts-random-full"
    if not (root / "asset" / "Vocos.safetensors").is_file():
        print(f"writing full-size random ChatTTS assets to {root} ...", file=sys.stderr)
        write_random_assets(root, gpt_layers=20, seed=0, embed_tokens=True, official_tokenizer=None)
    return root


def conversation(turns: int, gap_s: float) -> np.ndarray:
    """Utterances separated by ``gap_s`` of silence (room for the reply to play out)."""
    silence = np.zeros(int(gap_s * 16_000), np.int16)
    parts = [silence[:8000]]
    for i in range(turns):
        parts += [espeak(UTTERANCES[i % len(UTTERANCES)], voice="cmn-latn-pinyin"), silence]
    return np.concatenate(parts)


class Echo:
    """The echo handler, replying with as many characters as the user said.

    The random ASR hears ~25 garbage characters per second — 3-9x the characters actually spoken —
    and a TTS prompt's prefill grows with its length, so a raw echo would time replies no real echo
    gets. Each reply is cut to the length of the utterance spoken in that turn (``raw``: not cut).
    """

    def __init__(self, raw: bool = False) -> None:
        self.raw = raw

    def __call__(self, text: str, ctx: TurnContext) -> str:
        # user turns are numbered 1, 2, ... (a preemptive reply may call twice for one turn)
        spoken = UTTERANCES[(ctx.turn_id - 1) % len(UTTERANCES)]
        reply = text.strip() if self.raw else text.strip()[: len(spoken)]
        return reply or FALLBACK_REPLY


def run_file(engines: Engines, options: LoopOptions, audio: np.ndarray, handler: Echo) -> Metrics:
    metrics = Metrics()
    source = FileSource(audio, sample_rate=16_000, pace=True, tail_silence_s=1.0)
    sink = PacedSink(engines.tts.sample_rate)
    pipeline = build_pipeline(source, sink, engines, handler, options, metrics=metrics)
    run(pipeline.run(), clock="real")
    metrics.close()
    return metrics


def run_pulse(
    engines: Engines, options: LoopOptions, audio: np.ndarray, handler: Echo, echo: str = "off"
) -> Metrics | str:
    """Play the conversation into the virtual mic of a private PulseAudio server; the bot plays out.
    ``echo``: the chat's echo handling (``--echo``) between the mic and the VAD; no loopback, so it
    only costs (its mic frames wait for the far end they are compared with)."""
    from helpers.pulse import (  # the test harness, usable outside pytest
        Pulse,
        PulseServer,
        missing,
        use_server,
    )

    reason = missing()
    if reason:
        return reason
    server = PulseServer()
    server.start()
    try:
        use_server(server)
        from voiceloop.io.devices import MicSource, SpeakerSink

        harness = Pulse(server)
        metrics = Metrics()
        seconds = len(audio) / 16_000 + 2.0
        source = MicSource("vmic", max_seconds=seconds + 1.0)
        sink = SpeakerSink("vspeaker", sample_rate=engines.tts.sample_rate)
        stage = echo_stage(echo)
        pipeline = build_pipeline(source, sink, engines, handler, options, metrics=metrics, echo=stage)

        async def main() -> None:
            task = asyncio.ensure_future(pipeline.run())
            await asyncio.sleep(1.0)
            player = harness.play(audio, 16_000)
            await asyncio.to_thread(player.wait, seconds + 30)
            player.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        asyncio.run(main())
        metrics.close()
        return metrics
    finally:
        server.stop()


def summarise(metrics: Metrics) -> dict[str, Any]:
    turns = [t for t in metrics.finished if not t.discarded and t.first_played is not None]
    out: dict[str, Any] = {"turns": len(turns), "counters": dict(metrics.counters)}
    model_s = [t.turn_model_s for t in turns if t.turn_model_s is not None]
    if model_s:  # the end-of-turn model's call, inside "endpointing"
        out["turn_model_s"] = {
            "p50": round(statistics.median(model_s), 3),
            "p95": round(float(np.percentile(model_s, 95)), 3),
        }
    for name in STAGES:
        values = [t.durations()[name] for t in turns if t.durations()[name] is not None]
        if values:
            out[name] = {
                "p50": round(statistics.median(values), 3),
                "p95": round(float(np.percentile(values, 95)), 3),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--gap-s", type=float, default=6.0, help="silence after each utterance")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--paths", default="file,pulse")
    parser.add_argument("--asr-threads", type=int, default=LoopOptions.asr_threads)
    parser.add_argument("--tts-threads", type=int, default=None)
    parser.add_argument("--reply-max-s", type=float, default=1.5, help="cap on each reply sentence's audio")
    parser.add_argument(
        "--raw-echo", action="store_true", help="echo the random ASR's whole (garbage) transcript"
    )
    parser.add_argument(
        "--end-silence-ms",
        default=None,
        help="comma list of VAD silences that end a turn, one row each "
        "(default: VadOptions' 360 ms, chosen by benchmarks/vad_defaults.py)",
    )
    parser.add_argument(
        "--preemptive",
        default="off",
        help="off | on | off,on: reply generated during the hangover (LoopOptions.preemptive); a row each",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (precision auto: AUTO_PRECISION)")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument(
        "--tts-start",
        default="fast",
        help="fast | smooth | fast,smooth: when a reply's first audio plays (LoopOptions.tts_start)",
    )
    parser.add_argument(
        "--turn",
        default="off",
        help="off | complete | off,complete: no end-of-turn model, or a random full-size Smart Turn that "
        "calls every turn complete (latency of the model's shortcut); a row each",
    )
    parser.add_argument(
        "--asr", type=Path, default=None, help="an ASR checkpoint instead of the full-size random one"
    )
    parser.add_argument(
        "--tts", type=Path, default=None, help="ChatTTS assets instead of the full-size random ones"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "voice_to_voice.json")
    args = parser.parse_args()
    machine = machine_info(asr_threads=args.asr_threads, tts_threads=args.tts_threads)
    turn_models = {"off": None}
    if "complete" in args.turn.split(","):
        from voiceloop.vad import SmartTurnModel
        from voiceloop.vad.turn_random import write_random_smart_turn

        turn_file = args.cache / "smart-turn-complete" / "smart-turn-v3.2-cpu.onnx"
        if not turn_file.is_file():
            write_random_smart_turn(turn_file.parent, bias=8.0)
        turn_models["complete"] = SmartTurnModel(turn_file)
    asr_root = args.asr if args.asr is not None else random_asr(args.cache)
    tts_root = args.tts if args.tts is not None else random_tts(args.cache)
    audio = conversation(args.turns, args.gap_s)
    rows = []
    for precision in args.precisions.split(","):
        options = LoopOptions(
            asr=str(asr_root),
            tts=str(tts_root),
            precision=precision,
            asr_threads=args.asr_threads,
            tts_threads=args.tts_threads,
            device=args.device,
        )
        started = time.perf_counter()
        engines = load_engines(options)
        steps = max(1, round(args.reply_max_s * 46.875))
        engines.tts.options.sampling = replace(engines.tts.options.sampling, max_new_tokens=steps)
        if not engines.on_cpu:  # GPU kernels are picked per shape: one unmeasured turn first
            run_file(engines, options, conversation(1, 1.0), Echo(raw=args.raw_echo))
        print(f"{precision}: models loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        silences = [options.vad.end_silence_ms]
        if args.end_silence_ms:
            silences = [int(x) for x in args.end_silence_ms.split(",")]
        for silence in silences:
            choices = (args.preemptive.split(","), args.tts_start.split(","), args.turn.split(","))
            combos = itertools.product(*choices)
            for preemptive, start, turn in combos:
                engines.turn = turn_models[turn]
                if engines.turn is not None:
                    engines.turn.probability(np.zeros(16_000, np.int16))  # warm, as load_engines does
                options.vad = replace(options.vad, end_silence_ms=silence)
                options.preemptive = preemptive == "on"
                options.tts_start = engines.tts.options.start = start  # type: ignore[assignment]
                # as load_engines pairs them: the gate with its slowly growing pieces
                engines.tts.options.stream = SMOOTH_SCHEDULE if start == "smooth" else StreamDecodeOptions()
                for path in args.paths.split(","):
                    handler = Echo(raw=args.raw_echo)
                    if path == "file":
                        metrics = run_file(engines, options, audio, handler)
                    else:  # "pulse", or "pulse+echo": with the chat's default echo handling
                        echo = "auto" if "echo" in path else "off"
                        metrics = run_pulse(engines, options, audio, handler, echo)
                    row = {"precision": precision, "path": path, "end_silence_ms": silence}
                    row["preemptive"], row["tts_start"], row["turn_model"] = options.preemptive, start, turn
                    row.update({"skipped": metrics} if isinstance(metrics, str) else summarise(metrics))
                    print(row, file=sys.stderr)
                    rows.append(row)
        engines.close()
    columns = ["precision", "path", "end_silence_ms", "preemptive", "tts_start", "turn", "turns", *STAGES]
    table = []
    for row in rows:
        cells = [row["precision"], row["path"], str(row.get("end_silence_ms", ""))]
        cells.append("on" if row.get("preemptive") else "off")
        cells.append(str(row.get("tts_start", "fast")))
        cells.append(str(row.get("turn_model", "off")))
        cells.append(str(row.get("turns", row.get("skipped", ""))))
        for name in STAGES:
            value = row.get(name)
            cells.append(f"{value['p50']:.3f} / {value['p95']:.3f}" if value else "")
        table.append(cells)
    print_table(
        "Voice-to-voice (end of speech → first bot sample played), seconds p50 / p95",
        [column.replace("_", " ") for column in columns],
        table,
    )
    result = {
        "machine": finish(machine),
        "turns": args.turns,
        "gap_s": args.gap_s,
        "models": {
            "asr": str(args.asr or "random XLSR-53 large"),
            "tts": str(args.tts or "random ChatTTS, 20 layers"),
        },
        "reply_max_s": args.reply_max_s,
        "echo": "raw transcript" if args.raw_echo else "transcript cut to the spoken utterance's length",
        "goal": {"p50_cpu_s": 0.9, "p50_gpu_s": 0.3},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
