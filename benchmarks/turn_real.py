"""An end-of-turn model on the VAD benchmark's scenes: earlier ends for finished turns, at what cost?

Why: ``voiceloop.vad`` lets the VAD end a turn when the model hears it complete after ``check_ms``
of quiet, instead of waiting out the 360 ms hangover. Its latency is measured with random weights
(``voice_to_voice.py --turn``); whether it cuts users off at clause pauses can only be measured with
the real weights. This script runs the real loop's segmentation (``detect_segments``, the same
checks and verdicts as ``VadStage``) with and without the model on the scenes of ``vad_defaults.py``
— espeak-ng Mandarin and English sentences with clause pauses, one-word replies, and two-clause
utterances with an inserted 200..600 ms pause, in silence and in noise — and reports:

* finished turns (sentences, one-word replies): endpoint delay from the true end, and how many the
  model ended;
* splits: sentences cut in two (the model called a clause pause complete), and two-clause
  utterances cut at their inserted pause, per pause length. Without a model the default hangover
  splits none below 500 ms.

espeak's prosody is not a person's; treat this as a smoke test of the model on Mandarin clause
pauses, and prefer recordings of your users (``voiceloop vad FILE --turn-model M``).

Run: ``python benchmarks/turn_real.py [--model pipecat-ai/smart-turn-v3] [--check-ms 200,300]``
(needs the model: hub access or a local file); writes ``benchmarks/results/turn_real.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import vad_defaults as scenes  # noqa: E402
from machine import finish, machine_info, print_table  # noqa: E402

from voiceloop.vad import DEFAULT_TURN_MODEL, SmartTurnModel, TurnOptions, VadOptions, detect_segments  # noqa: E402  # noqa: E402

CONDITIONS = {"clean": (None, None), "white@20dB": ("white", 20), "pink@20dB": ("pink", 20)}


class Timed:
    """Counts a model's calls and their time."""

    def __init__(self, model: SmartTurnModel) -> None:
        self.model, self.calls, self.seconds = model, 0, 0.0

    def probability(self, audio: np.ndarray) -> float:
        started = time.perf_counter()
        try:
            return self.model.probability(audio)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - started


def score(segments, truth) -> dict:
    out = {"delays_ms": [], "by_model": 0, "finished": 0, "split": 0, "missed": 0}
    out["pause_split"] = {p: 0 for p in scenes.PAUSES_MS}
    for t in truth:
        hit = [s for s in segments if s.start < t["end"] and s.end > t["start"]]
        if t["cat"] == "hesitation":
            out["pause_split"][t["pause_ms"]] += len(hit) > 1
            continue
        if t["cat"] not in ("sentence", "short"):
            continue
        if not hit:
            out["missed"] += 1
            continue
        out["finished"] += 1
        out["split"] += len(hit) > 1
        out["delays_ms"].append(1000 * (hit[-1].decided - t["end"]))
        out["by_model"] += hit[-1].reason == "turn_model"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_TURN_MODEL, help="hub id, directory or .onnx file")
    parser.add_argument("--check-ms", default="200", help="comma list of TurnOptions.check_ms, a row each")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help=f"of {', '.join(CONDITIONS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "turn_real.json")
    args = parser.parse_args()
    machine = machine_info()
    model = Timed(SmartTurnModel.from_pretrained(args.model))
    clips = scenes.build_clips()
    configs = [None, *(int(ms) for ms in args.check_ms.split(","))]
    totals = {
        c: {"delays_ms": [], "by_model": 0, "finished": 0, "split": 0, "missed": 0, "calls": 0, "s": 0.0}
        for c in configs
    }
    for c in totals.values():
        c["pause_split"] = {p: 0 for p in scenes.PAUSES_MS}
    for index, name in enumerate(args.conditions.split(",")):
        noise, snr = CONDITIONS[name]
        scene = scenes.build_scene(clips, noise, snr, seed=index)
        for check_ms in configs:
            calls, seconds = model.calls, model.seconds
            turn = None if check_ms is None else TurnOptions(check_ms=check_ms)
            segments = detect_segments(
                scene["signal"], VadOptions(), turn_model=model if turn else None, turn=turn
            )
            result, total = score(segments, scene["truth"]), totals[check_ms]
            for key in ("delays_ms", "by_model", "finished", "split", "missed"):
                total[key] += result[key]
            for p, n in result["pause_split"].items():
                total["pause_split"][p] += n
            total["calls"] += model.calls - calls
            total["s"] += model.seconds - seconds
        print(f"  {name} done", file=sys.stderr)
    rows = []
    for check_ms, t in totals.items():
        d = t["delays_ms"]
        row = {
            "check_ms": check_ms,
            "finished_turns": t["finished"],
            "ended_by_model": t["by_model"],
            "endpoint_delay_ms": {
                "p50": round(float(np.median(d)), 1),
                "p95": round(float(np.percentile(d, 95)), 1),
            },
            "sentence_splits": t["split"],
            "missed": t["missed"],
            "inserted_pause_splits": t["pause_split"],
            "model_calls": t["calls"],
            "model_ms_per_call": round(1000 * t["s"] / t["calls"], 1) if t["calls"] else None,
        }
        rows.append(row)
    print_table(
        "end-of-turn model on the VAD scenes",
        [
            "check ms",
            "finished",
            "by model",
            "delay p50 / p95 ms",
            "splits",
            f"inserted-pause splits {scenes.PAUSES_MS}",
        ],
        [
            [
                "none" if r["check_ms"] is None else r["check_ms"],
                r["finished_turns"],
                r["ended_by_model"],
                f"{r['endpoint_delay_ms']['p50']:.0f} / {r['endpoint_delay_ms']['p95']:.0f}",
                r["sentence_splits"],
                " ".join(str(n) for n in r["inserted_pause_splits"].values()),
            ]
            for r in rows
        ],
    )
    result = {
        "model": args.model,
        "file": str(model.model.path),
        "conditions": args.conditions.split(","),
        "machine": finish(machine),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
