"""End-of-turn model: Smart Turn v3 graphs in the released layout (random weights, built here) loaded
through the public path, and the VAD ending a turn early on the model's word — on a virtual clock."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
from helpers.fakes import Collect, ScriptedVoice, frames_of

from voiceloop.clock import run
from voiceloop.frames import SpeechEnded
from voiceloop.io import FileSource
from voiceloop.pipeline import Pipeline
from voiceloop.timeline import Metrics
from voiceloop.vad import (
    SmartTurnModel,
    TurnModelError,
    TurnModelNotAvailable,
    TurnOptions,
    VadOptions,
    VadStage,
)
from voiceloop.vad.smart_turn import DEFAULT_FILE
from voiceloop.vad.turn_random import build_module, write_random_smart_turn

TINY = dict(layers=1, width=32, heads=2, ffn=64)
VAD = VadOptions(end_silence_ms=360, pause_hint_ms=100, pre_roll_ms=200, warmup_ms=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A directory like the hub repo: the fp32 (gpu) and int8 (cpu) files of one random model."""
    d = tmp_path_factory.mktemp("smart-turn")
    write_random_smart_turn(d, filename="smart-turn-v3.2-gpu.onnx", seed=3, **TINY)
    write_random_smart_turn(d, filename=DEFAULT_FILE, seed=3, **TINY)
    return d


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * 16_000)) / 16_000
    return (np.sin(2 * np.pi * 180 * t) * 4000 + rng.normal(0, 500, t.size)).astype(np.int16)


def test_the_released_layout_loads_from_a_directory_a_file_and_matches_torch(tiny_dir) -> None:
    import torch

    model = SmartTurnModel.from_pretrained(str(tiny_dir))
    assert model.path.name == DEFAULT_FILE  # the newest CPU build is the directory's default
    fp32 = SmartTurnModel.from_pretrained(str(tiny_dir), filename="smart-turn-v3.2-gpu.onnx")
    same = SmartTurnModel.from_pretrained(str(tiny_dir / "smart-turn-v3.2-gpu.onnx"))
    audio = speechlike(2.5)
    features = fp32.features(audio)
    assert features.shape == (1, 80, 800) and features.dtype == np.float32
    with torch.no_grad():
        expected = float(build_module(seed=3, **TINY)(torch.from_numpy(features)))
    assert fp32.probability(audio) == pytest.approx(expected, abs=1e-5)
    assert same.probability(audio) == fp32.probability(audio)
    assert 0.0 < model.probability(audio) < 1.0
    assert model.probability(audio) == pytest.approx(expected, abs=0.05)  # int8 weights


def test_features_keep_the_last_8_seconds_left_padded_and_take_int16_or_float(tiny_dir) -> None:
    model = SmartTurnModel.from_pretrained(str(tiny_dir))
    audio = speechlike(10.0, seed=1)
    last8 = audio[-8 * 16_000 :]
    np.testing.assert_array_equal(model.features(audio), model.features(last8))
    short = audio[:16_000]
    padded = np.concatenate([np.zeros(7 * 16_000, np.int16), short])
    np.testing.assert_array_equal(model.features(short), model.features(padded))
    np.testing.assert_allclose(
        model.features(short), model.features(short.astype(np.float32) / 32768), atol=1e-5
    )
    assert 0.0 < model.probability(np.zeros(0, np.int16)) < 1.0  # empty: all silence, still an answer


@pytest.mark.parametrize("audio", [np.zeros((2, 16_000), np.int16), np.zeros(16_000, np.int32), [0.0] * 100])
def test_bad_audio_is_a_typed_error(tiny_dir, audio) -> None:
    model = SmartTurnModel.from_pretrained(str(tiny_dir))
    with pytest.raises(TurnModelError):
        model.probability(audio)


def test_missing_models_and_wrong_graphs_say_what_to_do(tmp_path, monkeypatch) -> None:
    with pytest.raises(TurnModelNotAvailable, match="--turn-model DIR"):
        SmartTurnModel.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(TurnModelNotAvailable, match="holds no"):
        SmartTurnModel.from_pretrained(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TurnModelNotAvailable, match="HF_HUB_OFFLINE"):
        SmartTurnModel.from_pretrained("pipecat-ai/smart-turn-v3")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(TurnModelError, match="not a loadable ONNX graph"):
        SmartTurnModel.from_pretrained(str(tmp_path / "junk.onnx"))


def test_a_graph_with_another_input_is_refused(tmp_path) -> None:
    import torch

    path = tmp_path / "other.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            torch.nn.Linear(4, 1), (torch.zeros(1, 4),), str(path), input_names=["x"], dynamo=False
        )
    with pytest.raises(TurnModelError, match="not a Smart Turn v3 graph"):
        SmartTurnModel(path)


def test_bias_decides_a_random_models_verdict(tmp_path) -> None:
    audio = speechlike(1.0)
    yes = SmartTurnModel(write_random_smart_turn(tmp_path, filename="yes.onnx", bias=8.0, **TINY))
    no = SmartTurnModel(write_random_smart_turn(tmp_path, filename="no.onnx", bias=-8.0, **TINY))
    assert yes.probability(audio) > 0.99 and no.probability(audio) < 0.01


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(check_ms=0),
        dict(threshold=0.0),
        dict(threshold=1.5),
        dict(incomplete_silence_ms=100),
        dict(timeout_ms=-1),
    ],
)
def test_options_are_checked(kwargs) -> None:
    with pytest.raises(TurnModelError):
        TurnOptions(**kwargs)


class FakeTurnModel:
    """P(complete) by script, recording the audio it was shown; ``fail`` raises, ``block`` hangs."""

    def __init__(self, probabilities: list[float], fail: bool = False, block: threading.Event | None = None):
        self.probabilities = list(probabilities)
        self.fail, self.block = fail, block
        self.seen: list[int] = []

    def probability(self, audio: np.ndarray) -> float:
        self.seen.append(len(audio))
        if self.block is not None:
            self.block.wait(5)
        if self.fail:
            raise RuntimeError("model exploded")
        return self.probabilities.pop(0)


def segment(speech, model, *, turn: TurnOptions | None = None, seconds: float = 4.0, clock: str = "virtual"):
    sink = Collect()
    vad = VadStage(VAD, detector=ScriptedVoice(speech), turn_model=model, turn=turn)
    metrics = Metrics()
    pipeline = Pipeline([FileSource(frames_of(seconds), sample_rate=16_000), vad, sink], metrics=metrics)
    run(pipeline.run(), clock=clock)
    ends = [f for f in sink.frames if isinstance(f, SpeechEnded)]
    return ends, metrics, sink


def test_a_turn_the_model_hears_complete_ends_at_the_check_not_after_the_hangover() -> None:
    plain, *_ = segment([(0.5, 1.5)], None)
    model = FakeTurnModel([0.9])
    ends, metrics, sink = segment([(0.5, 1.5)], model)
    assert [e.reason for e in plain] == ["silence"] and [e.reason for e in ends] == ["turn_model"]
    assert plain[0].time - plain[0].speech_time == pytest.approx(0.36)
    assert ends[0].time - ends[0].speech_time == pytest.approx(0.2)  # 200 ms of silence, then the verdict
    assert ends[0].stream_end == plain[0].stream_end == pytest.approx(1.5)
    # the model heard the utterance: pre-roll, speech and the 200 ms of silence so far
    assert model.seen == [round((0.2 + 1.0 + 0.2) * 16_000)]
    turn = metrics.turn(ends[0].turn_id)
    assert turn.turn_probability == pytest.approx(0.9) and turn.ended_by_model
    assert turn.endpoint - turn.speech_end == pytest.approx(0.2)
    assert metrics.counters["turn.complete"] == 1
    # the pause hint still came first, so the ASR's early final covers the whole utterance
    kinds = [type(f).__name__ for f in sink.frames if type(f).__name__ != "AudioFrame"]
    assert kinds.index("SpeechPaused") < kinds.index("SpeechEnded")


def test_an_unfinished_turn_waits_for_the_hangover_or_longer_when_asked() -> None:
    ends, metrics, _ = segment([(0.5, 1.5)], FakeTurnModel([0.2]))
    assert [e.reason for e in ends] == ["silence"] and ends[0].time - ends[0].speech_time == pytest.approx(
        0.36
    )
    assert metrics.counters["turn.incomplete"] == 1
    # incomplete_silence_ms: a pause of 600 ms no longer splits the utterance
    speech = [(0.5, 1.5), (2.1, 2.6)]
    split, *_ = segment(speech, FakeTurnModel([0.2, 0.2]))
    assert len(split) == 2
    ends, *_ = segment(speech, FakeTurnModel([0.2, 0.9]), turn=TurnOptions(incomplete_silence_ms=800))
    assert [e.reason for e in ends] == ["turn_model"] and ends[0].stream_end == pytest.approx(2.6)
    assert ends[0].time - ends[0].speech_time == pytest.approx(0.2)


def test_speech_that_resumes_before_the_check_is_never_shown_to_the_model() -> None:
    model = FakeTurnModel([0.9])
    ends, _metrics, _ = segment([(0.5, 1.5), (1.64, 2.5)], model)  # a 140 ms gap < check_ms
    assert len(ends) == 1 and ends[0].reason == "turn_model" and len(model.seen) == 1
    assert ends[0].stream_end == pytest.approx(2.5) and ends[0].time - ends[0].speech_time == pytest.approx(
        0.2
    )


def test_a_failing_model_costs_the_shortcut_not_the_session() -> None:
    ends, metrics, _ = segment([(0.5, 1.5), (2.5, 3.0)], FakeTurnModel([], fail=True))
    assert [e.reason for e in ends] == ["silence", "silence"]  # both turns still end
    assert metrics.counters["turn.errors"] == 2


def test_a_hung_model_times_out_and_later_checks_are_skipped_while_it_hangs() -> None:
    release = threading.Event()
    model = FakeTurnModel([0.9, 0.9], block=release)
    try:
        ends, metrics, _ = segment(
            [(0.5, 1.5), (2.5, 3.0)], model, turn=TurnOptions(timeout_ms=50), seconds=4.0, clock="real"
        )
    finally:
        release.set()
    assert [e.reason for e in ends] == ["silence", "silence"]
    assert metrics.counters["turn.timeouts"] == 1 and metrics.counters["turn.busy"] == 1


def test_check_must_come_before_the_hangover() -> None:
    with pytest.raises(TurnModelError, match="shorter than"):
        VadStage(VadOptions(end_silence_ms=200), turn_model=FakeTurnModel([]), turn=TurnOptions(check_ms=200))


def test_the_real_graph_in_the_stage(tiny_dir) -> None:
    """The ONNX model behind the stage (a thread, real features): a confident one ends the turn early."""
    model = SmartTurnModel(write_random_smart_turn(tiny_dir, filename="yes.onnx", bias=8.0, **TINY))
    ends, metrics, _ = segment([(0.5, 1.5)], model)
    assert [e.reason for e in ends] == ["turn_model"] and metrics.counters["turn.complete"] == 1


def test_the_cli_flags_reach_the_loop_options() -> None:
    import argparse

    from voiceloop.cli.loop import add_loop_arguments, loop_options

    parser = argparse.ArgumentParser()
    add_loop_arguments(parser)
    options = loop_options(parser.parse_args(["--turn-model", "DIR", "--turn-check-ms", "160"]))
    assert options.turn_model == "DIR" and options.turn.check_ms == 160
    assert loop_options(parser.parse_args([])).turn_model is None
    assert loop_options(parser.parse_args(["--turn-model"])).turn_model == "pipecat-ai/smart-turn-v3"
    with pytest.raises(TurnModelError, match="before the VAD's end of speech"):  # before loading anything
        loop_options(parser.parse_args(["--turn-model", "DIR", "--turn-check-ms", "400"]))


def conversation_audio() -> np.ndarray:
    from helpers.speech import espeak

    gap = np.zeros(16_000, np.int16)
    parts = [gap, espeak("今天天气很好，我们一起去公园散步吧。"), gap, espeak("好的。"), gap]
    return np.concatenate(parts)


@pytest.mark.parametrize("probability", [0.9, 0.1])
def test_offline_segments_with_a_turn_model_match_the_live_stage(probability) -> None:
    from voiceloop.vad import detect_segments

    audio = conversation_audio()
    offline = detect_segments(audio, turn_model=FakeTurnModel([probability] * 20))
    sink = Collect()
    vad = VadStage(turn_model=FakeTurnModel([probability] * 20))
    pipeline = Pipeline([FileSource(audio, sample_rate=16_000), vad, sink], metrics=Metrics())
    run(pipeline.run(), clock="virtual")
    live = [f for f in sink.frames if isinstance(f, SpeechEnded)]
    assert len(offline) == len(live) >= 2
    assert [s.reason for s in offline] == [e.reason for e in live]
    assert [s.end for s in offline] == pytest.approx([e.stream_end for e in live])
    expected = "turn_model" if probability > 0.5 else "silence"
    assert {s.reason for s in offline} == {expected}
    assert all(s.turn_probability == probability for s in offline)
    plain = detect_segments(audio)
    assert [s.end for s in plain] == pytest.approx([s.end for s in offline], abs=0.04)  # same speech ends


def test_voiceloop_vad_asks_a_turn_model_from_the_command_line(tmp_path) -> None:
    import json
    import subprocess
    import sys

    import soundfile

    write_random_smart_turn(tmp_path / "model", bias=8.0, **TINY)
    soundfile.write(str(tmp_path / "talk.wav"), conversation_audio(), 16_000)
    command = [sys.executable, "-m", "voiceloop", "vad", str(tmp_path / "talk.wav"), "--json"]
    out = subprocess.run([*command, "--turn-model", str(tmp_path / "model")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    segments = json.loads(out.stdout)["segments"]
    assert len(segments) >= 2 and all(s["reason"] == "turn_model" for s in segments)
    assert all(s["turn_probability"] > 0.99 for s in segments)
    out = subprocess.run([*command, "--turn-model", str(tmp_path / "none")], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "--turn-model DIR" in out.stderr


@pytest.mark.parametrize("final_delay", [0.02, 0.2])
def test_a_preemptive_reply_plays_at_the_models_endpoint(final_delay) -> None:
    """The early final (pause hint at 100 ms) feeds the reply; the model ends the turn at 200 ms and
    the held reply plays then — or, when the early final is slower than that, as soon as it is ready."""
    from helpers.fakes import FakeAsr, FakeTts

    from voiceloop.asr import AsrStage
    from voiceloop.dialogue import DialogueStage
    from voiceloop.io import OutputStage, PacedSink
    from voiceloop.tts import TtsStage

    stages = [
        FileSource(frames_of(3.0), sample_rate=16_000),
        VadStage(VAD, detector=ScriptedVoice([(0.5, 1.5)]), turn_model=FakeTurnModel([0.9])),
        AsrStage(FakeAsr(["你好"], final_delay=final_delay, preview=True), preemptive=True),
        DialogueStage(lambda text: text),
        TtsStage(FakeTts(first_delay=0.03)),
        OutputStage(PacedSink(24_000)),
    ]
    metrics = Metrics()
    run(Pipeline(stages, metrics=metrics).run(), clock="virtual")
    metrics.close()
    (turn,) = metrics.finished
    assert turn.ended_by_model and turn.transcript == "你好" and turn.reply == "你好"
    assert turn.endpoint - turn.speech_end == pytest.approx(0.2)
    ready = turn.speech_end + 0.1 + final_delay + 0.03  # hint + early final + TTS first audio
    assert turn.preemptive == (final_delay + 0.1 < 0.2)
    if turn.preemptive:  # generated during the quiet, held until the model's endpoint
        assert turn.first_played == pytest.approx(turn.endpoint)
    else:  # the endpoint came first: the final is awaited, then the reply generated
        assert turn.first_played == pytest.approx(ready)
