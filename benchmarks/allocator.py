"""glibc heap tuning (``voiceloop.allocator``) on and off, side by side: streaming ASR on CPU.

Each run is a fresh process (the tuning is process-wide and cannot be undone) that builds the
full-size random-weight XLSR-53 large model, int8, and streams pseudo-speech utterances frame by
frame through ``StreamState`` (compute only, no pacing). The settings alternate run by run, so
machine noise falls on both alike. Reported: RTF (compute / audio, finals included), page faults
and kernel CPU time per utterance.

    python benchmarks/allocator.py            # 3 rounds x 2 settings, ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "allocator.json"
SETTINGS = {"glibc defaults": "0", "tuned": "1"}


def child(utterances: int, seconds: float) -> dict[str, object]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import asr_streaming as bench  # the child process only
    import torch

    from voiceloop.allocator import tune_for_inference
    from voiceloop.asr.streaming import StreamingOptions, StreamState, Wav2Vec2Engine
    from voiceloop.audio import int16_to_float

    torch.set_num_threads(2)
    engine = Wav2Vec2Engine(bench.build_checkpoints(["int8"], 0, 2)["int8"], StreamingOptions())
    audios = [int16_to_float(bench.pseudo_speech(seconds, seed)) for seed in range(utterances)]

    def stream(audio) -> None:  # type: ignore[no-untyped-def]
        state = StreamState(engine)
        for start in range(0, len(audio), bench.HOP):
            state.add(audio[start : start + bench.HOP])
            state.step()
        state.finish()

    stream(audios[0])  # warm-up
    runs = []
    for audio in audios:
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        stream(audio)
        wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
        runs.append(
            {
                "rtf": wall / (len(audio) / bench.RATE),
                "page_faults": after.ru_minflt - before.ru_minflt,
                "sys_s": after.ru_stime - before.ru_stime,
            }
        )
    return {"tuned": tune_for_inference(), "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--utterances", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.utterances, args.seconds)))
        return 0
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    for round_ in range(args.rounds):
        names = list(SETTINGS) if round_ % 2 == 0 else list(reversed(SETTINGS))
        for name in names:
            env = {**os.environ, "VOICELOOP_MALLOC_TUNING": SETTINGS[name]}
            cmd = [sys.executable, __file__, "--child", "--utterances", str(args.utterances)]
            cmd += ["--seconds", str(args.seconds)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            assert result["tuned"] == (SETTINGS[name] == "1"), result
            runs[name] += result["runs"]
            print(f"round {round_ + 1} {name}: RTF {[round(r['rtf'], 3) for r in result['runs']]}")
    summary = {
        name: {key: statistics.median(r[key] for r in rs) for key in ("rtf", "page_faults", "sys_s")}
        for name, rs in runs.items()
    }
    base, tuned = summary["glibc defaults"], summary["tuned"]
    print("\n| heap | RTF median | page faults / utterance | kernel CPU s / utterance |")
    print("|---|---:|---:|---:|")
    for name, s in summary.items():
        print(f"| {name} | {s['rtf']:.3f} | {s['page_faults']:.0f} | {s['sys_s']:.2f} |")
    print(f"\ntuned / defaults RTF: {tuned['rtf'] / base['rtf']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": {k: v for k, v in vars(args).items() if k != "out" and k != "child"},
        "summary": summary,
        "ratio_rtf": tuned["rtf"] / base["rtf"],
        "runs": runs,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
