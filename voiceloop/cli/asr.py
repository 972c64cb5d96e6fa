"""``voiceloop transcribe`` and ``voiceloop asr ...`` (export-onnx, finetune)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..asr.base import DEFAULT_MODEL
from ..frames import FRAME_SAMPLES, CharInfo, FinalTranscript
from ..io.files import read_canonical

# torch/transformers load lazily: `voiceloop --help` and `voiceloop vad` stay fast.
if TYPE_CHECKING:
    from ..asr.streaming import Wav2Vec2Engine

# Window defaults shown in --help; StreamingOptions is the source of truth (checked by a test).
DEFAULT_WINDOW = {"chunk_s": 0.64, "left_s": 1.0, "right_s": 0.24}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="hub id or local directory (default: %(default)s)"
    )
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--int8", action="store_true", help="CPU int8 dynamic quantization of linear layers")
    parser.add_argument(
        "--int8-conv",
        action="store_true",
        help="with --int8 (implied): the conv feature encoder in int8 too (faster, slightly less exact: "
        "benchmarks/asr_streaming.py)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for the ASR model")
    parser.add_argument("--chunk-s", type=float, default=DEFAULT_WINDOW["chunk_s"], help="streaming chunk C")
    parser.add_argument("--left-s", type=float, default=DEFAULT_WINDOW["left_s"], help="left context L")
    parser.add_argument("--right-s", type=float, default=DEFAULT_WINDOW["right_s"], help="lookahead R")
    parser.add_argument(
        "--recompute-context",
        action="store_true",
        help="re-encode the left context L every step instead of reusing its cached keys/values (slower)",
    )


def load_engine(args: argparse.Namespace) -> Wav2Vec2Engine:
    from ..asr.streaming import StreamingOptions, Wav2Vec2Engine
    from ..compute import ModelOptions

    streaming = StreamingOptions(
        chunk_s=args.chunk_s,
        left_s=args.left_s,
        right_s=args.right_s,
        cache_context=not getattr(args, "recompute_context", False),
    )
    int8_conv = bool(getattr(args, "int8_conv", False))
    if args.backend == "onnx":
        if int8_conv:
            raise ValueError("--int8-conv is for the torch backend (the ONNX export keeps its conv in fp32)")
        from ..asr.onnx import OnnxCheckpoint

        if args.device not in ("auto", "cpu") or args.dtype != "fp32":
            raise ValueError("--backend onnx runs on the CPU in fp32 (use --int8 for the quantized encoder)")
        checkpoint = OnnxCheckpoint.from_directory(
            args.model, threads=args.threads, int8=True if args.int8 else None
        )
        return Wav2Vec2Engine(checkpoint, streaming)
    options = ModelOptions(
        device=args.device,
        dtype=args.dtype,
        quantize="int8" if args.int8 or int8_conv else None,
        threads=args.threads,
        int8_conv=int8_conv,
    )
    return Wav2Vec2Engine.from_pretrained(args.model, options, streaming)


def _chars_json(chars: list[CharInfo]) -> list[dict[str, Any]]:
    return [
        {
            "char": c.char,
            "confidence": round(c.confidence, 4),
            "start": round(c.start, 3),
            "end": round(c.end, 3),
        }
        for c in chars
    ]


async def _stream_file(engine: Wav2Vec2Engine, frames: list[np.ndarray], show: bool) -> FinalTranscript:
    """Feed 20 ms frames through a session; print text as it stabilises (stable prefix only)."""
    session = engine.session()
    printed = 0
    for frame in frames:
        partial = await session.accept(frame)
        if partial is not None and show and partial.stable_len > printed:
            sys.stdout.write(partial.text[printed : partial.stable_len])
            sys.stdout.flush()
            printed = partial.stable_len
    final = await session.finalize()
    if show:
        print(final.text[printed:])
    return final


def cmd_transcribe(args: argparse.Namespace) -> int:
    engine = load_engine(args)
    results = []
    for path in args.files:
        audio = read_canonical(path)
        if not len(audio):
            audio = np.zeros(FRAME_SAMPLES, np.int16)
        frames = [audio[i : i + FRAME_SAMPLES] for i in range(0, len(audio), FRAME_SAMPLES)]
        started = time.perf_counter()
        if args.stream:
            if not args.json and len(args.files) > 1:
                print(f"{path}: ", end="")
            final = asyncio.run(_stream_file(engine, frames, show=not args.json))
        else:
            final = engine.transcribe(audio)
            if not args.json:
                print(f"{path}: {final.text}" if len(args.files) > 1 else final.text)
        elapsed = time.perf_counter() - started
        duration = len(audio) / engine.sample_rate
        results.append(
            {
                "file": str(path),
                "text": final.text,
                "chars": _chars_json(final.chars),
                "duration": round(duration, 3),
                "rtf": round(elapsed / duration, 3) if duration else None,
                "mode": "stream" if args.stream else "offline",
            }
        )
    engine.lane.close()
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], ensure_ascii=False, indent=2))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    transcribe = sub.add_parser("transcribe", help="speech to text with the streaming wav2vec2 CTC engine")
    transcribe.add_argument("files", nargs="+", metavar="FILE")
    transcribe.add_argument(
        "--stream", action="store_true", help="feed 20 ms frames; print text as it stabilises"
    )
    transcribe.add_argument("--json", action="store_true", help="text, characters with confidences and times")
    add_model_arguments(transcribe)
    transcribe.set_defaults(func=cmd_transcribe)

    asr = sub.add_parser("asr", help="ASR model tools: export-onnx, finetune")
    asr_sub = asr.add_subparsers(dest="asr_command", metavar="ASR_COMMAND", required=True)
    from ..asr.finetune import add_parser as add_finetune_parser
    from ..asr.onnx_export import add_parser as add_onnx_parser  # imports onnxruntime lazily, when used

    add_onnx_parser(asr_sub)
    add_finetune_parser(asr_sub)
