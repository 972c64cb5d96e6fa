"""Streaming wav2vec2 engine on tiny random checkpoints loaded through the public path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from helpers.asr_fixtures import make_tiny_checkpoint

from voiceloop.asr.streaming import StreamingOptions, Wav2Vec2Engine
from voiceloop.cli.asr import DEFAULT_WINDOW
from voiceloop.frames import FRAME_SAMPLES, FinalTranscript, PartialTranscript

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), layout="2021", seed=3)


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = round(seconds * 16_000)
    envelope = np.abs(np.sin(np.arange(n) / 16_000 * np.pi * 3)) + 0.1
    return (rng.normal(0, 0.2, n) * envelope * 32767 * 0.3).astype(np.int16)


def stream(engine: Wav2Vec2Engine, audio: np.ndarray) -> tuple[list[PartialTranscript], FinalTranscript]:
    async def main() -> tuple[list[PartialTranscript], FinalTranscript]:
        session = engine.session()
        partials = []
        for i in range(0, len(audio), FRAME_SAMPLES):
            partial = await session.accept(audio[i : i + FRAME_SAMPLES])
            if partial is not None:
                partials.append(partial)
        return partials, await session.finalize()

    return asyncio.run(main())


def test_defaults_shown_by_the_cli_are_the_engines() -> None:
    options = StreamingOptions()
    assert {
        "chunk_s": options.chunk_s,
        "left_s": options.left_s,
        "right_s": options.right_s,
    } == DEFAULT_WINDOW


def test_conv_caching_does_not_change_the_result(checkpoint_dir) -> None:
    audio = speechlike(6.0)
    cached = Wav2Vec2Engine.from_pretrained(str(checkpoint_dir), options=StreamingOptions(cache_conv=True))
    uncached = Wav2Vec2Engine(cached.checkpoint, StreamingOptions(cache_conv=False))
    p1, f1 = stream(cached, audio)
    p2, f2 = stream(uncached, audio)
    assert f1.text == f2.text and [p.text for p in p1] == [p.text for p in p2]
    assert [c.start for c in f1.chars] == [c.start for c in f2.chars]


def test_partials_only_grow_their_stable_prefix(checkpoint_dir) -> None:
    engine = Wav2Vec2Engine.from_pretrained(str(checkpoint_dir))
    partials, final = stream(engine, speechlike(8.0, seed=1))
    assert len(partials) >= 8, "a partial per 0.64 s chunk"
    stable = ""
    for partial in partials:
        assert partial.text.startswith(stable), "a committed character is never retracted"
        stable = partial.stable_text
    assert final.text.startswith(stable)
    assert all(0 <= c.confidence <= 1 and c.end > c.start for c in final.chars)
    assert final.end == pytest.approx(8.0)


def test_a_short_utterance_is_decoded_exactly_like_offline(checkpoint_dir) -> None:
    engine = Wav2Vec2Engine.from_pretrained(str(checkpoint_dir))
    audio = speechlike(0.8, seed=2)  # shorter than the first window (C + R = 0.96 s)
    partials, final = stream(engine, audio)
    offline = engine.transcribe(audio)
    assert not partials
    assert final.text == offline.text and len(final.text) > 0
    assert [(c.char, c.start, c.end) for c in final.chars] == [
        (c.char, c.start, c.end) for c in offline.chars
    ]


def test_one_engine_serves_concurrent_sessions_independently(checkpoint_dir) -> None:
    engine = Wav2Vec2Engine.from_pretrained(str(checkpoint_dir))
    a, b = speechlike(3.0, seed=5), speechlike(3.0, seed=6)
    alone = [stream(engine, a)[1].text, stream(engine, b)[1].text]

    async def both() -> list[str]:
        async def run(audio: np.ndarray) -> str:
            session = engine.session()
            for i in range(0, len(audio), FRAME_SAMPLES):
                await session.accept(audio[i : i + FRAME_SAMPLES])
                await asyncio.sleep(0)
            return (await session.finalize()).text

        return list(await asyncio.gather(run(a), run(b)))

    assert asyncio.run(both()) == alone


def test_ten_minutes_of_audio_is_handled_in_bounded_windows(checkpoint_dir) -> None:
    engine = Wav2Vec2Engine.from_pretrained(str(checkpoint_dir), options=StreamingOptions(max_window_s=8.0))
    audio = np.tile(speechlike(10.0, seed=7), 60)  # 10 minutes
    final = engine.transcribe(audio)
    assert final.end == pytest.approx(600.0)
    assert final.chars and final.chars[-1].end > 590


def test_embeddings(checkpoint_dir) -> None:
    engine = Wav2Vec2Engine.from_pretrained(str(checkpoint_dir), options=StreamingOptions(embed_layer=-1))
    audio = speechlike(2.0, seed=8)
    frames = engine.embed(audio, layer=1, pooling="none")
    assert frames.shape == (engine.checkpoint.frames_for(len(audio)), engine.checkpoint.hidden_size)
    pooled = engine.embed(audio, layer=1)
    np.testing.assert_allclose(pooled, frames.mean(axis=0), rtol=1e-5, atol=1e-6)
    _, final = stream(engine, audio)
    assert final.embedding is not None and final.embedding.shape == (engine.checkpoint.hidden_size,)
    with pytest.raises(ValueError, match="pooling"):
        engine.embed(audio, pooling="max")


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.zeros((320, 2), np.int16), "mono"),
        (np.zeros(320, np.int32), "int16 or float32"),
        (np.array([np.nan] * 320, np.float32), "NaN"),
        ([0] * 320, "numpy array"),
    ],
)
def test_bad_input_is_rejected_clearly(checkpoint_dir, audio, message) -> None:
    engine = Wav2Vec2Engine.from_pretrained(str(checkpoint_dir))
    with pytest.raises(ValueError, match=message):
        engine.transcribe(audio)
    with pytest.raises(ValueError, match=message):
        asyncio.run(engine.session().accept(audio))


def test_empty_and_tiny_inputs_give_empty_transcripts(checkpoint_dir) -> None:
    engine = Wav2Vec2Engine.from_pretrained(str(checkpoint_dir))
    assert engine.transcribe(np.zeros(0, np.int16)).text == ""
    assert stream(engine, np.zeros(100, np.int16))[1].text == ""


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="chunk_s"):
        StreamingOptions(chunk_s=0.0)
    with pytest.raises(ValueError, match="max_window_s"):
        StreamingOptions(max_window_s=1.0)
