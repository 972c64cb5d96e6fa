"""benchmarks/asr_streaming.py's final-latency reference: the true end of speech, never clamped."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.asr_fixtures import make_tiny_checkpoint

from voiceloop.asr.streaming import Wav2Vec2Engine

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
bench = importlib.import_module("asr_streaming")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pseudo_utterance_ends_at_its_last_voiced_sample() -> None:
    for seed in (1, 2, 3):
        audio, speech_end = bench.pseudo_utterance(2.0, seed)
        assert np.array_equal(audio, bench.pseudo_speech(2.0, seed))
        end = round(speech_end * bench.RATE)
        assert end <= len(audio) - round(bench.HANGOVER_S * bench.RATE)
        floor = 10 ** (-65 / 20) * 32768  # the noise floor's RMS in int16 units
        after = audio[end:].astype(np.float64)
        assert np.sqrt(np.mean(after**2)) < 1.2 * floor, "after the speech end: only the noise floor"
        assert np.abs(after).max() < 6 * floor
        before = audio[end - 160 : end].astype(np.float64)  # the last 10 ms of speech
        assert np.sqrt(np.mean(before**2)) > 10 * floor


def test_final_latency_is_signed() -> None:
    assert bench.final_latency(start=3.0, wall=0.1, speech_end=2.64) == pytest.approx(0.46)
    assert bench.final_latency(start=2.5, wall=0.04, speech_end=2.64) == pytest.approx(-0.1)


def test_stream_paced_counts_from_the_speech_end(tmp_path: Path, monkeypatch) -> None:
    """With every compute taking a fixed 10 ms the schedule is exact: the plain final starts at the
    end of the audio, and its latency is measured from the speech end given, negative included."""
    engine = Wav2Vec2Engine.from_pretrained(str(make_tiny_checkpoint(tmp_path, layout="2021", seed=3)))
    monkeypatch.setattr(bench, "timed", lambda fn: (fn(), 0.01))
    audio, speech_end = bench.pseudo_utterance(1.5, 4)
    end_event = len(audio) / bench.RATE
    run = bench.stream_paced(engine, audio, variants=True, offline=None, speech_end=speech_end)
    busy = max(step["end"] for step in run.steps)
    start = max(end_event, busy)
    assert run.finals["stream"]["latency"] == pytest.approx(start + 0.01 - speech_end)
    assert run.finals["stream"]["latency"] > bench.HANGOVER_S  # the hangover is part of the wait
    spec = run.finals["speculative"]
    assert spec["latency"] == pytest.approx(end_event - spec["started_before_event_s"] + 0.01 - speech_end)
    assert spec["latency"] < run.finals["stream"]["latency"]
    # A final that comes before the speech end reads negative, not 0.
    early = bench.stream_paced(engine, audio, variants=False, offline=None, speech_end=start + 0.5)
    assert early.finals["stream"]["latency"] == pytest.approx(-0.49)
