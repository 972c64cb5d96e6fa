"""When the pause hint and a turn model's check fire, with and without the quiet-tail rule.

Why: WebRTC keeps calling audio "voiced" for 40..120 ms after speech stops. The hangover's length
is fixed by split measurements (``vad_defaults.py``), but the pause hint (the ASR's early final,
a preemptive reply) and a turn model's check (``voiceloop.vad``) only need the speech to have
stopped, so ``VadOptions.quiet_tail_db`` lets frames far below the utterance's recent loud ones
count as quiet for them. This script measures the gain (true speech end → hint / check) and the
cost (hints and checks at pauses inside an utterance, where the speech then goes on) on the
``vad_defaults.py`` scenes at >= 20 dB SNR and in silence.

Run: ``python benchmarks/quiet_tail.py`` (about a minute); writes ``benchmarks/results/quiet_tail.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import vad_defaults as scenes  # noqa: E402
from machine import finish, machine_info, print_table  # noqa: E402

from voiceloop.frames import AudioFrame, SpeechEnded, SpeechPaused, SpeechStarted  # noqa: E402
from voiceloop.vad import (  # noqa: E402
    Endpointer,
    TurnOptions,
    VadOptions,
)

SETTINGS = [0, 20, 30]  # quiet_tail_db; 0 = off
CHECK_FRAMES = TurnOptions().check_ms // 20


def utterances(options: VadOptions, decisions: list[bool], frames: list[AudioFrame]) -> list[dict]:
    """Each utterance's span, its pause hints and the times a default turn check would fire."""
    endpointer = Endpointer(options, scenes.Replay(decisions))
    done: list[dict] = []
    current: dict | None = None
    for frame in frames:
        for event in endpointer.process(frame):
            if isinstance(event, SpeechStarted):
                current = {"start": event.stream_start, "hints": [], "checks": []}
            elif isinstance(event, SpeechPaused) and current is not None:
                current["hints"].append(event.time)
            elif isinstance(event, SpeechEnded) and current is not None:
                current["end"] = event.stream_end
                done.append(current)
                current = None
        if current is not None and endpointer.quiet_frames == CHECK_FRAMES:
            current["checks"].append(frame.capture_time + 0.02)
    return done


def main() -> None:
    machine = machine_info()
    clips = scenes.build_clips()
    stats = {
        q: {"hint_ms": [], "check_ms": [], "inner_hints": 0, "inner_checks": 0, "utterances": 0}
        for q in SETTINGS
    }
    for index, (noise, snr) in enumerate(scenes.CONDITIONS):
        if snr is not None and snr < 20:
            continue
        scene = scenes.build_scene(clips, noise, snr, seed=index)
        x = scene["signal"]
        frames = scenes.scene_frames(x)
        decisions = scenes.decisions(x, 3)
        for q in SETTINGS:
            found = utterances(VadOptions(quiet_tail_db=q, max_utterance_ms=None), decisions, frames)
            s = stats[q]
            for truth in scene["truth"]:
                if truth["cat"] not in ("sentence", "short"):
                    continue
                hit = [u for u in found if u["start"] < truth["end"] and u["end"] > truth["start"]]
                if len(hit) != 1:
                    continue
                s["utterances"] += 1
                for name, key in (("hints", "hint_ms"), ("checks", "check_ms")):
                    times = hit[0][name]
                    if times:
                        s[key].append(1000 * (times[-1] - truth["end"]))
                        s["inner_" + name] += len(times) - 1
        print(f"  {'clean' if noise is None else f'{noise}@{snr}dB'} done", file=sys.stderr)
    rows = []
    for q, s in stats.items():
        row = {
            "quiet_tail_db": q,
            "utterances": s["utterances"],
            "hint_delay_ms": {
                "p50": float(np.median(s["hint_ms"])),
                "p95": float(np.percentile(s["hint_ms"], 95)),
            },
            "inner_hints": s["inner_hints"],
            "check_delay_ms": {
                "p50": float(np.median(s["check_ms"])),
                "p95": float(np.percentile(s["check_ms"], 95)),
            },
            "inner_checks": s["inner_checks"],
        }
        rows.append(row)
    print_table(
        "pause hint and turn check after the true speech end",
        ["quiet_tail_db", "utts", "hint med / p95 ms", "inner hints", "check med / p95 ms", "inner checks"],
        [
            [
                r["quiet_tail_db"],
                r["utterances"],
                f"{r['hint_delay_ms']['p50']:.0f} / {r['hint_delay_ms']['p95']:.0f}",
                r["inner_hints"],
                f"{r['check_delay_ms']['p50']:.0f} / {r['check_delay_ms']['p95']:.0f}",
                r["inner_checks"],
            ]
            for r in rows
        ],
    )
    out = ROOT / "benchmarks" / "results" / "quiet_tail.json"
    result = {
        "machine": finish(machine),
        "scenes": "vad_defaults.py, clean and >= 20 dB SNR; sentences and one-word replies found as one "
        "utterance; delays from the true speech end",
        "pause_hint_ms": VadOptions().pause_hint_ms,
        "check_ms": TurnOptions().check_ms,
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
