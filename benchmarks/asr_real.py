"""CER of a real wav2vec2 CTC checkpoint, offline vs streaming, on a folder of labelled clips.

Why: the streaming windows (C/L/R) were chosen on cost and on a random-weight proxy; whether they
cost accuracy can only be measured with the trained model on real speech. The model card of the
default checkpoint reports CER 19.03 % on Common Voice zh-CN test (greedy, no language model);
streaming should stay within 1 point of offline.

Input: ``DATA_DIR`` holds ``*.wav`` files with a same-named ``*.txt`` reference each, or a
``manifest.jsonl`` of ``{"audio": "relative/or/absolute.wav", "text": "..."}`` lines. Audio of any
rate/channels is downmixed and resampled to the model's 16 kHz. Offline = ``engine.transcribe``
(one pass); streaming = a ``Wav2Vec2Session`` fed 20 ms int16 frames, then finalised, like the ASR
stage does. CER = character edits / reference characters after NFKC, lower-casing and removing
whitespace and punctuation from both sides (the card's evaluation also strips punctuation).

Run: ``python benchmarks/asr_real.py MODEL_DIR DATA_DIR [--dtype bf16] [--limit 50]``; writes
``benchmarks/results/asr_real.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import unicodedata
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from machine import finish, machine_info, print_table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voiceloop.asr.corpus import char_error_rate  # noqa: E402
from voiceloop.asr.model import Wav2Vec2Checkpoint  # noqa: E402
from voiceloop.asr.streaming import StreamingOptions, Wav2Vec2Engine  # noqa: E402
from voiceloop.audio import float_to_int16  # noqa: E402
from voiceloop.compute import ModelOptions  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "asr_real.json"
FRAME = 320  # 20 ms at 16 kHz, what the ASR stage feeds per call


def normalize_text(text: str) -> str:
    """Compare characters only: NFKC, lower case, no whitespace, punctuation or symbols."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch)[0] not in "PS")


def load_pairs(data_dir: Path) -> list[tuple[Path, str]]:
    """(audio path, reference text) from ``manifest.jsonl`` or from ``*.wav`` + ``*.txt`` pairs."""
    manifest = data_dir / "manifest.jsonl"
    if manifest.is_file():
        pairs = []
        for line in manifest.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                path = Path(entry["audio"])
                pairs.append((path if path.is_absolute() else data_dir / path, str(entry["text"])))
        return pairs
    pairs = []
    for wav in sorted(data_dir.glob("*.wav")):
        txt = wav.with_suffix(".txt")
        if txt.is_file():
            pairs.append((wav, txt.read_text(encoding="utf-8").strip()))
        else:
            print(f"warning: {wav.name} has no {txt.name}; skipped", file=sys.stderr)
    return pairs


def read_audio(path: Path, rate: int) -> np.ndarray:
    """Mono float32 at ``rate`` (downmix, then soxr HQ resampling when needed)."""
    audio, file_rate = sf.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if file_rate != rate:
        mono = soxr.resample(mono, file_rate, rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


async def stream(engine: Wav2Vec2Engine, samples: np.ndarray) -> tuple[str, float, float, int]:
    """Session fed 20 ms int16 frames: (final text, total wall s, finalize wall s, partial count)."""
    session = engine.session()
    partials = 0
    started = time.perf_counter()
    for i in range(0, len(samples), FRAME):
        partials += await session.accept(samples[i : i + FRAME]) is not None
    before_final = time.perf_counter()
    final = await session.finalize()
    done = time.perf_counter()
    await session.aclose()
    return final.text, done - started, done - before_final, partials


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model_dir", type=Path, help="checkpoint directory (config.json, vocab.json, weights)"
    )
    parser.add_argument("data_dir", type=Path, help="*.wav + *.txt pairs, or manifest.jsonl")
    defaults = StreamingOptions()
    parser.add_argument("--chunk-s", type=float, default=defaults.chunk_s)
    parser.add_argument("--left-s", type=float, default=defaults.left_s)
    parser.add_argument("--right-s", type=float, default=defaults.right_s)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument(
        "--int8", action="store_true", help="dynamic int8 nn.Linear (CPU, needs --dtype fp32)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="only the first N clips")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    machine = machine_info(threads=args.threads, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY"))

    pairs = load_pairs(args.data_dir)[: args.limit]
    if not pairs:
        parser.error(f"no (wav, text) pairs found in {args.data_dir}")
    model_options = ModelOptions(
        device=args.device, dtype=args.dtype, quantize="int8" if args.int8 else None, threads=args.threads
    )
    options = StreamingOptions(chunk_s=args.chunk_s, left_s=args.left_s, right_s=args.right_s)
    started = time.perf_counter()
    ckpt = Wav2Vec2Checkpoint.from_pretrained(str(args.model_dir), model_options)
    load_s = time.perf_counter() - started
    ckpt.apply_threads()  # the offline pass runs on this thread, the sessions on the engine's lane
    engine = Wav2Vec2Engine(ckpt, options)
    print(f"loaded {args.model_dir} in {load_s:.1f} s ({ckpt.dtype}, {ckpt.device}); {len(pairs)} clips")
    engine.transcribe(np.zeros(ckpt.sample_rate, np.float32))  # warm-up
    asyncio.run(stream(engine, np.zeros(2 * ckpt.sample_rate, np.int16)))

    rows: list[dict[str, Any]] = []
    for i, (path, ref) in enumerate(pairs):
        samples = float_to_int16(read_audio(path, ckpt.sample_rate))  # both paths get the same int16 input
        t0 = time.perf_counter()
        offline = engine.transcribe(samples).text
        offline_s = time.perf_counter() - t0
        text, stream_s, final_s, partials = asyncio.run(stream(engine, samples))
        rows.append({
            "audio": str(path), "seconds": len(samples) / ckpt.sample_rate, "ref": ref, "offline": offline,
            "streaming": text, "offline_s": offline_s, "streaming_s": stream_s, "finalize_s": final_s,
            "partials": partials,
        })  # fmt: skip
        if i < 5 or i % 25 == 0:
            print(
                f"[{i + 1}/{len(pairs)}] {path.name}: ref {ref!r} | offline {offline!r} | streaming {text!r}"
            )

    refs = [normalize_text(r["ref"]) for r in rows]
    cer_off = char_error_rate(refs, [normalize_text(r["offline"]) for r in rows])
    cer_str = char_error_rate(refs, [normalize_text(r["streaming"]) for r in rows])
    audio_s = sum(r["seconds"] for r in rows)
    summary = {
        "clips": len(rows),
        "audio_s": audio_s,
        "cer_offline": cer_off,
        "cer_streaming": cer_str,
        "cer_difference_points": 100 * (cer_str - cer_off),
        "within_1_point": abs(cer_str - cer_off) <= 0.01,
        "identical_transcripts": sum(r["offline"] == r["streaming"] for r in rows) / len(rows),
        "rtf_offline": sum(r["offline_s"] for r in rows) / audio_s,
        "rtf_streaming_unpaced": sum(r["streaming_s"] for r in rows) / audio_s,
        "finalize_s_median": statistics.median(r["finalize_s"] for r in rows),
    }
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": finish(machine),
        "model": str(args.model_dir),
        "data": str(args.data_dir),
        "model_options": asdict(model_options),
        "streaming_options": asdict(options),
        "summary": summary,
        "clips": rows,
    }
    print_table(
        f"{args.model_dir} on {args.data_dir}",
        [
            "clips",
            "audio min",
            "CER offline",
            "CER streaming",
            "diff (points)",
            "identical",
            "RTF offline",
            "RTF streaming",
            "finalize median s",
        ],
        [
            [
                len(rows),
                f"{audio_s / 60:.1f}",
                f"{cer_off:.2%}",
                f"{cer_str:.2%}",
                f"{summary['cer_difference_points']:+.2f}",
                f"{summary['identical_transcripts']:.1%}",
                f"{summary['rtf_offline']:.3f}",
                f"{summary['rtf_streaming_unpaced']:.3f}",
                f"{summary['finalize_s_median']:.3f}",
            ]
        ],
    )
    print(
        "streaming within 1 CER point of offline:",
        "yes" if summary["within_1_point"] else "NO",
        "(model card, CV zh-CN test, greedy: CER 19.03 %)",
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
