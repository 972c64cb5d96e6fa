"""The ASR's conv feature encoder: the stock transformers module against voiceloop's matmuls.

Why: on CPUs ``Wav2Vec2Checkpoint`` runs the seven conv layers as time-major matmuls
(``voiceloop/asr/conv_features.py``) instead of transformers' channel-major module, which transposes
and copies the whole activation around every per-frame LayerNorm. This times both on the audio a
streaming step feeds the stack (C + R = 0.88 s plus the receptive field) and on 8 s (an offline
pass), and records how far the outputs are apart. The layer shapes are XLSR-53 large's (512 channels,
the default model's); random weights, since the cost is fixed by the shape.

    python benchmarks/conv_features.py [--reps 15] [--threads 2]     # ~1 min of CPU on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import finish, machine_info, print_table
from transformers import Wav2Vec2Config
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeatureEncoder

from voiceloop.asr.conv_features import MatmulConvFeatures

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "conv_features.json"
RATE = 16_000
#: (name, seconds of audio): a streaming step's new audio + lookahead + the stack's 25 ms window; 8 s offline
WINDOWS = (("streaming step", 0.88 + 0.025), ("offline 8 s", 8.0))


def interleaved_ms(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median wall time of each function (ms), run in turn rep by rep so a busy neighbour hits all alike."""
    for fn in fns.values():
        fn()
    walls: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            walls[name].append(time.perf_counter() - started)
    return {name: statistics.median(w) * 1e3 for name, w in walls.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    info = machine_info()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Wav2Vec2Config(feat_extract_norm="layer", conv_bias=True)  # XLSR-53 large's conv stack
    stock = Wav2Vec2FeatureEncoder(config).eval().requires_grad_(False)
    variants = {
        "matmuls (default)": MatmulConvFeatures(stock),
        "int8 matmuls": MatmulConvFeatures(stock, int8=True),
    }
    rows = []
    with torch.inference_mode():
        for window, seconds in WINDOWS:
            audio = torch.randn(1, round(seconds * RATE))
            exact = stock(audio)[0].transpose(0, 1)
            row: dict[str, object] = {"window": window, "seconds": seconds, "frames": int(exact.shape[0])}
            fns: dict[str, Callable[[], object]] = {"stock": lambda audio=audio: stock(audio)}
            fns.update(
                {name: (lambda conv=conv, audio=audio: conv(audio)) for name, conv in variants.items()}
            )
            row.update({f"{name}_ms": ms for name, ms in interleaved_ms(fns, args.reps).items()})
            for name, conv in variants.items():
                out = conv(audio)
                row[f"{name}_max_abs_diff"] = float((out - exact).abs().max())
                row[f"{name}_rel_rms_diff"] = float((out - exact).norm() / exact.norm())
            rows.append(row)
    print_table(
        f"conv feature encoder, {args.threads} threads, median of {args.reps} (ms)",
        ["audio", "stock module", "matmuls", "x stock", "int8 matmuls", "x stock", "matmuls max |diff|"],
        [
            [
                f"{r['window']} ({r['seconds']:.2f} s)",
                f"{r['stock_ms']:.1f}",
                f"{r['matmuls (default)_ms']:.1f}",
                f"{r['stock_ms'] / r['matmuls (default)_ms']:.2f}",  # type: ignore[operator]
                f"{r['int8 matmuls_ms']:.1f}",
                f"{r['stock_ms'] / r['int8 matmuls_ms']:.2f}",  # type: ignore[operator]
                f"{r['matmuls (default)_max_abs_diff']:.1e}",
            ]
            for r in rows
        ],
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": finish(info), "threads": args.threads, "reps": args.reps, "rows": rows}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
