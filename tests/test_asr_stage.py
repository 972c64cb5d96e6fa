"""VAD → streaming ASR in the stage graph on espeak-ng speech with a tiny model from the public path."""

from __future__ import annotations

import pytest
from asr_fixtures import make_tiny_checkpoint
from fakes import Collect
from speech import espeak, mix_scene

from voiceloop.asr import AsrStage
from voiceloop.asr.streaming import Wav2Vec2Engine
from voiceloop.clock import run
from voiceloop.frames import FinalTranscript, Frame, PartialTranscript, SpeechEnded, SpeechStarted
from voiceloop.io import FileSource
from voiceloop.pipeline import Pipeline
from voiceloop.vad import VadStage

pytestmark = pytest.mark.usefixtures("one_thread")

def test_vad_gated_streaming_asr_emits_partials_and_finals_in_stream_time(tmp_path) -> None:
    clips = [espeak("今天天气很好，我们去公园散步吧。"), espeak("你好，我的朋友。")]
    signal, bounds = mix_scene(clips, [0.8, 1.5, 1.5], snr_db=25, seed=1)
    engine = Wav2Vec2Engine.from_pretrained(str(make_tiny_checkpoint(tmp_path, layout="modern")))
    events: list[Frame] = []
    # unpaced: the file waits for the ASR (no drops whatever the machine's load), so the test is deterministic
    source = FileSource(signal, sample_rate=16_000, pace=False)
    pipeline = Pipeline([source, VadStage(), AsrStage(engine), Collect()])
    pipeline.add_observer(events.append)
    run(pipeline.run(), clock="fast")
    assert not any(name.startswith("dropped") for name in pipeline.metrics.counters)
    engine.lane.close()

    started = [e for e in events if isinstance(e, SpeechStarted)]
    assert len([e for e in events if isinstance(e, SpeechEnded)]) == 2
    finals = [e for e in events if isinstance(e, FinalTranscript)]
    partials = [e for e in events if isinstance(e, PartialTranscript)]
    assert [s.turn_id for s in started] == [1, 2] and [f.turn_id for f in finals] == [1, 2]
    assert {p.turn_id for p in partials} >= {1}, "the long first utterance yields partials"
    for final, (start, end) in zip(finals, bounds, strict=True):
        assert final.text, "a random model still emits characters"
        # the utterance audio starts with the pre-roll (<= 0.2 s before speech) and ends after the hangover
        assert start - 0.25 <= final.start <= start
        assert end <= final.end <= end + 0.6
        assert all(final.start <= c.start < c.end <= final.end + 1e-9 for c in final.chars)
    for turn_id in (1, 2):
        timeline = next(t for t in pipeline.metrics.turns.values() if t.turn_id == turn_id)
        # (unpaced input has no audio clock, so only the order of the decisions is checked)
        assert timeline.final_transcript >= timeline.endpoint and timeline.speech_end > timeline.speech_start
    first = pipeline.metrics.turns[1]
    assert first.first_partial is not None and first.first_partial < first.final_transcript
    assert first.transcript == finals[0].text
