"""The whole graph on a virtual clock with scripted engines: timelines, barge-in, failing handlers."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
from helpers.fakes import FakeAsr, FakeTts, ScriptedVoice, frames_of

from voiceloop.asr import AsrStage
from voiceloop.clock import run
from voiceloop.dialogue import DialogueOptions, DialogueStage
from voiceloop.frames import Frame, Interruption, ReplyText, SpeechStarted, TurnError, TurnMetrics
from voiceloop.io import FileSource, OutputStage, PacedSink, WavSink, read_audio
from voiceloop.pipeline import BargeInOptions, Pipeline
from voiceloop.timeline import Metrics
from voiceloop.tts import TtsStage
from voiceloop.vad import VadOptions, VadStage

VAD = VadOptions(end_silence_ms=300, pre_roll_ms=200, warmup_ms=0)


def build(
    handler,
    speech: list[tuple[float, float]],
    seconds: float,
    *,
    texts: list[str] | None = None,
    tts: FakeTts | None = None,
    sink=None,
    metrics: Metrics | None = None,
    options: DialogueOptions | None = None,
) -> tuple[Pipeline, list[Frame], FakeTts, DialogueStage]:
    tts = tts or FakeTts()
    dialogue = DialogueStage(handler, options=options)
    stages = [
        FileSource(frames_of(seconds), sample_rate=16_000),
        VadStage(VAD, detector=ScriptedVoice(speech)),
        AsrStage(FakeAsr(texts or ["你好"] * len(speech), final_delay=0.1)),
        dialogue,
        TtsStage(tts),
        OutputStage(sink or PacedSink(24_000)),
    ]
    pipeline = Pipeline(stages, metrics=metrics)
    events: list[Frame] = []
    pipeline.add_observer(events.append)
    return pipeline, events, tts, dialogue


def test_timeline_durations_equal_the_scripted_delays(tmp_path) -> None:
    async def handler(text: str) -> str:
        await asyncio.sleep(0.25)
        return "你好，我听到了。"

    metrics = Metrics.to_file(tmp_path / "turns.jsonl")
    pipeline, events, _, _ = build(handler, [(0.5, 1.5)], 6.0, metrics=metrics)
    run(pipeline.run(), clock="virtual")
    summary = metrics.close()

    (timeline,) = metrics.finished
    durations = timeline.durations()
    assert durations["endpointing"] == pytest.approx(0.3)
    assert durations["asr_finalisation"] == pytest.approx(0.1)
    assert durations["handler_first_text"] == pytest.approx(0.25)
    assert durations["tts_first_audio"] == pytest.approx(0.2)
    assert durations["output_queue"] == pytest.approx(0.0)
    assert durations["output_buffering"] == pytest.approx(0.0)
    assert durations["voice_to_voice"] == pytest.approx(0.85)
    assert timeline.speech_end - timeline.speech_start == pytest.approx(1.0)
    assert timeline.first_partial is not None and timeline.reply == "你好，我听到了。"
    assert [type(e).__name__ for e in events if isinstance(e, TurnMetrics)] == ["TurnMetrics"]

    lines = [json.loads(line) for line in (tmp_path / "turns.jsonl").read_text().splitlines()]
    assert [line["type"] for line in lines] == ["turn", "summary"]
    assert lines[0]["durations"]["voice_to_voice"] == pytest.approx(0.85)
    assert summary["durations"]["voice_to_voice"]["p50"] == pytest.approx(0.85)
    assert summary["durations"]["voice_to_voice"]["p95"] == pytest.approx(0.85)


def test_barge_in_flushes_every_buffer_and_truncates_history(tmp_path) -> None:
    reply = "This is a long answer. " * 6
    tts = FakeTts(first_delay=0.05, chunk_delay=0.0, seconds_per_char=0.05)
    sink = WavSink(tmp_path / "bot.wav", 24_000)
    # user turn 1 ends at 1.0 s; the reply (~6.9 s of audio) starts ~1.45 s; user talks over it at 4.0 s
    pipeline, events, tts, dialogue = build(
        lambda text: reply, [(0.4, 1.0), (4.0, 4.8)], 9.0, texts=["first", "second"], tts=tts, sink=sink
    )
    run(pipeline.run(), clock="virtual")

    (interruption,) = [e for e in events if isinstance(e, Interruption)]
    assert interruption.turn_id == 1
    first = pipeline.metrics.finished[0]
    assert first.turn_id == 1 and first.interrupted
    heard_s = interruption.time - first.first_played
    # history keeps only what was played: about heard_s / 0.05 characters of the reply
    assistant = [m for m in dialogue.history if m.role == "assistant"]
    assert assistant[0].turn_id == 1 and reply.startswith(assistant[0].text)
    assert abs(len(assistant[0].text) - heard_s / 0.05) <= 2 + reply.count(". ")
    assert interruption.played_text == assistant[0].text
    # queued synthesized audio was dropped: far less than the whole reply was synthesized or played
    counters = pipeline.metrics.counters
    assert counters["interruptions"] == 1
    assert counters["flushed.output_samples"] > 0 and counters["flushed.output"] > 0
    assert tts.sessions[0].cancelled >= 1
    # the recording: bot audio from first_played until the interruption, then silence until turn 2
    audio, rate = read_audio(tmp_path / "bot.wav")
    active = np.flatnonzero(np.abs(audio[:, 0]) > 0.01)
    origin = pipeline.metrics.finished[0].speech_start - 0.4
    second = pipeline.metrics.finished[1]
    cut = round((interruption.time - origin) * rate)
    first_bot = round((first.first_played - origin) * rate)
    assert active[0] == pytest.approx(first_bot, abs=2)
    in_gap = active[(active > cut + 1) & (active < round((second.first_played - origin) * rate) - 1)]
    assert in_gap.size == 0, "nothing plays between the barge-in and the next reply"
    # turn 2 was answered normally
    assert second.turn_id == 2 and not second.interrupted and second.first_played is not None


def test_a_raising_handler_costs_one_turn() -> None:
    calls: list[str] = []

    def handler(text: str) -> str:
        calls.append(text)
        if text == "boom":
            raise RuntimeError("model exploded")
        return "fine."

    pipeline, events, _, _ = build(handler, [(0.4, 1.0), (3.0, 3.6)], 7.0, texts=["boom", "hello"])
    run(pipeline.run(), clock="virtual")
    errors = [e for e in events if isinstance(e, TurnError)]
    assert [(e.turn_id, e.stage) for e in errors] == [(1, "dialogue")]
    assert "RuntimeError: model exploded" in errors[0].error
    assert calls == ["boom", "hello"]
    turns = {t.turn_id: t for t in pipeline.metrics.finished}
    assert turns[1].error and turns[1].first_played is None
    assert turns[2].first_played is not None and turns[2].error is None
    assert pipeline.metrics.counters["handler_errors"] == 1


def test_a_hanging_async_handler_times_out_and_costs_one_turn() -> None:
    async def handler(text: str):
        if text == "hang":
            await asyncio.sleep(3600)
        yield "ok."

    options = DialogueOptions(first_text_timeout_s=2.0)
    pipeline, events, _, _ = build(
        handler, [(0.4, 1.0), (4.0, 4.6)], 8.0, texts=["hang", "hi"], options=options
    )
    run(pipeline.run(), clock="virtual")
    errors = [e for e in events if isinstance(e, TurnError)]
    assert len(errors) == 1 and errors[0].turn_id == 1 and "no text within 2 s" in errors[0].error
    assert pipeline.metrics.counters["handler_timeouts"] == 1
    replies = [e for e in events if isinstance(e, ReplyText)]
    assert [(r.turn_id, r.text) for r in replies] == [(2, "ok.")]


def test_a_hanging_sync_handler_is_abandoned_without_blocking_the_session() -> None:
    release = threading.Event()

    def handler(text: str, ctx) -> str:
        if text == "hang":
            release.wait(60)  # a stuck network call, say
            return "too late"
        return "ok."

    options = DialogueOptions(first_text_timeout_s=0.3)
    pipeline, events, _, _ = build(
        handler, [(0.2, 0.6), (2.0, 2.4)], 4.5, texts=["hang", "hi"], options=options
    )
    try:
        run(pipeline.run(), clock="fast")
    finally:
        release.set()
    assert [e.turn_id for e in events if isinstance(e, TurnError)] == [1]
    assert [(r.turn_id, r.text) for r in events if isinstance(r, ReplyText)] == [(2, "ok.")]


def test_barge_in_can_be_disabled() -> None:
    tts = FakeTts(first_delay=0.05, chunk_delay=0.0, seconds_per_char=0.05)
    pipeline, events, _, _ = build(lambda t: "a long reply. " * 8, [(0.4, 1.0), (3.0, 3.6)], 12.0, tts=tts)
    pipeline.barge_in = BargeInOptions(enabled=False)
    run(pipeline.run(), clock="virtual")
    assert not [e for e in events if isinstance(e, Interruption)]
    assert all(not t.interrupted for t in pipeline.metrics.finished)


def test_barge_in_during_speech_only_spares_a_reply_still_being_generated() -> None:
    async def slow(text: str) -> str:
        await asyncio.sleep(1.5)
        return f"answer to {text}."

    # turn 2 starts while turn 1's handler is still thinking (ends 1.0 + 0.3 + 0.1, answers at ~2.9)
    for during, interrupted in (("reply", True), ("speech", False)):
        pipeline, _, _, _ = build(slow, [(0.4, 1.0), (1.8, 2.2)], 9.0, texts=["one", "two"])
        pipeline.barge_in = BargeInOptions(during=during)
        run(pipeline.run(), clock="virtual")
        turn1 = next(t for t in pipeline.metrics.finished if t.turn_id == 1)
        assert turn1.interrupted is interrupted, during
    with pytest.raises(ValueError, match="during must be"):
        BargeInOptions(during="always")


def test_barge_in_min_speech_ignores_short_backchannels_and_cuts_long_speech() -> None:
    tts = FakeTts(first_delay=0.05, chunk_delay=0.0, seconds_per_char=0.05)
    # the reply plays from ~1.45 s for ~5 s; at 3.0 s the user says something short (0.4 s), at 4.5 s long
    pipeline, events, _, _ = build(
        lambda t: "a long reply. " * 8,
        [(0.4, 1.0), (3.0, 3.4), (4.5, 5.5)],
        12.0,
        texts=["a", "b", "c"],
        tts=tts,
    )
    pipeline.barge_in = BargeInOptions(min_speech_ms=600)
    run(pipeline.run(), clock="virtual")
    interruptions = [e for e in events if isinstance(e, Interruption)]
    assert len(interruptions) == 1
    # cut 600 ms after the long utterance's first voiced audio (the VAD backdates it to 4.5 s)
    first = next(e for e in events if isinstance(e, SpeechStarted))
    origin = first.speech_time - 0.4
    assert interruptions[0].time - origin == pytest.approx(4.5 + 0.6, abs=0.03)
    with pytest.raises(ValueError):
        BargeInOptions(min_speech_ms=-1)


@pytest.mark.parametrize(
    ("chunk_delay", "gaps_per_reply"),
    [(0.05, 0), (0.15, 3)],  # 0.1 s chunks made every 0.05 s keep ahead; every 0.15 s, 3 of 4 come late
)
def test_a_paced_sink_counts_gaps_inside_a_reply_as_underruns(
    chunk_delay: float, gaps_per_reply: int
) -> None:
    """The simulated device hears what a speaker would: a reply's audio arriving late is a gap;
    the silence between replies is not."""

    def handler(text: str) -> str:
        return "你好你好"  # 0.4 s of audio in 0.1 s chunks

    sink = PacedSink(24_000)
    tts = FakeTts(chunk_delay=chunk_delay)
    metrics = Metrics()
    pipeline, _, _, _ = build(handler, [(0.5, 1.0), (3.0, 3.5)], 6.0, tts=tts, sink=sink, metrics=metrics)
    run(pipeline.run(), clock="virtual")
    assert len(metrics.finished) == 2
    assert sink.underruns == metrics.counters["underruns"] == 2 * gaps_per_reply
    # each late chunk leaves chunk_delay - 0.1 s of silence before it
    assert sink.underrun_samples == pytest.approx(sink.underruns * (chunk_delay - 0.1) * 24_000, abs=2)
