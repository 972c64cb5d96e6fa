"""The soak benchmark's verdicts and tables (benchmarks/soak.py): what grew, what was lost, how fast.

Windows: warm-up is the first ``min(60 s, run / 6)``; the first window follows it and the last window
ends the run (``--seconds``: the peers' last turns after it, and their leaving, are not in it), each
``min(60 s, (run - warm-up) / 2)`` long. A resource is flat when the median of its
samples in the last window exceeds the first window's median by no more than its bound
(``soak.BOUNDS``, written into the result).
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

import numpy as np
from machine import print_table
from soak import BOUNDS

KEYS = ("rss_mb", "fds", "tasks", "threads")
#: environment variables that change the server's memory behaviour (recorded in the result)
SERVER_ENV = ("VOICELOOP_MALLOC_TUNING", "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def _num(value: float) -> float | int:
    """Rounded to 0.1, an int when whole (medians of counts read as counts)."""
    value = round(float(value), 1)
    return int(value) if value.is_integer() else value


def windows(duration: float) -> dict[str, list[float]]:
    warm = min(60.0, duration / 6)
    size = min(60.0, (duration - warm) / 2)
    first, last = [warm, warm + size], [duration - size, duration]
    return {"first": [round(t, 1) for t in first], "last": [round(t, 1) for t in last]}


def _in(points: list[tuple[float, float]], span: list[float]) -> list[float]:
    return [v for t, v in points if span[0] <= t < span[1]]


def percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p95": None}
    return {
        "n": len(values),
        "p50": round(float(np.percentile(values, 50)), 3),
        "p95": round(float(np.percentile(values, 95)), 3),
    }


def flatness(samples: list[dict[str, Any]], spans: dict[str, list[float]]) -> dict[str, Any]:
    """Per resource: first- and last-window medians, growth, bound, verdict, slope per minute."""
    out = {}
    after_warm = [s for s in samples if spans["first"][0] <= s["t"] < spans["last"][1]]
    for key in KEYS:
        points = [(s["t"], s[key]) for s in samples]
        first, last = _in(points, spans["first"]), _in(points, spans["last"])
        if not first or not last:
            out[key] = {"first": None, "last": None, "growth": None, "bound": BOUNDS[key], "flat": None}
            continue
        first_median, last_median = statistics.median(first), statistics.median(last)
        growth = last_median - first_median
        slope = None
        if len(after_warm) >= 3:
            t = np.array([s["t"] for s in after_warm]) / 60
            slope = round(float(np.polyfit(t, [s[key] for s in after_warm], 1)[0]), 3)
        out[key] = {
            "first": _num(first_median),
            "last": _num(last_median),
            "growth": round(growth, 2),
            "bound": BOUNDS[key],
            "flat": growth <= BOUNDS[key],
            "slope_per_min": slope,
        }
    return out


def over_time(samples: list[dict[str, Any]], v2v: list[tuple[float, float]], seconds: float) -> list[dict]:
    """Per minute (a sixth of the run when it is under 5 minutes): resource medians, turns, v2v p50."""
    step = 60.0 if seconds >= 300 else seconds / 6
    rows = []
    for i in range(int(np.ceil(seconds / step - 1e-9))):
        span = [i * step, min((i + 1) * step, seconds)]
        inside = [s for s in samples if span[0] <= s["t"] < span[1]]
        latency = _in(v2v, span)
        row: dict[str, Any] = {"from_s": round(span[0], 1), "to_s": round(span[1], 1)}
        for key in (*KEYS, "sessions"):
            row[key] = _num(statistics.median([s[key] for s in inside])) if inside else None
        row["answered"] = len(latency)
        row["v2v_p50"] = percentiles(latency)["p50"]
        rows.append(row)
    return rows


def analyse(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The result file's body (without the machine block)."""
    spans = windows(args.seconds)
    peers, server = raw["peers"], raw["server"]
    peer_v2v = [tuple(p) for r in peers for p in r["v2v"]]
    server_v2v = [(t["t"], t["v2v"]) for t in server["turns"] if t["v2v"] is not None and t["t"] >= 0]
    lost = [{"peer": r["index"], **x} for r in peers for x in r["lost"]]
    refused: dict[str, int] = {}
    for r in peers:
        for status, n in r["refused"].items():
            refused[status] = refused.get(status, 0) + n
    baseline, after = raw["baseline"], raw["after"]
    idle = {
        "baseline": {k: baseline[k] for k in KEYS},
        "after": {k: after[k] for k in KEYS},
        "back_to_baseline": {k: after[k] <= baseline[k] for k in ("fds", "tasks")},
    }
    flat = flatness(server["samples"], spans)
    opened = sum(r["sessions"] for r in peers)
    result = {
        "config": {
            "seconds": args.seconds,
            "peers": args.peers,
            "reconnect_every_turns": args.reconnect_every,
            "barge_every_turns": args.barge_every,
            "sample_s": args.sample_s,
            "reply_max_s": args.reply_max_s,
            "models": "tests/fixtures/tiny-zh-asr + random 2-layer ChatTTS, int8 CPU, 1 thread each",
            # the server inherits these: its heap tuning and its oneDNN / ideep kernel cache sizes
            "server_env": {k: os.environ[k] for k in SERVER_ENV if k in os.environ},
        },
        "duration_s": raw["duration_s"],
        "windows_s": spans,
        "bounds": dict(BOUNDS),
        "flat": flat,
        "idle": idle,
        "sessions": {
            "opened": opened,
            "opened_per_peer": [r["sessions"] for r in peers],
            "reconnects": opened - sum(1 for r in peers if r["sessions"]),
            "lost": len(lost),
            "lost_detail": lost,
            "refused": refused,
            "connect_failures": sum(r["connect_failures"] for r in peers),
        },
        "turns": {
            "spoken": sum(r["turns"] for r in peers),
            "answered": sum(r["answered"] for r in peers),
            "answered_per_peer": [r["answered"] for r in peers],
            "barge_ins": sum(r["barge_ins"] for r in peers),
            "interruptions": sum(r["interruptions"] for r in peers),
            "barge_ins_missed": sum(r["barge_ins_missed"] for r in peers),
            "server_turns": len(server["turns"]),
            "server_turns_interrupted": server["interrupted"],
            "server_turn_errors": server["turn_errors"],
        },
        "v2v_s": {
            "source": "peer: end of the utterance as sent -> first non-silent bot frame received; "
            "server: its per-turn timelines (voice_to_voice)",
            "peer": {name: percentiles(_in(peer_v2v, span)) for name, span in spans.items()},
            "server": {name: percentiles(_in(server_v2v, span)) for name, span in spans.items()},
            "peer_all": percentiles([v for _, v in peer_v2v]),
        },
        "server": {k: server[k] for k in ("exit_code", "tracebacks", "sessions_ended", "counters")},
        "over_time": over_time(server["samples"], peer_v2v, args.seconds),
        "samples": server["samples"],
    }
    if server["tracebacks"] or server["exit_code"]:
        result["server"]["stderr_tail"] = server["stderr_tail"]
    result["ok"] = (
        not lost
        and all(v["flat"] for v in flat.values())
        and all(idle["back_to_baseline"].values())
        and not server["tracebacks"]
    )
    return result


def print_tables(result: dict[str, Any]) -> None:
    spans = result["windows_s"]
    rows = []
    for key, f in result["flat"].items():
        idle = result["idle"]
        rows.append(
            [
                key,
                f["first"],
                f["last"],
                f["growth"],
                f"<= {f['bound']}",
                "yes" if f["flat"] else "NO",
                f.get("slope_per_min"),
                f"{idle['baseline'][key]} -> {idle['after'][key]}",
            ]
        )
    title = (
        f"voiceloop serve soak: {result['config']['peers']} peers, {result['duration_s']:.0f} s; "
        f"medians of the first window {spans['first']} s vs the last {spans['last']} s"
    )
    columns = ["resource", "first", "last", "growth", "bound", "flat", "slope/min", "idle before -> after"]
    print_table(title, columns, rows)
    columns = ["from s", "to s", "RSS MiB", "fds", "tasks", "threads", "sessions", "answered", "v2v p50 s"]
    keys = ["from_s", "to_s", *KEYS, "sessions", "answered", "v2v_p50"]
    over = [[row[k] for k in keys] for row in result["over_time"]]
    print_table("over time (medians of the samples; answered turns and peer v2v p50)", columns, over)
    s, t, v = result["sessions"], result["turns"], result["v2v_s"]

    def pair(d: dict[str, Any]) -> str:
        return "-" if d["p50"] is None else f"{d['p50']:.2f} / {d['p95']:.2f} (n={d['n']})"

    rows = [
        ["sessions opened / reconnects / lost", f"{s['opened']} / {s['reconnects']} / {s['lost']}"],
        ["offers refused (status: n) / failed connects", f"{s['refused'] or '-'} / {s['connect_failures']}"],
        ["turns answered / spoken", f"{t['answered']} / {t['spoken']}"],
        ["answered per peer", ", ".join(str(n) for n in t["answered_per_peer"])],
        [
            "barge-ins / interrupted / missed",
            f"{t['barge_ins']} / {t['interruptions']} / {t['barge_ins_missed']}",
        ],
        ["server turns / turn errors", f"{t['server_turns']} / {t['server_turn_errors']}"],
        ["v2v peer p50 / p95 s, first window", pair(v["peer"]["first"])],
        ["v2v peer p50 / p95 s, last window", pair(v["peer"]["last"])],
        ["v2v server p50 / p95 s, first window", pair(v["server"]["first"])],
        ["v2v server p50 / p95 s, last window", pair(v["server"]["last"])],
        ["verdict", "ok" if result["ok"] else "NOT OK"],
    ]
    print_table("sessions, turns, voice-to-voice", ["", "value"], rows)
