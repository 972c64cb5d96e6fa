"""Streaming ASR cost, latency and agreement for the wav2vec2 engine on this CPU.

Why: the real XLSR-53 Chinese checkpoint (1.3 GB) is not available here, but its *compute* is fixed by
its shape. A full-size random-weight model (24 layers, 1024 hidden, 2845-character head) is built in
memory and driven through the real :class:`voiceloop.asr.streaming.StreamState`, so every cost and
latency below is what the real model would cost. Streaming-vs-offline *transcript* agreement needs a
model that recognises speech: that part uses the trained tiny fixture (``tests/fixtures/tiny-zh-asr``)
on re-synthesised espeak-ng utterances; the random large model only gives frame-level agreement.

Pacing is simulated on the audio clock (deterministic, no sleeping): 20 ms frames arrive in real
time and are handled in order, one at a time, exactly like ``Wav2Vec2Session.accept`` (which awaits
each step); a step starts at ``max(arrival of the frame that made it due, end of the previous
compute)`` and takes its measured wall time. The end-of-speech event follows the last frame (the
utterance includes 0.36 s of trailing silence: the VAD hangover). Final latencies count from the
true end of speech — the last voiced sample, as :func:`pseudo_utterance` built the signal — not from
that event: a plain ``finish()`` includes the hangover, and a speculative final ready before the
speech ended counts as negative (never clamped to 0).

Run: ``python benchmarks/asr_streaming.py`` (10-15 min on 2 cores; ``--quick`` for a smoke run).
Writes ``benchmarks/results/asr_streaming.json`` and prints the tables. Timings are only meaningful
on an otherwise idle machine; the script records the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import cpu_flags, finish, print_table
from machine import machine_info as shared_machine_info
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from voiceloop.asr.corpus import char_error_rate  # noqa: E402
from voiceloop.asr.ctc import StreamingGreedyDecoder  # noqa: E402
from voiceloop.asr.model import Vocabulary, Wav2Vec2Checkpoint  # noqa: E402
from voiceloop.asr.streaming import StreamingOptions, StreamState, Wav2Vec2Engine  # noqa: E402
from voiceloop.audio import int16_to_float  # noqa: E402
from voiceloop.compute import ModelOptions  # noqa: E402
from voiceloop.quantize import int8_engine, int8_linears  # noqa: E402

RATE = 16_000
HOP = 320  # one 20 ms frame at 16 kHz: what the session is fed, and the model's frame rate
HANGOVER_S = 0.36  # the VAD's end_silence_ms default: trailing silence fed before SpeechEnded
VOCAB_SIZE = 2845  # estimated size of the real checkpoint's vocab.json (research notes, section 1)
FIXTURE = ROOT / "tests" / "fixtures" / "tiny-zh-asr"
RESULTS = ROOT / "benchmarks" / "results" / "asr_streaming.json"
GOALS = {"rtf": 0.25, "partial_lag_s": 0.5, "final_latency_s": 0.15, "tiny_identical": 0.95}
#: (C, L, R, left context cached?) — the first is the engine default; "recompute" re-encodes L per step
Config = tuple[float, float, float, bool]
DEFAULT_CONFIG: Config = (0.64, 1.0, 0.24, True)
CONFIGS: list[Config] = [
    DEFAULT_CONFIG,
    (0.64, 1.0, 0.32, True),
    (0.64, 1.0, 0.16, True),
    (0.96, 1.0, 0.24, True),
    (0.64, 1.0, 0.24, False),
    (0.64, 1.0, 0.32, False),
]
FINAL_LEFTS = (0.5, 0.25, 0.0)  # left context tried for the finalisation window (besides the stream's L)
WINDOWS = [0.32, 0.64, 0.96, 1.32, 1.64, 1.96]  # encoder windows timed alone (step and final windows)
SPEC_MARGIN_S = 0.12  # speculative final: silence kept after the speech end before the snapshot
SPEC_LEFTS = (None, 0.5)  # left context of the speculative final (None: the stream's L)


def spec_label(left: float | None) -> str:
    return "speculative" if left is None else f"speculative L={left:g}"


# -- inputs ----------------------------------------------------------------------------------------
def pseudo_speech(seconds: float, seed: int) -> np.ndarray:
    """Deterministic speech-like int16 audio plus ``HANGOVER_S`` of near-silence."""
    return pseudo_utterance(seconds, seed)[0]


def pseudo_utterance(seconds: float, seed: int) -> tuple[np.ndarray, float]:
    """:func:`pseudo_speech`'s audio and its true end of speech in seconds (the end of the last
    voiced sample; the silence and noise floor after it are not speech).

    Cost does not depend on content; this keeps the input normalisation and activations in the
    range real speech gives (voiced syllables with formants and tones, fricatives, short pauses).
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    out = np.zeros(n)
    pos = round(0.1 * RATE)
    speech_end = 0
    while pos < n:
        if rng.random() < 0.12:
            pos += round(rng.uniform(0.1, 0.3) * RATE)
            continue
        dur = rng.uniform(0.16, 0.32)
        m = min(round(dur * RATE), n - pos)
        t = np.arange(m) / RATE
        f0 = rng.uniform(100, 220) * (1 + rng.uniform(-0.25, 0.25) * t / dur)
        phase = 2 * np.pi * np.cumsum(f0) / RATE
        formants = [
            (rng.uniform(300, 850), 90.0),
            (rng.uniform(900, 2300), 130.0),
            (rng.uniform(2400, 3200), 200.0),
        ]
        mean_f0 = float(f0.mean())
        voiced = np.zeros(m)
        for k in range(1, int(4000 / mean_f0)):
            freq = k * mean_f0
            amp = 0.02 + sum(np.exp(-0.5 * ((freq - c) / bw) ** 2) for c, bw in formants)
            voiced += amp * np.sin(k * phase)
        voiced *= np.sin(np.pi * t / dur) ** 0.6
        if rng.random() < 0.3:  # a fricative onset: differenced (high-passed) noise
            f = min(round(0.06 * RATE), m)
            voiced[:f] += 0.3 * np.diff(rng.standard_normal(f + 1)) * np.hanning(f)
        out[pos : pos + m] += voiced
        pos += m
        speech_end = pos
    out *= 10 ** (-20 / 20) / np.sqrt(np.mean(out[np.abs(out) > 1e-6] ** 2))
    out = np.concatenate([out, np.zeros(round(HANGOVER_S * RATE))])
    out += 10 ** (-65 / 20) * rng.standard_normal(len(out))
    return np.clip(np.round(out * 32768), -32768, 32767).astype(np.int16), speech_end / RATE


# -- the full-size random model ----------------------------------------------------------------------
def large_config(vocab_size: int = VOCAB_SIZE) -> Wav2Vec2Config:
    """XLSR-53 large geometry as in the real checkpoint's config (research notes, section 1)."""
    return Wav2Vec2Config(
        vocab_size=vocab_size,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        conv_dim=[512] * 7,
        conv_kernel=[10, 3, 3, 3, 3, 2, 2],
        conv_stride=[5, 2, 2, 2, 2, 2, 2],
        conv_bias=True,
        feat_extract_norm="layer",
        feat_extract_activation="gelu",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
    )


def large_vocab(size: int = VOCAB_SIZE) -> dict[str, int]:
    """The official vocab.json layout: <pad> <s> </s> <unk> | then characters (CJK block stand-ins)."""
    vocab = {token: i for i, token in enumerate(("<pad>", "<s>", "</s>", "<unk>", "|"))}
    for i in range(size - len(vocab)):
        vocab[chr(0x4E00 + i)] = len(vocab)
    return vocab


def vocabulary_of(vocab: dict[str, int]) -> Vocabulary:
    """Through the stock tokenizer, exactly as loading a checkpoint directory would."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.json"
        path.write_text(json.dumps(vocab), encoding="utf-8")
        tokenizer = Wav2Vec2CTCTokenizer(
            str(path),
            unk_token="<unk>",
            pad_token="<pad>",
            bos_token="<s>",
            eos_token="</s>",
            word_delimiter_token="|",
        )
    return Vocabulary.from_processor(tokenizer, size=len(vocab), blank_id=0)


def build_checkpoints(precisions: list[str], seed: int, threads: int) -> dict[str, Wav2Vec2Checkpoint]:
    """One random fp32 model, then a bf16 and a dynamic-int8 copy of it (the same weights)."""
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Vec2ForCTC(large_config()).eval().requires_grad_(False)
    vocab = vocabulary_of(large_vocab())
    params = sum(p.numel() for p in model.parameters())
    built = time.perf_counter() - started
    print(f"random XLSR-53-large model: {params / 1e6:.1f} M parameters, built in {built:.0f} s")
    out: dict[str, Wav2Vec2Checkpoint] = {}
    for precision in precisions:
        if precision == "fp32":
            variant = model
        elif precision == "bf16":
            variant = copy.deepcopy(model).to(torch.bfloat16)
        elif precision in ("int8", "int8-conv", "int8-stockconv"):  # int8-conv: ModelOptions(int8_conv=True)
            variant = quantize_int8(copy.deepcopy(model))
        elif precision.startswith("int8-") and precision[5:] in torch.backends.quantized.supported_engines:
            variant = quantize_int8(copy.deepcopy(model), engine=precision[5:])  # int8-fbgemm etc.
        elif precision.startswith("cuda-"):  # cuda-fp32 / cuda-fp16 / cuda-bf16 on a GPU
            dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision[5:]]
            variant = copy.deepcopy(model).to("cuda", dtype)
        else:
            raise ValueError(f"unknown precision {precision!r}")
        out[precision] = Wav2Vec2Checkpoint(
            variant,
            vocab,
            name=f"random-xlsr53-large-{precision}",
            threads=threads,
            int8_conv=precision == "int8-conv",
        )
        if precision.endswith("stockconv"):  # the transformers conv module instead of the matmuls
            out[precision].matmul_conv = None
    return out


def quantize_int8(model: nn.Module, engine: str | None = None) -> nn.Module:
    """Dynamic int8 ``nn.Linear`` as ``ModelOptions(quantize="int8")``; ``engine`` forces a backend."""
    return int8_linears(model, rows=44, engine=engine)


# -- paced streaming simulation ----------------------------------------------------------------------
class _RecordingDecoder(StreamingGreedyDecoder):
    """Keeps every committed log-prob row, for frame agreement with the offline pass."""

    def __init__(self, vocab: Vocabulary, frame_s: float) -> None:
        super().__init__(vocab, frame_s)
        self.rows: list[np.ndarray] = []

    def commit(self, log_probs: np.ndarray) -> str:
        self.rows.append(np.array(log_probs, copy=True))
        return super().commit(log_probs)


class RecordingState(StreamState):
    """The engine's per-utterance core, unchanged except that committed log-probs are recorded."""

    def __init__(self, engine: Wav2Vec2Engine) -> None:
        super().__init__(engine)
        self.decoder = _RecordingDecoder(self.ckpt.vocab, self.frame_s)

    def committed_log_probs(self) -> np.ndarray:
        rows = self.decoder.rows  # type: ignore[attr-defined]
        return np.concatenate(rows) if rows else np.zeros((0, self.ckpt.vocab_size), np.float32)


def fork(state: StreamState) -> StreamState:
    """An independent copy of a stream (sharing the model), to try several finalisations."""
    return state.fork()


def with_left(state: StreamState, left: float | None) -> StreamState:
    """``state`` with a smaller left context from now on (None: unchanged); trims cached keys/values."""
    if left is not None:
        state.left = round(left / state.frame_s)
        if state.past is not None:
            state.past = state.past.newest(state.left)
    return state


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():  # GPU work is asynchronous: wait for it before reading the clock
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


@dataclass
class StreamRun:
    """One utterance streamed on the simulated audio clock (all times in seconds of audio clock)."""

    audio_s: float
    steps: list[dict[str, float]] = field(default_factory=list)
    finals: dict[str, dict[str, float]] = field(default_factory=dict)
    compute_s: float = 0.0
    agreement: dict[str, float] = field(default_factory=dict)


def frame_time(frames: int) -> float:
    """Audio time at which frame ``frames - 1``'s 25 ms receptive field is complete."""
    return ((frames - 1) * HOP + 400) / RATE


def stream_paced(
    engine: Wav2Vec2Engine,
    audio: np.ndarray,
    *,
    variants: bool,
    offline: np.ndarray | None,
    schedule: str = "session",
    speech_end: float | None = None,
) -> StreamRun:
    """Stream ``audio`` (int16) frame by frame; returns step/final timings and frame agreement.

    ``schedule="session"``: one frame per call, compute awaited (``Wav2Vec2Session``). ``"catchup"``:
    compute in the background and every frame that arrived meanwhile added before the next
    ``due()`` check, so one step can commit several chunks (the engine's catch-up path).
    ``variants`` also times finalisation with a smaller left context and a speculative final.
    ``speech_end``: the true end of speech in seconds (default: ``HANGOVER_S`` before the end of
    ``audio``); final latencies count from it, and the speculative snapshot follows it.
    """
    state = RecordingState(engine)
    n_frames = -(-len(audio) // HOP)
    end_event = len(audio) / RATE
    if speech_end is None:
        speech_end = end_event - HANGOVER_S
    run = StreamRun(audio_s=end_event)
    busy = 0.0
    spec_at = speech_end + SPEC_MARGIN_S
    spec_state: StreamState | None = None
    spec_busy = 0.0
    k = 0
    while k < n_frames:
        arrival = min((k + 1) * HOP, len(audio)) / RATE
        if schedule == "catchup" and busy > arrival:
            last = min(n_frames, int(busy * RATE) // HOP)  # frames fully arrived by `busy`
            last = max(last, k + 1)
            state.add(int16_to_float(audio[k * HOP : last * HOP]))
            now, k = busy, last
            trigger = min(last * HOP, len(audio)) / RATE
        else:
            state.add(int16_to_float(audio[k * HOP : (k + 1) * HOP]))
            now, k = max(arrival, busy), k + 1
            trigger = arrival
        if variants and spec_state is None and trigger >= spec_at:
            spec_state, spec_busy = fork(state), max(now, busy)
        if not state.due():
            continue
        first = state.committed
        _, wall = timed(state.step)
        busy = now + wall
        run.compute_s += wall
        run.steps.append(
            {
                "trigger": trigger,
                "start": now,
                "end": busy,
                "wall": wall,
                "frames": state.committed - first,
                "window_s": (state.committed - state.first_encoded(first) + state.right) * HOP / RATE,
                "lag_commit": busy - frame_time(state.committed),
                "lag_lookahead": busy - trigger,
            }
        )
    start = max(end_event, busy)
    if variants:
        for left in FINAL_LEFTS:
            branch = with_left(fork(state), left)
            run.finals[f"L={left:g}"] = _finish(branch, start, speech_end, offline)
        if spec_state is not None:  # the stream stops stepping once the speculative final is queued
            for left in SPEC_LEFTS:
                branch = with_left(fork(spec_state), left)
                spec = _finish(branch, spec_busy, speech_end, offline)
                spec["started_before_event_s"] = end_event - spec_busy
                run.finals[spec_label(left)] = spec
    remaining = state.ckpt.frames_for(len(state.audio)) - state.committed
    final = _finish(state, start, speech_end, offline)
    final["remaining_s"] = remaining * HOP / RATE
    run.finals = {"stream": final, **run.finals}
    run.compute_s += final["wall"]
    if offline is not None:
        run.agreement = agreement(state, offline)  # type: ignore[arg-type]
    return run


def final_latency(start: float, wall: float, speech_end: float) -> float:
    """Seconds from the true end of speech to a final that started at ``start`` and took ``wall``
    (audio clock). Negative when the final was ready before the speech ended: kept, not clamped."""
    return start + wall - speech_end


def _finish(
    state: StreamState, start: float, speech_end: float, offline: np.ndarray | None
) -> dict[str, float]:
    """Time ``finish()`` started at ``start``; latency counts from the true end of speech."""
    first = state.committed
    window = (state.ckpt.frames_for(len(state.audio)) - state.first_encoded(first)) * HOP / RATE
    _, wall = timed(state.finish)
    out = {"wall": wall, "latency": final_latency(start, wall, speech_end), "window_s": window}
    if offline is not None and isinstance(state, RecordingState):
        lp = state.committed_log_probs()
        n = min(len(lp), len(offline))
        tail = slice(first, n)
        out["agree_final_frames"] = (
            float((lp[tail].argmax(1) == offline[tail].argmax(1)).mean()) if n > first else 1.0
        )
    return out


def agreement(state: RecordingState, offline: np.ndarray) -> dict[str, float]:
    """Frame argmax agreement and log-prob deviation of the committed stream vs the offline pass."""
    lp = state.committed_log_probs()
    n = min(len(lp), len(offline))
    a, b = lp[:n], offline[:n]
    return {
        "frames": float(n),
        "frame_count_diff": float(len(lp) - len(offline)),
        "agree": float((a.argmax(1) == b.argmax(1)).mean()),
        "max_abs_dlogp": float(np.abs(a - b).max()),
        "mean_abs_dlogp": float(np.abs(a - b).mean()),
    }


# -- summaries -----------------------------------------------------------------------------------
def med(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarise(runs: list[StreamRun]) -> dict[str, Any]:
    """Pool steps over runs; medians of per-run RTF and final latency."""
    steps = [s for r in runs for s in r.steps]
    lag_c = [s["lag_commit"] for s in steps]
    lag_l = [s["lag_lookahead"] for s in steps]
    out: dict[str, Any] = {
        "runs": len(runs),
        "rtf": med([r.compute_s / r.audio_s for r in runs]),
        "step_wall_median_s": med([s["wall"] for s in steps]),
        "step_window_s": med([s["window_s"] for s in steps]),
        "lag_commit_median_s": med(lag_c),
        "lag_commit_p90_s": pct(lag_c, 90),
        "lag_commit_max_s": max(lag_c, default=float("nan")),
        "lag_lookahead_median_s": med(lag_l),
        "lag_lookahead_max_s": max(lag_l, default=float("nan")),
    }
    for name in runs[0].finals:
        finals = [r.finals[name] for r in runs if name in r.finals]
        out[f"final[{name}]"] = {key: med([f[key] for f in finals if key in f]) for key in finals[0]}
        out[f"final[{name}]"]["latency_max"] = max(f["latency"] for f in finals)
    if runs[0].agreement:
        out["agreement"] = {key: med([r.agreement[key] for r in runs]) for key in runs[0].agreement}
    return out


# -- window costs (evidence for the finalisation recommendations) ----------------------------------
def window_costs(
    ckpts: dict[str, Wav2Vec2Checkpoint],
    seconds: list[float],
    threads: list[int],
    reps: int,
    audio: np.ndarray,
) -> list[dict[str, Any]]:
    """Median wall time of projecting + encoding one window of cached conv features."""
    rows = []
    samples = int16_to_float(audio)
    for precision, ckpt in ckpts.items():
        feats = ckpt.conv_features(ckpt.normalize(samples))
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for sec in seconds:
                frames = round(sec / 0.02)
                window = feats[:frames]

                def run(ckpt: Wav2Vec2Checkpoint = ckpt, window: torch.Tensor = window) -> None:
                    ckpt.encode(ckpt.project(window))

                run()
                walls = [timed(run)[1] for _ in range(reps)]
                rows.append(
                    {"precision": precision, "threads": n_threads, "window_s": sec, "wall_s": med(walls)}
                )
    torch.set_num_threads(max(threads))
    return rows


# -- trained tiny model: transcripts -------------------------------------------------------------------
def render(item: dict[str, Any]) -> np.ndarray:
    """Re-synthesise one held-out utterance from its recorded espeak and noise parameters."""
    from helpers.speech import espeak, mix_scene

    clip = espeak(item["text"], voice=item["voice"], speed=item["speed"], pitch=item["pitch"])
    audio, _ = mix_scene(
        [clip],
        [item["lead_s"], item["trail_s"]],
        noise=item["noise"],
        snr_db=item["snr_db"],
        seed=item["seed"],
        level_dbfs=item["level_dbfs"],
    )
    return audio


async def session_transcript(engine: Wav2Vec2Engine, audio: np.ndarray) -> tuple[str, int]:
    """Feed 20 ms int16 frames through a real session, then finalise: (final text, partials)."""
    session = engine.session()
    partials = 0
    for i in range(0, len(audio), HOP):
        partials += await session.accept(audio[i : i + HOP]) is not None
    final = await session.finalize()
    await session.aclose()
    return final.text, partials


def tiny_fixture_problem(fixture: Path) -> str | None:
    """Why the tiny-model part cannot run (None when it can)."""
    needed = ["config.json", "vocab.json", "heldout.jsonl"]
    missing = [n for n in needed if not (fixture / n).is_file()]
    if missing:
        return f"{fixture} lacks {', '.join(missing)} (the trained tiny fixture is not there yet)"
    if shutil.which("espeak-ng") is None:
        return "espeak-ng is not installed (needed to re-synthesise the held-out utterances)"
    voices = subprocess.run(["espeak-ng", "--voices=cmn"], capture_output=True, text=True).stdout
    if "cmn-latn-pinyin" not in voices:
        return "espeak-ng has no cmn-latn-pinyin voice (the fixture's voice)"
    return None


def tiny_agreement(
    fixture: Path, threads: int, limit: int | None, group: int, options: StreamingOptions | None = None
) -> dict[str, Any]:
    """Streaming (session, default options) vs ``engine.transcribe`` on the held-out utterances.

    Also concatenations of ``group`` utterances (longer inputs stream through many more steps)
    and the finalisation variants, so their effect on real transcripts is visible.
    """
    ckpt = Wav2Vec2Checkpoint.from_pretrained(str(fixture), ModelOptions(device="cpu", threads=threads))
    engine = Wav2Vec2Engine(ckpt, options or StreamingOptions())
    lines = (fixture / "heldout.jsonl").read_text(encoding="utf-8").splitlines()
    items = [json.loads(line) for line in lines if line.strip()][:limit]
    audios = [render(item) for item in items]
    refs = [item["text"] for item in items]
    trails = [float(item["trail_s"]) for item in items]
    sets = {"heldout": (audios, refs, trails)}
    if group > 1:
        n = len(items) // group * group
        sets[f"concat{group}"] = (
            [np.concatenate(audios[i : i + group]) for i in range(0, n, group)],
            ["".join(refs[i : i + group]) for i in range(0, n, group)],
            [trails[i + group - 1] for i in range(0, n, group)],
        )
    out: dict[str, Any] = {"model": str(fixture), "options": asdict(engine.options)}
    for name, (clips, texts, clip_trails) in sets.items():
        offline = [engine.transcribe(a).text for a in clips]
        streamed, partials = zip(*(asyncio.run(session_transcript(engine, a)) for a in clips), strict=True)
        variants: dict[str, list[str]] = {f"L={left:g}": [] for left in FINAL_LEFTS}
        variants.update({spec_label(left): [] for left in SPEC_LEFTS})
        for audio, trail in zip(clips, clip_trails, strict=True):
            for label, text in final_variants(engine, audio, trail).items():
                variants[label].append(text)
        same = [o == s for o, s in zip(offline, streamed, strict=True)]
        out[name] = {
            "utterances": len(clips),
            "audio_s_median": med([len(a) / RATE for a in clips]),
            "identical": sum(same) / len(same),
            "cer_offline": char_error_rate(texts, offline),
            "cer_streaming": char_error_rate(texts, list(streamed)),
            "partials_median": med([float(p) for p in partials]),
            "variants_identical_to_offline": {
                k: sum(o == v for o, v in zip(offline, vs, strict=True)) / len(vs)
                for k, vs in variants.items()
            },
            "variants_cer": {k: char_error_rate(texts, vs) for k, vs in variants.items()},
            "differences": [
                {"ref": r, "offline": o, "streaming": s}
                for r, o, s in zip(texts, offline, streamed, strict=True)
                if o != s
            ],
        }
    return out


def final_variants(engine: Wav2Vec2Engine, audio: np.ndarray, trail_s: float) -> dict[str, str]:
    """Final texts of one utterance with the finalisation variants (synchronous StreamState).

    The speculative snapshot is taken ``SPEC_MARGIN_S`` after the speech end (``trail_s`` before
    the end of the audio), where a VAD would have seen the silence start.
    """
    state = StreamState(engine)
    spec_at = len(audio) / RATE - trail_s + SPEC_MARGIN_S
    spec: StreamState | None = None
    for i in range(0, len(audio), HOP):
        state.add(int16_to_float(audio[i : i + HOP]))
        if spec is None and (i + HOP) / RATE >= spec_at:
            spec = fork(state)
        if state.due():
            state.step()
    out = {}
    for left in FINAL_LEFTS:
        out[f"L={left:g}"] = with_left(fork(state), left).finish().text
    for left in SPEC_LEFTS:
        out[spec_label(left)] = with_left(fork(spec or state), left).finish().text
    return out


# -- reporting -------------------------------------------------------------------------------------
def native_bf16() -> bool:
    """bf16 matmuls run in hardware (else oneDNN emulates them, far slower than fp32)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def machine_info() -> dict[str, Any]:
    """The shared machine block plus what decides this benchmark's kernels."""
    return shared_machine_info(OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY"), int8_engine=int8_engine())


def config_label(config: Config) -> str:
    c, left, r, cached = config
    return f"C={c:g} L={left:g} R={r:g}" + ("" if cached else " recompute")


def print_tables(results: dict[str, Any]) -> None:
    rows = []
    for row in results["streaming"]:
        s = row["summary"]
        fin = s["final[stream]"]
        sched = "" if row.get("schedule") == "session" else f" ({row.get('schedule')})"
        rows.append([
            row["precision"], f"{row['config']}{sched}", f"{s['step_window_s']:.2f}",
            f"{s['step_wall_median_s']:.3f}", f"{s['rtf']:.3f}",
            f"{s['lag_commit_median_s']:.2f} / {s['lag_commit_p90_s']:.2f} / {s['lag_commit_max_s']:.2f}",
            f"{s['lag_lookahead_median_s']:.2f}", f"{fin['window_s']:.2f}",
            f"{fin['latency']:.3f} / {fin['latency_max']:.3f}",
            f"{s.get('agreement', {}).get('agree', float('nan')):.3f}",
        ])  # fmt: skip
    columns = ["precision", "C / L / R", "window s", "step s", "RTF"]
    columns += ["partial lag (commit) median / p90 / max s", "lag after lookahead median s", "final window s"]
    columns += ["final latency median / max s", "frame agree"]
    print_table("Streaming", columns, rows)
    rows = []
    for row in results["streaming"]:
        if row["config"] != config_label(DEFAULT_CONFIG) or row.get("schedule") != "session":
            continue
        for key, fin in row["summary"].items():
            if key.startswith("final["):
                rows.append([
                    row["precision"], key[6:-1], f"{fin['window_s']:.2f}", f"{fin['wall']:.3f}",
                    f"{fin['latency']:.3f} / {fin['latency_max']:.3f}",
                    f"{fin.get('agree_final_frames', float('nan')):.3f}",
                ])  # fmt: skip
    columns = ["precision", "variant", "final window s", "finish() wall s", "latency median / max s"]
    print_table(
        "Finalisation variants (default C/L/R): final latency after the true end of speech (< 0: before)",
        [*columns, "final-frame agree"],
        rows,
    )
    if results.get("offline"):
        print_table(
            "Offline",
            ["precision", "offline one pass s", "RTF", "frame agree vs fp32"],
            [
                [p, f"{o['wall_s']:.3f}", f"{o['rtf']:.3f}", f"{o.get('agree_vs_fp32', float('nan')):.3f}"]
                for p, o in results["offline"].items()
            ],
        )
    if results.get("window_costs"):
        print_table(
            "Window costs",
            ["precision", "threads", "window s", "encode wall s"],
            [
                [r["precision"], r["threads"], f"{r['window_s']:.2f}", f"{r['wall_s']:.3f}"]
                for r in results["window_costs"]
            ],
        )
    tiny = results.get("tiny")
    if isinstance(tiny, dict):
        rows = []
        for name, t in tiny.items():
            if isinstance(t, dict) and "identical" in t:
                rows.append([
                    name, t["utterances"], f"{t['audio_s_median']:.2f}", f"{t['identical']:.1%}",
                    f"{t['cer_offline']:.2%}", f"{t['cer_streaming']:.2%}",
                ])  # fmt: skip
                for k, v in t["variants_identical_to_offline"].items():
                    rows.append([f"  final {k}", "", "", f"{v:.1%}", "", f"{t['variants_cer'][k]:.2%}"])
        columns = ["tiny set", "utterances", "audio s (median)", "streaming == offline"]
        print_table("Tiny model", [*columns, "CER offline", "CER streaming"], rows)
    else:
        print(f"\ntiny-model transcript agreement: {tiny}")
    print("\nGoals:", json.dumps(results["goals"], indent=1))


def goal_flags(results: dict[str, Any], precision: str) -> dict[str, Any]:
    """The issue's goals for the default C/L/R at ``precision`` (the engine's recommended one)."""
    row = next(
        (
            r
            for r in results["streaming"]
            if r["precision"] == precision
            and r["config"] == config_label(DEFAULT_CONFIG)
            and r.get("schedule") == "session"
        ),
        None,
    )
    flags: dict[str, Any] = {"precision": precision, "config": config_label(DEFAULT_CONFIG), "targets": GOALS}
    if row is not None:
        s = row["summary"]
        flags["rtf"] = {"value": s["rtf"], "met": s["rtf"] <= GOALS["rtf"]}
        lag = s["lag_commit_median_s"]
        flags["partial_lag_s"] = {
            "value": lag,
            "met": lag <= GOALS["partial_lag_s"],
            "lookahead_lag": s["lag_lookahead_median_s"],
        }
        # The pipeline finalises speculatively at the VAD's pause hint (AsrStage), so that is the
        # latency users see; the plain finish() after the event is reported beside it.
        spec = s.get("final[speculative]", s["final[stream]"])["latency"]
        flags["final_latency_s"] = {
            "value": spec,
            "met": spec <= GOALS["final_latency_s"],
            "without_speculation": s["final[stream]"]["latency"],
        }
    tiny = results.get("tiny")
    if isinstance(tiny, dict) and "heldout" in tiny:
        share = tiny["heldout"]["identical"]
        flags["tiny_identical"] = {"value": share, "met": share >= GOALS["tiny_identical"]}
    return flags


def parse_config(text: str) -> Config:
    """``C/L/R`` (cached left context) or ``C/L/R/recompute``."""
    parts = text.split("/")
    if len(parts) == 4 and parts[3] != "recompute":
        raise ValueError(f"config {text!r}: the 4th field may only be 'recompute'")
    c, left, r = (float(x) for x in parts[:3])
    return c, left, r, len(parts) == 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 short utterance, 1 rep, bf16 (int8 without native bf16)",
    )
    parser.add_argument(
        "--precisions",
        default="auto",
        help="comma separated; auto: fp32,int8 + bf16 where the CPU has native bf16; cuda-fp16 etc. on a GPU",
    )
    parser.add_argument(
        "--configs",
        default=",".join("/".join(f"{x:g}" for x in c[:3]) + ("" if c[3] else "/recompute") for c in CONFIGS),
        help="C/L/R[/recompute] in seconds, comma separated (first = the engine default)",
    )
    parser.add_argument("--utterances", type=int, default=3, help="distinct pseudo-speech utterances")
    parser.add_argument("--seconds", type=float, default=8.0, help="speech per utterance (+0.36 s hangover)")
    parser.add_argument("--reps", type=int, default=2, help="repetitions of every utterance")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument(
        "--tiny-limit", type=int, default=None, help="use only the first N held-out utterances"
    )
    parser.add_argument(
        "--tiny-group", type=int, default=4, help="also stream concatenations of N utterances"
    )
    parser.add_argument("--skip-large", action="store_true", help="only the tiny-model transcript part")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument(
        "--recommended", default="auto", help="precision the goal verdicts use (auto: bf16/int8)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--update", action="store_true", help="keep what --out holds for the skipped parts")
    args = parser.parse_args(argv)
    if args.quick:
        args.precisions = "bf16" if native_bf16() else "int8"
        args.utterances, args.reps, args.seconds = 1, 1, 3.0
        args.configs, args.tiny_limit = "0.64/1/0.24,0.64/1/0.24/recompute", args.tiny_limit or 8
    if args.precisions == "auto":
        args.precisions = "fp32,bf16,int8" if native_bf16() else "fp32,int8"
        if not native_bf16():
            print(
                "this CPU has no native bf16 (avx512_bf16/amx_bf16): bf16 is emulated and ~9x slower; skipped"
            )
    if args.recommended == "auto":
        args.recommended = "bf16" if native_bf16() else "int8"
    precisions = args.precisions.split(",")
    configs = [parse_config(c) for c in args.configs.split(",")]
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "goals_targets": GOALS,
        "streaming": [],
    }
    if args.update and args.out.is_file():  # keep the parts of an earlier run that this one skips
        earlier = json.loads(args.out.read_text(encoding="utf-8"))
        if args.skip_large:
            keep = ("machine", "args", "streaming", "offline", "window_costs")
            results.update({k: earlier[k] for k in keep if k in earlier})
            results["machine"]["tiny_run"] = machine_info()
        if args.skip_tiny and "tiny" in earlier:
            results["tiny"] = earlier["tiny"]
    results["final_latency_from"] = (
        "the true end of speech (last voiced sample of the pseudo-speech), not the end of the audio "
        f"({HANGOVER_S} s later); negative: the final was ready before the speech ended"
    )
    started = time.perf_counter()

    if not args.skip_large:
        ckpts = build_checkpoints(precisions, args.seed, args.threads)
        utterances = [pseudo_utterance(args.seconds, args.seed + 1 + i) for i in range(args.utterances)]
        audios = [audio for audio, _ in utterances]
        for ckpt in ckpts.values():  # warm-up: first calls allocate and pick kernels
            ckpt.log_probs(int16_to_float(audios[0][: 2 * RATE]))
        offline: dict[str, list[np.ndarray]] = {p: [] for p in precisions}
        offline_walls: dict[str, list[float]] = {p: [] for p in precisions}
        for audio in audios:
            for precision, ckpt in ckpts.items():
                lp, wall = timed(lambda ckpt=ckpt, audio=audio: ckpt.log_probs(int16_to_float(audio)))
                offline[precision].append(lp)
                offline_walls[precision].append(wall)
        audio_s = len(audios[0]) / RATE
        results["offline"] = {
            p: {"wall_s": med(w), "rtf": med(w) / audio_s} for p, w in offline_walls.items()
        }
        if "fp32" in offline:
            for p in precisions:
                agree = [
                    float((a.argmax(1) == b.argmax(1)).mean())
                    for a, b in zip(offline[p], offline["fp32"], strict=True)
                ]
                results["offline"][p]["agree_vs_fp32"] = med(agree)
        engines = {
            (p, c): Wav2Vec2Engine(
                ckpts[p], StreamingOptions(chunk_s=c[0], left_s=c[1], right_s=c[2], cache_context=c[3])
            )
            for p in precisions
            for c in configs
        }
        jobs = [(p, c, "session") for c in configs for p in precisions]
        if "fp32" in precisions:  # fp32 cannot keep up: also show the engine's catch-up path
            jobs.append(("fp32", configs[0], "catchup"))
        runs: dict[tuple[str, Config, str], list[StreamRun]] = {j: [] for j in jobs}
        for rep in range(args.reps):  # round-robin, so slow drift of the machine hits every cell alike
            for u, audio in enumerate(audios):
                for job in jobs:
                    precision, config, schedule = job
                    variants = config == configs[0] and schedule == "session"
                    run = stream_paced(
                        engines[(precision, config)],
                        audio,
                        variants=variants,
                        offline=offline[precision][u],
                        schedule=schedule,
                        speech_end=utterances[u][1],
                    )
                    runs[job].append(run)
                    s = run.steps
                    print(
                        f"rep {rep} utt {u} {precision:>4} {config_label(config)} {schedule:>7}: "
                        f"RTF {run.compute_s / run.audio_s:.3f}, step {med([x['wall'] for x in s]):.3f} s, "
                        f"final {run.finals['stream']['latency']:.3f} s, "
                        f"agree {run.agreement.get('agree', 0):.3f}",
                        flush=True,
                    )
        for (precision, config, schedule), rs in runs.items():
            results["streaming"].append(
                {
                    "precision": precision,
                    "config": config_label(config),
                    "schedule": schedule,
                    "summary": summarise(rs),
                    "per_run": [
                        {"rtf": r.compute_s / r.audio_s, "steps": len(r.steps), "final": r.finals["stream"]}
                        for r in rs
                    ],
                }
            )
        windows = WINDOWS if not args.quick else [0.64, 1.96]
        results["window_costs"] = window_costs(
            ckpts,
            windows,
            sorted({1, args.threads}),
            3 if args.quick else 5,
            audios[0],
        )
        del ckpts, engines

    if args.skip_tiny:
        results.setdefault("tiny", "skipped (--skip-tiny)")
    elif (problem := tiny_fixture_problem(args.fixture)) is not None:
        print(f"tiny-model transcript agreement skipped: {problem}")
        results["tiny"] = f"skipped: {problem}"
    else:
        results["tiny"] = tiny_agreement(args.fixture, args.threads, args.tiny_limit, args.tiny_group)

    finish(results["machine"].get("tiny_run") or results["machine"])
    results["seconds"] = time.perf_counter() - started
    results["goals"] = goal_flags(results, args.recommended)
    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False, default=float), encoding="utf-8")
    print(f"\nwrote {args.out} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
