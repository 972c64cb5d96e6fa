"""The ChatTTS engine end to end on random assets: streaming, sessions, cancellation, the stage, bad input."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers.fakes import Collect

from voiceloop.clock import run
from voiceloop.frames import AudioChunk, EndOfStream, ReplyText
from voiceloop.pipeline import Pipeline, Stage
from voiceloop.tts import TtsStage
from voiceloop.tts.chattts.engine import ChatTts, ChatTtsOptions
from voiceloop.tts.chattts.gpt import SamplingOptions
from voiceloop.tts.chattts.speaker import SpeakerError, sample_speaker
from voiceloop.tts.chattts.stream_decode import StreamDecodeOptions

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 30  # every utterance exactly this long: random weights have no meaningful EOS
SAMPLING = SamplingOptions(max_new_tokens=STEPS, min_new_tokens=STEPS)


@pytest.fixture(scope="module")
def engine(chattts_root):
    engine = ChatTts.from_pretrained(str(chattts_root), ChatTtsOptions(sampling=SAMPLING))
    yield engine
    engine.lane.close()


def test_stream_equals_the_offline_decode_with_full_context(engine):
    exact = StreamDecodeOptions(first_chunk=3, chunk=7, lookahead=52, left_context=52, crossfade=0)
    streamer = ChatTts(
        engine.gpt,
        engine.vocos,
        engine.hidden_decoder,
        None,
        engine.stats,
        replace(
            engine.options, stream=exact, sampling=replace(SAMPLING, max_new_tokens=80, min_new_tokens=80)
        ),
    )
    speaker = engine.speaker("seed:3")
    chunks = list(streamer.stream("你好，今天天气不错。", speaker, seed=5))
    (offline,) = streamer.synthesize(["你好，今天天气不错。"], speaker, seed=5)
    assert len(chunks) > 3 and all(c.dtype == np.int16 for c in chunks)
    assert np.array_equal(np.concatenate(chunks), offline)
    assert len(offline) == 512 * 80 - 256


def test_default_stream_has_the_offline_length_and_stays_close(engine):
    speaker = engine.speaker("seed:3")
    stream = np.concatenate(list(engine.stream("你好，今天天气不错。", speaker, seed=5)))
    (offline,) = engine.synthesize(["你好，今天天气不错。"], speaker, seed=5)
    assert len(stream) == len(offline)
    diff = np.abs(stream.astype(np.int32) - offline.astype(np.int32))
    rel = float(np.sqrt(np.mean(diff.astype(float) ** 2)) / np.sqrt(np.mean(offline.astype(float) ** 2)))
    print(f"default stream vs offline: max |diff| {diff.max()} / 32767, relative RMS {rel:.4f}")
    assert rel < 0.3


def test_sentences_are_generated_one_by_one_and_concatenated(engine):
    speaker = engine.speaker("seed:1")
    audio = np.concatenate(list(engine.stream("你好。今天天气不错。我们走吧。", speaker, seed=2)))
    assert len(audio) == 3 * (512 * STEPS - 256)


def test_batch_synthesis_returns_one_wave_per_text(engine):
    waves = engine.synthesize(
        ["你好。", "hello world", "。。。", "今天。明天。"], engine.speaker("seed:2"), seed=0
    )
    one = 512 * STEPS - 256
    assert [len(w) for w in waves] == [one, one, 0, 2 * one]


def test_session_keeps_one_voice_and_cancel_stops_within_one_gpt_step(engine, monkeypatch):
    session = engine.session()
    assert session.speaker is not None  # a random voice, fixed for the whole session
    steps_after_cancel = []
    original = engine.gpt.generate

    def counting(prompt, sampling, **kwargs):
        for step in original(prompt, sampling, **kwargs):
            if session._cancel is not None and session._cancel.cancelled:
                steps_after_cancel.append(step)
            yield step

    monkeypatch.setattr(engine.gpt, "generate", counting)

    async def main():
        chunks = []
        async for chunk in session.synthesize("你好，今天天气不错。我们一起去公园散步吧。"):
            chunks.append(chunk)
            session.cancel()  # barge-in right after the first audio
        return chunks

    chunks = asyncio.run(main())
    assert len(chunks) == 1 and chunks[0].dtype == np.int16
    assert len(steps_after_cancel) <= 1


def test_voices(engine):
    assert torch.equal(engine.speaker("seed:7"), engine.speaker(sample_speaker(engine.stats, 7)))
    assert engine.speaker(None) is None
    with pytest.raises(SpeakerError):
        engine.speaker("not a voice at all")


def test_bad_text_is_reported_or_yields_nothing(engine):
    assert engine.prepare("").sentences == [] and list(engine.stream("")) == []
    assert engine.prepare("。。。！？ ,,").sentences == []
    tagged = engine.prepare("[foo]你好[laugh]，我用iPhone打电话😀")
    assert "[foo]" in tagged.unsupported and "😀" in tagged.unsupported
    assert "[laugh]" in " ".join(tagged.sentences)
    long = engine.prepare("今天天气不错，我们一起去公园散步吧。" * 280)  # 5,040 characters
    assert len(long.sentences) >= 50 and max(len(s) for s in long.sentences) <= 100
    with pytest.raises(TypeError):
        engine.prepare(None)


def test_refinement_produces_text_and_feeds_synthesis(engine):
    refined = engine.refine_text("你好，今天天气不错。", seed=0)
    assert isinstance(refined, str) and refined
    audio = list(engine.stream("你好。", engine.speaker("seed:1"), refine=True, seed=0))
    assert sum(len(a) for a in audio) > 0


def test_dvae_decoder_path(chattts_root):
    engine = ChatTts.from_pretrained(str(chattts_root), ChatTtsOptions(sampling=SAMPLING, decoder="dvae"))
    (wave,) = engine.synthesize(["你好"], engine.speaker("seed:1"), seed=1)
    assert len(wave) == 512 * STEPS - 256 and np.abs(wave).max() > 0


class Replies(Stage):
    name = "replies"

    def __init__(self, pieces: list[str]) -> None:
        super().__init__()
        self.pieces = pieces

    async def produce(self) -> None:
        for piece in self.pieces:
            await self.emit(ReplyText(turn_id=1, text=piece))
        await self.emit(EndOfStream())


def test_tts_stage_turns_reply_pieces_into_one_audio_stream(engine):
    sink = Collect()
    pipeline = Pipeline([Replies(["你好，", "今天天气不错。"]), TtsStage(engine, voice="seed:4"), sink])
    metrics = run(pipeline.run(), clock="fast")
    chunks = [f for f in sink.frames if isinstance(f, AudioChunk)]
    ends = [c for c in chunks if c.piece_end]
    assert [c.text for c in ends] == ["你好，", "今天天气不错。"]
    audio = np.concatenate([c.samples for c in chunks])
    assert len(audio) == 2 * (512 * STEPS - 256) and all(c.sample_rate == 24_000 for c in chunks)
    assert metrics.turn(1).tts_first_audio is not None


@pytest.mark.slow
def test_full_size_random_model_loads_int8_and_speaks(tmp_path):
    from helpers.chattts_fixtures import write_random_assets

    from voiceloop.compute import ModelOptions

    root = write_random_assets(tmp_path / "full", gpt_layers=20, embed_tokens=True, official_tokenizer=None)
    options = ChatTtsOptions(
        model=ModelOptions(device="cpu", quantize="int8"),
        sampling=replace(SAMPLING, max_new_tokens=12, min_new_tokens=12),
    )
    engine = ChatTts.from_pretrained(str(root), options)
    chunks = list(engine.stream("你好，欢迎使用语音助手。", engine.speaker("seed:1"), seed=0))
    assert sum(len(c) for c in chunks) == 512 * 12 - 256
