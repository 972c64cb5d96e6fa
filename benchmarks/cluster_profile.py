"""What one call costs, from the measured results, and the capacity of a node that follows from it on paper.

Shared by ``cluster_sim.py``: the simulation and the paper table use the same per-call figures. Everything
is read from ``benchmarks/results/*.json`` at run time, and every figure carries a note naming its file and
field, so a rerun of a benchmark moves the simulation with it.

Core-seconds are RTF x the threads the benchmark ran with: an upper bound on the cores a phase keeps busy
(two threads are not always both busy), hence a conservative cost.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ASR_CONFIG = "C=0.64 L=1 R=0.24"  # the default streaming window (docs/asr.md)


@dataclass
class Profile:
    """What one call costs, per phase, and where each figure came from."""

    asr_core_s: float  # core-seconds per second of user speech
    tts_core_s: float  # core-seconds per second of bot reply
    gpt_share: float  # share of the TTS time spent in GPT steps (what cross-session batching shares)
    batch_marginal: float  # cost of one more row in a batched int8 GEMM, as a share of a 1-row GEMM
    sources: dict[str, str] = field(default_factory=dict)


def _read(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def asr_rtf(name: str, precision: str) -> tuple[float, int, str]:
    """The streaming ASR's RTF at the default window, the threads it ran with, and a note naming both."""
    data = _read(name)
    threads = int(data["args"]["threads"])
    row = next(r for r in data["streaming"] if r["precision"] == precision and r["config"] == ASR_CONFIG)
    rtf = float(row["summary"]["rtf"])
    return (
        rtf,
        threads,
        f"{name}: streaming[{precision}, {ASR_CONFIG}].summary.rtf={rtf:.3f}, threads={threads}",
    )


def tts_rtf(name: str, variant: str) -> tuple[float, float, int, str]:
    """The streaming TTS's RTF, its GPT-only RTF, the threads it ran with, and a note naming them."""
    data = _read(name)
    threads = int(data["machine"].get("threads") or 1)
    row = next(r for r in data["rows"] if r["variant"] == variant)
    note = f"{name}: rows[{variant}].rtf={row['rtf']}, gpt_rtf={row['gpt_rtf']}, threads={threads}"
    return float(row["rtf"]), float(row["gpt_rtf"]), threads, note


def load_profile(asr_file: str = "asr_streaming.json", tts_file: str = "tts.json") -> Profile:
    """Per-call costs of the CPU defaults (int8 ASR, int8 TTS with the ONNX GPT) from one machine's files."""
    asr, asr_threads, asr_note = asr_rtf(asr_file, "int8")
    tts, gpt, tts_threads, tts_note = tts_rtf(tts_file, "voiceloop int8, onnx GPT")
    gemm = _read("int8_engines.json")
    fb = next(r for r in gemm["rows"] if r["engine"] == "fbgemm")
    marginal = (fb["ms_rows_44"] - fb["ms_rows_1"]) / (43 * fb["ms_rows_1"])
    web = _read("webrtc_sessions.json")
    cps = {(r["batching"], r["sessions"]): r["cpu_per_session"] for r in web["rows"] if r["models"] == "full"}
    return Profile(
        asr_core_s=asr * asr_threads,
        tts_core_s=tts * tts_threads,
        gpt_share=min(1.0, gpt / tts),
        batch_marginal=marginal,
        sources={
            "asr": asr_note,
            "tts": tts_note,
            "asr_machine": _read(asr_file)["machine"]["cpu"],
            "tts_machine": _read(tts_file)["machine"]["cpu"],
            "batching_gemm": f"int8_engines.json: rows[fbgemm].ms_rows_1={fb['ms_rows_1']:.1f}, "
            f"ms_rows_44={fb['ms_rows_44']:.1f} ({gemm['machine']['cpu']}); used only with --batching",
            "batching_end_to_end": "webrtc_sessions.json: rows[models=full, sessions=4].cpu_per_session "
            f"batching on {cps.get(('on', 4))} vs off {cps.get(('off', 4))}: no CPU saving measured end to "
            "end, so the simulation's default is no batching gain",
        },
    )


def per_call(asr: float, tts: float, user_s: float, reply_s: float, pause_s: float) -> float:
    """Mean seconds of compute per second of call: each phase's cost weighted by its mean length."""
    return (user_s * asr + reply_s * tts) / (user_s + reply_s + pause_s)


def paper_capacity(
    user_s: float, reply_s: float, pause_s: float, target_busy: float
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Calls per node by arithmetic from single-stream measurements (no batching, no contention counted)."""
    rows, notes = [], {}
    cpu_sets = [
        ("asr_streaming.json", "tts.json"),  # 2-core AMD EPYC, AVX2
        ("asr_streaming-spr.json", "tts-spr.json"),  # 2-core Xeon, AVX-512 + AMX
    ]
    for asr_file, tts_file in cpu_sets:
        profile = load_profile(asr_file, tts_file)
        cost = per_call(profile.asr_core_s, profile.tts_core_s, user_s, reply_s, pause_s)
        cpu = profile.sources["asr_machine"]
        notes[f"cpu {cpu}"] = f"{profile.sources['asr']}; {profile.sources['tts']}"
        for cores in (2, 16):
            rows.append(
                {
                    "node": f"{cores}-core CPU ({cpu}, int8)",
                    "compute_s_per_call_s": round(cost, 3),
                    "calls_at_full_busy": round(cores / cost, 1),
                    "calls_at_target": math.floor(target_busy * cores / cost + 1e-9),
                    "basis": "core-seconds (RTF x threads)" + ("" if cores == 2 else ", 2-core figures x 8"),
                }
            )
    asr, _, asr_note = asr_rtf("asr_streaming-cuda.json", "cuda-fp16")
    tts_rows = _read("tts-cuda.json")["rows"]
    best = min(tts_rows, key=lambda r: r["rtf"])
    tts, _, _, tts_note = tts_rtf("tts-cuda.json", best["variant"])
    gpu = _read("tts-cuda.json")["machine"].get("gpu") or "GPU"
    cost = per_call(asr, tts, user_s, reply_s, pause_s)
    notes[gpu] = f"{asr_note}; {tts_note}"
    rows.append(
        {
            "node": f"1x {gpu} (ASR cuda-fp16, TTS {best['variant'].removeprefix('voiceloop ')})",
            "compute_s_per_call_s": round(cost, 3),
            "calls_at_full_busy": round(1.0 / cost, 1),
            "calls_at_target": math.floor(target_busy / cost + 1e-9),
            "basis": "GPU-seconds of one stream at a time (a lower bound: concurrent streams overlap)",
        }
    )
    rows.append(
        {
            "node": "1x NVIDIA H100",
            "compute_s_per_call_s": None,
            "calls_at_full_busy": None,
            "calls_at_target": None,
            "basis": "no H100 result file in benchmarks/results/: not on paper",
        }
    )
    return rows, notes
