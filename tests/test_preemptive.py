"""Preemptive replies on a virtual clock: generated during the hangover, held until the end of speech,
retracted without a trace when the user goes on speaking."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.fakes import FakeAsr, FakeTts, ScriptedVoice, frames_of

from voiceloop.asr import AsrStage
from voiceloop.cli.loop import loop_options
from voiceloop.clock import run
from voiceloop.dialogue import DialogueStage
from voiceloop.frames import FinalTranscript, Frame, Interruption, ReplyText
from voiceloop.io import FileSource, OutputStage, PacedSink
from voiceloop.pipeline import Pipeline
from voiceloop.timeline import Metrics
from voiceloop.tts import TtsStage
from voiceloop.vad import VadOptions, VadStage

VAD = VadOptions(end_silence_ms=300, pause_hint_ms=100, pre_roll_ms=200, warmup_ms=0)
REPLIES = {"半句": "一", "整句": "二二二二二", "你好": "你好"}


class RecordingSink(PacedSink):
    """A simulated device that keeps every sample it is asked to play, with its start time."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__(sample_rate)
        self.writes: list[tuple[float, int]] = []

    def _played(self, start: float, samples: np.ndarray) -> None:
        self.writes.append((start, len(samples)))


def converse(speech, texts, *, preemptive: bool, seconds: float = 5.0):
    calls: list[tuple[str, object]] = []

    async def handler(text: str, ctx) -> str:
        calls.append((text, ctx))
        return REPLIES[text]

    sink = RecordingSink(24_000)
    dialogue = DialogueStage(handler)
    stages = [
        FileSource(frames_of(seconds), sample_rate=16_000),
        VadStage(VAD, detector=ScriptedVoice(speech)),
        AsrStage(FakeAsr(texts, final_delay=0.1, preview=True), preemptive=preemptive),
        dialogue,
        TtsStage(FakeTts(first_delay=0.05, seconds_per_char=0.1)),
        OutputStage(sink),
    ]
    metrics = Metrics()
    pipeline = Pipeline(stages, metrics=metrics)
    events: list[Frame] = []
    pipeline.add_observer(events.append)
    run(pipeline.run(), clock="virtual")
    metrics.close()
    return metrics, sink, dialogue, calls, events


def test_a_preemptive_reply_is_ready_at_the_endpoint_and_plays_only_then() -> None:
    plain, plain_sink, *_ = converse([(0.5, 1.5)], ["你好"], preemptive=False)
    metrics, sink, dialogue, calls, events = converse([(0.5, 1.5)], ["你好"], preemptive=True)
    (base,) = plain.finished
    (turn,) = metrics.finished
    assert turn.preemptive and not base.preemptive
    assert turn.transcript == base.transcript == "你好" and turn.reply == "你好"
    # generated during the hangover: first audio before the endpoint, yet nothing played before it
    assert turn.tts_first_audio < turn.endpoint
    assert sink.writes[0][0] == pytest.approx(turn.endpoint)
    assert turn.first_played == pytest.approx(turn.endpoint)
    assert turn.durations()["voice_to_voice"] == pytest.approx(turn.durations()["endpointing"])
    # without preemption the reply starts at the endpoint: TTS's first-audio time later
    assert base.first_played == pytest.approx(base.endpoint + 0.05)
    assert sum(n for _, n in sink.writes) == sum(n for _, n in plain_sink.writes) == 0.2 * 24_000
    assert [m.text for m in dialogue.history] == ["你好", "你好"]
    assert [text for text, _ in calls] == ["你好"]
    # observers see the held reply's events after the end of speech, in their usual order
    kinds = [type(e).__name__ for e in events if type(e).__name__ != "PartialTranscript"]
    expected = ["SpeechStarted", "SpeechEnded", "FinalTranscript", "ReplyText", "ReplyEnd", "TurnMetrics"]
    assert kinds == [*expected, "EndOfStream"]


def test_speech_resumed_after_a_pause_retracts_the_early_reply_without_a_trace() -> None:
    # a 250 ms pause (< the 300 ms hangover): one utterance; the pause hint fires inside it
    speech = [(0.5, 1.5), (1.75, 2.5)]
    metrics, sink, dialogue, calls, events = converse(speech, ["半句", "整句"], preemptive=True)
    (turn,) = metrics.finished
    assert [text for text, _ in calls] == ["半句", "整句"]
    assert calls[0][1].cancelled  # the handler of the retracted reply is told to stop
    assert metrics.counters["retracted_replies"] == 1
    assert metrics.counters["interruptions"] == 0
    assert not any(isinstance(e, Interruption) for e in events)
    # observers never saw the retracted reply: one final, the whole utterance's reply text
    assert [e.text for e in events if isinstance(e, FinalTranscript)] == ["整句"]
    assert [e.text for e in events if isinstance(e, ReplyText)] == ["二二二二二"]
    # only the reply to the whole utterance reached the device, after its endpoint
    assert sum(n for _, n in sink.writes) == round(0.5 * 24_000)
    assert sink.writes[0][0] >= turn.endpoint - 1e-9
    assert turn.transcript == "整句" and turn.reply == "二二二二二" and turn.preemptive
    assert [(m.role, m.text) for m in dialogue.history] == [("user", "整句"), ("assistant", "二二二二二")]
    assert turn.speech_end - turn.speech_start == pytest.approx(2.0, abs=0.05)  # one utterance


def test_an_utterance_cut_by_end_of_stream_retracts_and_finalises_normally() -> None:
    # speech runs to the end of the file after a pause: the early final is not the whole utterance
    metrics, sink, _, calls, _ = converse(
        [(0.5, 1.5), (1.75, 3.0)], ["半句", "整句"], preemptive=True, seconds=3.0
    )
    assert [text for text, _ in calls] == ["半句", "整句"]
    assert metrics.counters["retracted_replies"] == 1
    (turn,) = metrics.finished
    assert turn.transcript == "整句" and not turn.preemptive
    assert sum(n for _, n in sink.writes) == round(0.5 * 24_000)


def test_the_cli_flag_reaches_the_loop_options() -> None:
    import argparse

    from voiceloop.cli.loop import add_loop_arguments

    parser = argparse.ArgumentParser()
    add_loop_arguments(parser)
    assert loop_options(parser.parse_args(["--preemptive"])).preemptive
    assert not loop_options(parser.parse_args([])).preemptive
