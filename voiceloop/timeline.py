"""Per-turn latency timelines, counters, JSON lines output and p50/p95 summaries.

A user turn is stamped by each stage as it passes (first stamp wins, so "first partial" and
"first text" need no bookkeeping in the stages):

    speech_start ─ speech_end ─ endpoint ─ first_partial ─ final_transcript ─ handler_first_text
      ─ tts_first_audio ─ output_first_sample ─ first_played

``speech_end`` is when the user actually stopped (end of the last voiced frame); ``endpoint`` is
when the VAD declared it (after the hangover). ``output_first_sample`` is when the first bot
sample was handed to the output; ``first_played`` is when it is played, where the output can
tell (simulated devices and file sinks: exactly; PortAudio: DAC time; WebRTC: send time).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

STAMPS = (
    "speech_start",
    "speech_end",
    "endpoint",
    "first_partial",
    "final_transcript",
    "handler_first_text",
    "tts_first_audio",
    "output_first_sample",
    "first_played",
)

#: derived duration -> (from stamp, to stamp). voice_to_voice falls back to the hand-off time when
#: the output cannot tell the play time (``played_known`` is then False).
DURATIONS = {
    "endpointing": ("speech_end", "endpoint"),
    "asr_finalisation": ("endpoint", "final_transcript"),
    "handler_first_text": ("final_transcript", "handler_first_text"),
    "tts_first_audio": ("handler_first_text", "tts_first_audio"),
    "output_queue": ("tts_first_audio", "output_first_sample"),
    "output_buffering": ("output_first_sample", "first_played"),
    "voice_to_voice": ("speech_end", "first_played"),
}


@dataclass
class TurnTimeline:
    """Monotonic stamps (pipeline clock seconds) of one user turn and what happened in it."""

    turn_id: int
    speech_start: float | None = None
    speech_end: float | None = None
    endpoint: float | None = None
    first_partial: float | None = None
    final_transcript: float | None = None
    handler_first_text: float | None = None
    tts_first_audio: float | None = None
    output_first_sample: float | None = None
    first_played: float | None = None
    transcript: str = ""
    reply: str = ""
    played_text: str = ""
    interrupted: bool = False
    #: the reply was generated from a final sent at a pause hint, before the endpoint (stamps from
    #: final_transcript to tts_first_audio may then precede ``endpoint``: negative durations)
    preemptive: bool = False
    discarded: bool = False
    error: str | None = None
    #: the turn model's P(turn complete) at its check (None: not asked), how long the call took (s),
    #: and whether it ended the turn
    turn_probability: float | None = None
    turn_model_s: float | None = None
    ended_by_model: bool = False

    @property
    def played_known(self) -> bool:
        return self.first_played is not None

    def durations(self) -> dict[str, float | None]:
        """Derived durations in seconds (None where a stamp is missing)."""
        out: dict[str, float | None] = {}
        for name, (a, b) in DURATIONS.items():
            start, end = getattr(self, a), getattr(self, b)
            if name == "voice_to_voice" and end is None:
                end = self.output_first_sample
            out[name] = None if start is None or end is None else end - start
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["durations"] = self.durations()
        data["played_known"] = self.played_known
        return data


def summarize(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "n": int(arr.size),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "mean": float(arr.mean()),
        "max": float(arr.max()),
    }


@dataclass
class Metrics:
    """Counters and turn timelines of one pipeline run; optionally streamed as JSON lines.

    Counters that matter: ``dropped.<queue>`` (frames lost to drop-oldest queues),
    ``flushed.<stage>`` (bot output discarded by a barge-in), ``underruns`` (device zero-fill),
    ``handler_errors``/``handler_timeouts``, ``interruptions``. Gauges hold a latest measured
    value (``echo.delay_ms``: where the echo was found relative to the reported play times).
    """

    jsonl: IO[str] | None = None
    counters: Counter[str] = field(default_factory=Counter)
    gauges: dict[str, float] = field(default_factory=dict)
    turns: dict[int, TurnTimeline] = field(default_factory=dict)
    finished: list[TurnTimeline] = field(default_factory=list)

    @classmethod
    def to_file(cls, path: str | Path) -> Metrics:
        return cls(jsonl=open(path, "w", encoding="utf-8"))

    def turn(self, turn_id: int) -> TurnTimeline:
        timeline = self.turns.get(turn_id)
        if timeline is None:
            timeline = self.turns[turn_id] = TurnTimeline(turn_id)
        return timeline

    def stamp(self, turn_id: int, name: str, t: float) -> None:
        """Record ``name`` at ``t`` unless already set (the first occurrence is what counts)."""
        timeline = self.turn(turn_id)
        if getattr(timeline, name) is None:
            setattr(timeline, name, t)

    def retract_reply(self, turn_id: int) -> None:
        """Forget a retracted preemptive reply's stamps; the turn's real reply stamps them anew."""
        timeline = self.turn(turn_id)
        for name in STAMPS[STAMPS.index("final_transcript") :]:
            setattr(timeline, name, None)
        timeline.reply = timeline.played_text = ""
        timeline.error = None

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def gauge(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def finish_turn(self, turn_id: int) -> TurnTimeline | None:
        """Close a turn: moves it to ``finished`` and writes its JSON line. None if unknown."""
        timeline = self.turns.pop(turn_id, None)
        if timeline is None:
            return None
        self.finished.append(timeline)
        self._write({"type": "turn", **timeline.to_dict()})
        return timeline

    def summary(self) -> dict[str, Any]:
        """p50/p95 per derived duration over finished turns, plus counters."""
        per_metric: dict[str, list[float]] = {name: [] for name in DURATIONS}
        for timeline in self.finished:
            for name, value in timeline.durations().items():
                if value is not None:
                    per_metric[name].append(value)
        return {
            "turns": len(self.finished),
            "durations": {k: summarize(v) for k, v in per_metric.items() if v},
            "counters": dict(self.counters),
            **({"gauges": dict(self.gauges)} if self.gauges else {}),
        }

    def close(self) -> dict[str, Any]:
        """Finish open turns, write the summary line and close the JSON lines file."""
        for turn_id in list(self.turns):
            self.finish_turn(turn_id)
        result = self.summary()
        self._write({"type": "summary", **result})
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None
        return result

    def _write(self, record: dict[str, Any]) -> None:
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.jsonl.flush()
