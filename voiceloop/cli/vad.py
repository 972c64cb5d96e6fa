"""``voiceloop vad``: the speech segments of audio files (also a check of the VAD settings)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields

from ..frames import INPUT_RATE
from ..io.files import read_canonical
from ..vad import VadOptions, detect_segments


def _vad_options(args: argparse.Namespace) -> VadOptions:
    given = {
        f.name: getattr(args, f.name) for f in fields(VadOptions) if getattr(args, f.name, None) is not None
    }
    return VadOptions(**given)


def cmd_vad(args: argparse.Namespace) -> int:
    """Print the speech segments of audio files (also a check of the VAD settings)."""
    options = _vad_options(args)
    turn_model = turn = None
    if args.turn_model is not None:
        from ..vad import SmartTurnModel, TurnOptions

        turn = TurnOptions() if args.turn_check_ms is None else TurnOptions(check_ms=args.turn_check_ms)
        turn_model = SmartTurnModel.from_pretrained(args.turn_model)
    results = []
    for path in args.files:
        samples = read_canonical(path)
        segments = detect_segments(samples, options, turn_model=turn_model, turn=turn)
        results.append(
            {
                "file": str(path),
                "duration": round(len(samples) / INPUT_RATE, 3),
                "segments": [
                    {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(s).items()}
                    for s in segments
                ],
            }
        )
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], ensure_ascii=False, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for result in results:
        table = Table(title=f"{result['file']} ({result['duration']:.2f} s)")
        columns = ["#", "start s", "end s", "length s", "note"]
        if turn_model is not None:
            columns.insert(4, "P(complete)")
        for column in columns:
            table.add_column(column, justify="right" if column != "note" else "left")
        for i, seg in enumerate(result["segments"], 1):
            note = (
                "discarded (too short)"
                if seg["discarded"]
                else ("" if seg["reason"] == "silence" else seg["reason"])
            )
            start, end = seg["start"], seg["end"]
            cells = [str(i), f"{start:.2f}", f"{end:.2f}", f"{end - start:.2f}", note]
            if turn_model is not None:
                p = seg["turn_probability"]
                cells.insert(4, "" if p is None else f"{p:.2f}")
            table.add_row(*cells)
        console.print(table)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    vad = sub.add_parser("vad", help="print the speech segments of audio files (WAV/FLAC/OGG)")
    vad.add_argument("files", nargs="+", metavar="FILE")
    vad.add_argument("--json", action="store_true", help="machine-readable output")
    defaults = VadOptions()
    for name in (
        "aggressiveness",
        "start_window_ms",
        "start_voiced_ms",
        "end_silence_ms",
        "pre_roll_ms",
        "min_speech_ms",
        "max_utterance_ms",
        "warmup_ms",
    ):
        vad.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=int,
            default=None,
            help=f"default {getattr(defaults, name)}",
        )
    vad.add_argument(
        "--turn-model",
        metavar="M",
        nargs="?",
        const="pipecat-ai/smart-turn-v3",
        help="also ask an end-of-turn model (Smart Turn v3: hub id, directory or .onnx), as the live loop "
        "does: segments it ends get note turn_model, each its last P(complete)",
    )
    vad.add_argument("--turn-check-ms", type=int, default=None, help="quiet before the model is asked (200)")
    vad.set_defaults(func=cmd_vad)
