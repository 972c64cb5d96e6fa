"""Terminal views: live display content, plain lines, JSON lines, quiet mode, never-raise observers."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from voiceloop.clock import run
from voiceloop.frames import (
    EndOfStream,
    FinalTranscript,
    Interruption,
    PartialTranscript,
    ReplyEnd,
    ReplyText,
    SpeechEnded,
    SpeechStarted,
    TurnError,
    TurnMetrics,
)
from voiceloop.io.console import ConsoleView, JsonEvents, PlainView, QuietView, make_view
from voiceloop.pipeline import Pipeline, Stage
from voiceloop.timeline import TurnTimeline


def terminal() -> Console:
    return Console(record=True, width=100, force_terminal=True, color_system="truecolor")


def shown(view: ConsoleView) -> str:
    """What the live display shows right now, as plain text."""
    console = terminal()
    console.print(view.render())
    return console.export_text()


def timeline(turn_id: int = 1, **extra) -> TurnTimeline:
    """Voice-to-voice 812 ms = endpointing 300 + asr 120 + handler 150 + tts 180 + queue 5 + buffering 57."""
    stamps = dict(speech_start=9.0, speech_end=10.0, endpoint=10.3, first_partial=9.5, final_transcript=10.42)
    stamps.update(handler_first_text=10.57, tts_first_audio=10.75, output_first_sample=10.755)
    stamps.update(first_played=10.812)
    return TurnTimeline(turn_id, **{**stamps, **extra})


def user_turn(turn_id: int, text: str) -> list:
    return [
        SpeechStarted(turn_id, speech_time=9.0, time=9.2),
        PartialTranscript(text[:2], stable_len=1, turn_id=turn_id),
        SpeechEnded(turn_id, speech_time=10.0, time=10.3),
        FinalTranscript(text, turn_id=turn_id),
    ]


def full_turn(turn_id: int = 1) -> list:
    return [
        *user_turn(turn_id, "what time is it"),
        ReplyText(turn_id, "It is noon."),
        ReplyText(turn_id, "Anything else?"),
        ReplyEnd(turn_id, "It is noon. Anything else?"),
        TurnMetrics(timeline(turn_id, transcript="what time is it", reply="It is noon. Anything else?")),
    ]


def feed(view, frames) -> None:
    for frame in frames:
        view.observe(frame)


def two_stage_pipeline() -> Pipeline:
    """A pipeline that never runs: a live source (drop-oldest queue) and a sink."""
    source, sink = Stage(), Stage()
    source.live, source.name, sink.name = True, "mic", "vad"
    return Pipeline([source, sink])


# -- live view ---------------------------------------------------------------------------------


def test_status_follows_the_conversation():
    view = ConsoleView(terminal())
    steps = [
        (None, "listening"),
        (SpeechStarted(1, speech_time=1.0, time=1.2), "user speaking"),
        (SpeechEnded(1, speech_time=2.0, time=2.3), "thinking"),
        (FinalTranscript("hi", turn_id=1), "thinking"),
        (ReplyText(1, "Hello."), "bot speaking"),
        (ReplyEnd(1, "Hello."), "bot speaking"),  # audio is still playing
        (TurnMetrics(timeline(1, transcript="hi")), "listening"),
        (EndOfStream(), "ended"),
    ]
    for frame, status in steps:
        if frame is not None:
            view.observe(frame)
        assert view.state.status() == status
        assert f"● {status}" in shown(view)


def test_partial_transcript_styles_stable_prefix_and_unstable_tail():
    console = terminal()
    view = ConsoleView(console)
    feed(view, [SpeechStarted(1, 1.0, 1.2), PartialTranscript("今天天气", stable_len=2, turn_id=1)])
    assert "今天天气…" in shown(view)
    segments = list(console.render(view.render()))
    stable = next(s for s in segments if s.text == "今天")
    tail = next(s for s in segments if s.text == "天气")
    assert stable.style.bold and not stable.style.italic
    assert tail.style.dim and tail.style.italic
    view.observe(FinalTranscript("今天天气很好", turn_id=1))
    text = shown(view)
    assert "you ▸ 今天天气很好" in text and "…" not in text  # the partial gave way to the final


def test_turn_shows_final_reply_and_latency_breakdown():
    view = ConsoleView(terminal())
    feed(view, full_turn(1))
    text = shown(view)
    assert "you ▸ what time is it" in text
    assert "bot ▸ It is noon. Anything else?" in text
    assert "v2v 812 ms" in text
    for part in ("vad 300", "asr 120", "handler 150", "tts 180", "queue 5", "play 57"):
        assert part in text
    assert "█" in text  # the stacked bar


def test_a_turn_the_turn_model_ended_labels_its_endpointing_turn():
    view = ConsoleView(terminal())
    frames = full_turn(1)
    frames[-1] = TurnMetrics(timeline(1, transcript="what time is it", reply="fine", ended_by_model=True))
    feed(view, frames)
    text = shown(view)
    assert "turn 300" in text and "vad 300" not in text


def test_reply_text_appears_piece_by_piece_while_spoken():
    view = ConsoleView(terminal())
    feed(view, [*user_turn(1, "tell me"), ReplyText(1, "Once upon a time,")])
    assert "bot ▸ Once upon a time," in shown(view)
    view.observe(ReplyText(1, "there was a fox."))
    assert "bot ▸ Once upon a time, there was a fox." in shown(view)


def test_interruption_shows_the_heard_part():
    view = ConsoleView(terminal())
    feed(view, [*user_turn(1, "tell me a story"), ReplyText(1, "Once upon a time,"), ReplyText(1, "a fox.")])
    feed(view, [SpeechStarted(2, 20.0, 20.2), Interruption(1, time=20.2, played_text="Once upon")])
    view.observe(ReplyText(1, "late piece"))  # emitted after the cut: never spoken, never shown
    text = shown(view)
    assert "interrupted" in text and "heard: 'Once upon'" in text
    assert "late piece" not in text
    assert "interruptions 1" in text
    assert view.state.status() == "user speaking"
    view.observe(TurnMetrics(timeline(1, interrupted=True, played_text="Once upon")))
    assert "heard: 'Once upon'" in shown(view)


def test_counters_come_from_the_pipeline_metrics():
    pipeline = two_stage_pipeline()
    view = ConsoleView(terminal()).attach(pipeline)
    pipeline.metrics.count("underruns", 3)
    pipeline.metrics.count("interruptions")
    pipeline.metrics.count("handler_errors", 2)
    pipeline.metrics.count("flushed.tts", 4)
    pipeline.queues[0].dropped = 5  # live drop count, before the run's end copies it into metrics
    feed(view, full_turn(1))
    text = shown(view)
    for part in ("dropped 5", "underruns 3", "interruptions 1", "handler_errors 2", "flushed.tts 4"):
        assert part in text


def test_turn_error_and_discarded_speech():
    view = ConsoleView(terminal())
    feed(view, [*user_turn(1, "hello"), TurnError(1, "dialogue", "RuntimeError: boom")])
    feed(view, [SpeechStarted(2, 30.0, 30.2), SpeechEnded(2, 30.1, 30.4, discarded=True)])
    text = shown(view)
    assert "turn error: dialogue: RuntimeError: boom" in text
    assert view.state.status() == "listening"
    assert 2 not in view.state.turns


def test_history_keeps_the_last_turns():
    view = ConsoleView(terminal(), max_turns=3)
    for turn_id in range(1, 6):
        feed(view, full_turn(turn_id)[:-3])
        view.observe(FinalTranscript(f"question number {turn_id}", turn_id=turn_id))
    text = shown(view)
    assert "question number 1" not in text and "question number 2" not in text
    assert all(f"question number {i}" in text for i in (3, 4, 5))


def test_live_display_start_stop_leaves_the_final_state():
    console = terminal()
    with ConsoleView(console) as view:
        feed(view, full_turn(1))
    text = console.export_text()
    assert "bot ▸ It is noon. Anything else?" in text and "v2v 812 ms" in text


def test_observe_never_raises():
    view = ConsoleView(terminal())
    view.observe(TurnMetrics(timeline=None))  # a malformed frame
    assert view.failures == 1
    feed(view, full_turn(1))  # still works afterwards
    assert "It is noon." in shown(view)

    class Broken(io.StringIO):
        def write(self, s):
            raise OSError("broken pipe")

    for other in (JsonEvents(Broken()), QuietView(Broken()), PlainView(Console(file=Broken()))):
        feed(other, [*full_turn(1), TurnError(1, "tts", "x")])
        assert other.failures > 0


async def test_attached_view_sees_a_real_pipeline_run():
    class Script(Stage):
        name = "script"

        async def produce(self) -> None:
            for frame in full_turn(1)[:-1]:
                await self.emit(frame)
            self.metrics.stamp(1, "speech_end", 10.0)  # a turn the metrics know about
            self.pipeline.finish_turn(1)
            await self.emit(EndOfStream())

    pipeline = Pipeline([Script(), Stage()])
    view = ConsoleView(terminal()).attach(pipeline)
    events = JsonEvents(io.StringIO()).attach(pipeline)
    await pipeline.run()
    assert "bot ▸ It is noon. Anything else?" in shown(view) and view.state.status() == "ended"
    types = [json.loads(line)["type"] for line in events.stream.getvalue().splitlines()]
    assert types[-2:] == ["turn", "end_of_stream"]


# -- plain, json, quiet ------------------------------------------------------------------------


def test_live_mode_falls_back_to_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    view = make_view("live", console=Console(file=out, width=100))
    assert isinstance(view, PlainView)
    pipeline = two_stage_pipeline()
    view.attach(pipeline)
    pipeline.metrics.count("underruns", 2)
    feed(view, [*full_turn(1), *user_turn(2, "stop"), ReplyText(2, "Sure, I will")])
    feed(view, [Interruption(2, 40.0, played_text="Sure"), TurnError(3, "dialogue", "timeout")])
    view.stop()
    lines = out.getvalue().splitlines()
    assert "[turn 1] you: what time is it" in lines
    assert "[turn 1] bot: It is noon. Anything else?" in lines
    assert "[turn 2] bot (interrupted), heard: 'Sure'" in lines
    assert "[turn 3] error in dialogue: timeout" in lines
    latency = next(line for line in lines if "latency" in line)
    assert "voice_to_voice 812 ms" in latency and "endpointing 300 ms" in latency
    assert lines[-1] == "counters: underruns 2"
    assert not any("\x1b" in line for line in lines)  # no escape codes in a pipe


def test_make_view_modes():
    assert isinstance(make_view("live", console=terminal()), ConsoleView)
    assert isinstance(make_view("json"), JsonEvents)
    assert isinstance(make_view("quiet"), QuietView)
    with pytest.raises(ValueError, match="unknown view mode"):
        make_view("fancy")
    with pytest.raises(ValueError, match="max_turns"):
        ConsoleView(terminal(), max_turns=0)


def test_json_events_one_parseable_object_per_event():
    out = io.StringIO()
    pipeline = two_stage_pipeline()
    view = make_view("json", stream=out).attach(pipeline)
    pipeline.metrics.count("interruptions")
    feed(view, [*full_turn(1), Interruption(2, 50.0, played_text="半句"), TurnError(2, "tts", "oops")])
    feed(view, [EndOfStream()])
    view.stop()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert all({"type", "turn_id", "time"} <= r.keys() for r in records)
    by_type = {r["type"]: r for r in records}
    assert [r["type"] for r in records[:4]] == ["speech_started", "partial", "speech_ended", "final"]
    assert by_type["partial"]["text"] == "wh" and by_type["partial"]["stable_len"] == 1
    assert by_type["speech_ended"]["reason"] == "silence" and by_type["speech_started"]["time"] == 9.2
    assert [r["text"] for r in records if r["type"] == "reply_text"] == ["It is noon.", "Anything else?"]
    turn = by_type["turn"]
    assert turn["turn_id"] == 1 and turn["text"] == "what time is it" and turn["played_known"] is True
    assert turn["durations"]["voice_to_voice"] == pytest.approx(0.812)
    assert turn["durations"]["endpointing"] == pytest.approx(0.3)
    assert turn["counters"] == {"interruptions": 1}
    assert by_type["interruption"]["played_text"] == "半句"  # UTF-8, not escaped
    assert "半句" in out.getvalue()
    assert by_type["turn_error"]["error"] == "oops" and by_type["turn_error"]["stage"] == "tts"
    assert by_type["end_of_stream"]["counters"] == {"interruptions": 1}
    assert records[-1]["type"] == "end_of_stream"  # the summary line is the CLI's, after Metrics.close()


def test_json_events_without_pipeline_have_null_counters():
    out = io.StringIO()
    view = JsonEvents(out)
    feed(view, full_turn(1))
    view.stop()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == len(full_turn(1)) and records[-1]["counters"] is None


def test_quiet_prints_only_turn_errors_to_stderr(capsys):
    view = make_view("quiet")
    feed(view, [*full_turn(1), Interruption(1, 5.0, "It"), TurnError(2, "dialogue", "ValueError: bad")])
    feed(view, [EndOfStream()])
    view.stop()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "voiceloop: turn 2 failed in dialogue: ValueError: bad\n"


def test_pipeline_run_with_views_on_the_virtual_clock():
    """Views work on the skip-idle loop too (``now()`` is that loop's time)."""

    class Script(Stage):
        name = "script"

        async def produce(self) -> None:
            await self.emit(PartialTranscript("hel", stable_len=2, turn_id=1))
            await self.emit(EndOfStream())

    async def main() -> str:
        pipeline = Pipeline([Script(), Stage()])
        view = JsonEvents(io.StringIO()).attach(pipeline)
        await pipeline.run()
        return view.stream.getvalue()

    first = json.loads(run(main(), clock="virtual").splitlines()[0])
    assert first["type"] == "partial" and first["time"] == pytest.approx(1000.0)
