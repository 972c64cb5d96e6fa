"""glibc heap tuning (``voiceloop.allocator``) on and off, side by side, for ASR and TTS on CPU.

Each run is a fresh process (the tuning is process-wide and cannot be undone). ``asr``: the
full-size random-weight XLSR-53 large model, int8, streams pseudo-speech frame by frame through
``StreamState`` (compute only, no pacing). ``tts``: full-size random ChatTTS weights, int8, stream
replies of the same length. The settings alternate run by run, so machine noise falls on both
alike. Reported: RTF (compute / audio), page faults and kernel CPU time per utterance.

    python benchmarks/allocator.py            # 3 rounds x 2 settings x 2 workloads, ~10 min

``--gc``: how long one full collection of Python's cyclic GC holds the GIL in a process that has
loaded what ``voiceloop serve`` loads (torch, transformers, aiortc, the server; engines: the bundled
tiny ASR and the 2-layer random ChatTTS, int8), against the same collection inside
``voiceloop.allocator.frozen_heap()``: why run/chat/serve run their loop frozen. Writes
``benchmarks/results/gc_pause.json`` (~1 min).

    python benchmarks/allocator.py --gc [--reps 5]
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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from machine import finish, machine_info, print_table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "allocator.json"
GC_RESULTS = ROOT / "benchmarks" / "results" / "gc_pause.json"
SETTINGS = {"glibc defaults": "0", "tuned": "1"}


def child(workload: str, utterances: int, seconds: float) -> dict[str, object]:
    import torch

    from voiceloop.allocator import tune_for_inference

    torch.set_num_threads(2)
    run = asr_runs if workload == "asr" else tts_runs
    return {"tuned": tune_for_inference(), "runs": run(utterances, seconds)}


def measured(fn: Callable[[], float]) -> dict[str, float]:
    """``fn`` returns the seconds of audio it handled; RTF, page faults and kernel time of it."""
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    audio_s = fn()
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "rtf": wall / audio_s,
        "page_faults": after.ru_minflt - before.ru_minflt,
        "sys_s": after.ru_stime - before.ru_stime,
    }


def asr_runs(utterances: int, seconds: float) -> list[dict[str, float]]:
    """Streaming ASR, int8, full-size random XLSR-53 large: frame by frame, finals included."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import asr_streaming as bench

    from voiceloop.asr.streaming import StreamingOptions, StreamState, Wav2Vec2Engine
    from voiceloop.audio import int16_to_float

    engine = Wav2Vec2Engine(bench.build_checkpoints(["int8"], 0, 2)["int8"], StreamingOptions())
    audios = [int16_to_float(bench.pseudo_speech(seconds, seed)) for seed in range(utterances)]

    def stream(audio: np.ndarray) -> float:
        state = StreamState(engine)
        for start in range(0, len(audio), bench.HOP):
            state.add(audio[start : start + bench.HOP])
            state.step()
        state.finish()
        return len(audio) / bench.RATE

    stream(audios[0])  # warm-up
    return [measured(lambda a=audio: stream(a)) for audio in audios]


def tts_runs(utterances: int, seconds: float) -> list[dict[str, float]]:
    """Streaming TTS, int8 (the default CPU GPT backend), full-size random ChatTTS weights."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import tts as bench

    from voiceloop.compute import ModelOptions
    from voiceloop.tts.chattts.engine import ChatTts, ChatTtsOptions

    root = bench.full_size_assets(ROOT / "benchmarks" / ".cache")
    model = ModelOptions(device="cpu", quantize="int8", threads=2)
    engine = ChatTts.from_pretrained(str(root), ChatTtsOptions(model=model))
    steps = round(seconds * bench.STEPS_PER_SECOND)
    engine.options.sampling = replace(engine.options.sampling, max_new_tokens=steps, min_new_tokens=steps)
    speaker = engine.speaker(engine.random_voice())

    def speak(seed: int) -> float:
        return sum(len(chunk) for chunk in engine.stream(bench.TEXT, speaker, seed=seed)) / engine.sample_rate

    speak(0)  # warm-up
    return [measured(lambda s=seed: speak(s)) for seed in range(1, utterances + 1)]


def gc_pause(reps: int) -> dict[str, object]:
    """Objects the cyclic GC tracks and the wall time of a full collection, plain and frozen (ms)."""
    import gc

    import aiortc  # noqa: F401  (serve's WebRTC stack: part of the heap a served loop carries)

    import voiceloop.serve.server  # noqa: F401
    from voiceloop.allocator import frozen_heap
    from voiceloop.loop import LoopOptions, load_engines

    started = time.perf_counter()
    asr, tts = (
        ROOT / "tests" / "fixtures" / "tiny-zh-asr",
        ROOT / "benchmarks" / ".cache" / "chattts-random-tiny",
    )
    engines = load_engines(LoopOptions(asr=str(asr), tts=str(tts), precision="int8"))
    loaded_s = time.perf_counter() - started

    def collections() -> list[float]:
        walls = []
        for _ in range(reps):
            t = time.perf_counter()
            gc.collect()
            walls.append((time.perf_counter() - t) * 1e3)
        return walls

    tracked = len(gc.get_objects())
    plain = collections()
    with frozen_heap():
        frozen_objects = gc.get_freeze_count()
        frozen = collections()
    return {
        "tracked_objects": tracked,
        "frozen_objects": frozen_objects,
        "full_gc_ms": plain,
        "full_gc_ms_median": statistics.median(plain),
        "frozen_gc_ms": frozen,
        "frozen_gc_ms_median": statistics.median(frozen),
        "engines": {
            "asr": str(asr.relative_to(ROOT)),
            "tts": str(tts.relative_to(ROOT)),
            "precision": "int8",
        },
        "load_s": loaded_s,
        "loaded": type(engines).__name__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="asr,tts", help="comma list of asr,tts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--utterances", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per ASR utterance / TTS reply")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=("asr", "tts"), help=argparse.SUPPRESS)
    parser.add_argument("--gc", action="store_true", help="time full GC collections instead (see above)")
    parser.add_argument("--reps", type=int, default=5, help="collections timed with --gc")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.utterances, args.seconds)))
        return 0
    machine = machine_info()
    if args.gc:
        result = gc_pause(args.reps)
        print_table(
            "full collections of the cyclic GC, after loading serve's imports and engines",
            ["heap", "tracked objects", "full collection ms (median)"],
            [
                ["plain", f"{result['tracked_objects']}", f"{result['full_gc_ms_median']:.0f}"],
                [
                    "frozen_heap()",
                    f"{result['frozen_objects']} frozen",
                    f"{result['frozen_gc_ms_median']:.1f}",
                ],
            ],
        )
        out = GC_RESULTS if args.out == RESULTS else args.out
        record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": finish(machine), **result}
        out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out}")
        return 0
    record: dict[str, object] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "child")},
    }
    for workload in args.workloads.split(","):
        record[workload] = compare(workload, args)
    finish(machine)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def compare(workload: str, args: argparse.Namespace) -> dict[str, object]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    for round_ in range(args.rounds):
        names = list(SETTINGS) if round_ % 2 == 0 else list(reversed(SETTINGS))
        for name in names:
            env = {**os.environ, "VOICELOOP_MALLOC_TUNING": SETTINGS[name]}
            cmd = [sys.executable, __file__, "--child", workload, "--utterances", str(args.utterances)]
            cmd += ["--seconds", str(args.seconds)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            assert result["tuned"] == (SETTINGS[name] == "1"), result
            runs[name] += result["runs"]
            print(f"{workload} round {round_ + 1} {name}: RTF {[round(r['rtf'], 3) for r in result['runs']]}")
    summary = {
        name: {key: statistics.median(r[key] for r in rs) for key in ("rtf", "page_faults", "sys_s")}
        for name, rs in runs.items()
    }
    base, tuned = summary["glibc defaults"], summary["tuned"]
    print_table(
        workload,
        ["heap", "RTF median", "page faults / utterance", "kernel CPU s / utterance"],
        [
            [name, f"{s['rtf']:.3f}", f"{s['page_faults']:.0f}", f"{s['sys_s']:.2f}"]
            for name, s in summary.items()
        ],
    )
    print(f"tuned / defaults RTF: {tuned['rtf'] / base['rtf']:.2f}\n")
    return {"summary": summary, "ratio_rtf": tuned["rtf"] / base["rtf"], "runs": runs}


if __name__ == "__main__":
    raise SystemExit(main())
