"""VAD → streaming ASR in the stage graph on espeak-ng speech with a tiny model from the public path."""

from __future__ import annotations

import pytest
from helpers.asr_fixtures import make_tiny_checkpoint
from helpers.fakes import Collect
from helpers.speech import espeak, mix_scene

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


def test_final_computed_during_the_hangover_matches_the_final_after_it(monkeypatch) -> None:
    """SpeechPaused starts the final pass on a copy of the stream; the pipeline uses that result.

    The copy and the stream see slightly different windows (the stream may commit one more chunk
    during the hangover, with less right context), so the texts may differ by a character: both
    must transcribe the speech to within one character, and every final must come from the copy.
    """
    from pathlib import Path

    from voiceloop.asr.corpus import char_error_rate
    from voiceloop.asr.streaming import Wav2Vec2Session
    from voiceloop.vad import VadOptions

    fixture = Path(__file__).parent / "fixtures" / "tiny-zh-asr"
    clips = [espeak("今天天气很好", voice="cmn-latn-pinyin"), espeak("明天下雨", voice="cmn-latn-pinyin")]
    signal, _ = mix_scene(clips, [0.8, 1.5, 1.5], snr_db=30, seed=2)
    engine = Wav2Vec2Engine.from_pretrained(str(fixture))

    def finals(options: VadOptions) -> list[FinalTranscript]:
        events: list[Frame] = []
        pipeline = Pipeline(
            [
                FileSource(signal, sample_rate=16_000, pace=False),
                VadStage(options),
                AsrStage(engine),
                Collect(),
            ]
        )
        pipeline.add_observer(events.append)
        run(pipeline.run(), clock="fast")
        return [e for e in events if isinstance(e, FinalTranscript)]

    after = finals(VadOptions(pause_hint_ms=0))
    calls = []
    original = Wav2Vec2Session.finalize

    async def counting(self):
        calls.append(1)
        return await original(self)

    monkeypatch.setattr(Wav2Vec2Session, "finalize", counting)
    during = finals(VadOptions())
    engine.lane.close()
    assert calls == [], "every final came from the speculative pass"
    expected = ["今天天气很好", "明天下雨"]
    for finals_ in (during, after):
        texts = [f.text for f in finals_]
        assert len(texts) == 2
        for text, ref in zip(texts, expected, strict=True):
            assert char_error_rate([ref], [text]) * len(ref) <= 1, (text, ref)
    for a, b in zip(during, after, strict=True):
        assert len(a.chars) == len(b.chars)
        assert [round(c.start, 1) for c in a.chars] == [round(c.start, 1) for c in b.chars]
