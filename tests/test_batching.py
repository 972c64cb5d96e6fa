"""Cross-session batching: batch calls on a ComputeLane, batched ASR windows (tiny random checkpoint)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.asr_fixtures import make_tiny_checkpoint

from voiceloop.asr.streaming import StreamingOptions, StreamState, Wav2Vec2Engine
from voiceloop.compute import ComputeLane
from voiceloop.frames import FRAME_SAMPLES

pytestmark = pytest.mark.usefixtures("one_thread")


def test_items_queued_while_the_lane_is_busy_run_as_one_batch() -> None:
    lane = ComputeLane("batch")
    gate = threading.Event()
    calls: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [2 * i for i in items]

    async def main() -> list[int]:
        blocker = asyncio.ensure_future(lane.run(gate.wait))
        await asyncio.sleep(0.05)  # the lane is now busy: the next calls pile up
        jobs = [asyncio.ensure_future(lane.batch(double, i)) for i in range(5)]
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        return list(await asyncio.gather(*jobs))

    try:
        assert asyncio.run(main()) == [0, 2, 4, 6, 8]
        assert calls == [[0, 1, 2, 3, 4]]
        assert lane.batch_sizes == {5: 1}
    finally:
        lane.close()


def test_without_batching_each_item_runs_alone_and_a_lone_item_never_waits() -> None:
    lane = ComputeLane("single", batching=False)
    calls: list[list[int]] = []

    def ident(items: list[int]) -> list[int]:
        calls.append(list(items))
        return items

    async def main() -> list[int]:
        return list(await asyncio.gather(*(lane.batch(ident, i) for i in range(3))))

    try:
        assert asyncio.run(main()) == [0, 1, 2]
        assert sorted(calls) == [[0], [1], [2]]
    finally:
        lane.close()


def test_a_failing_item_fails_alone_and_its_batch_mates_still_get_results() -> None:
    lane = ComputeLane("faulty")
    gate = threading.Event()

    def checked(items: list[int]) -> list[int]:
        if any(i < 0 for i in items):
            raise ValueError("negative item")
        return [i + 1 for i in items]

    async def main() -> list[object]:
        blocker = asyncio.ensure_future(lane.run(gate.wait))
        await asyncio.sleep(0.05)
        jobs = [asyncio.ensure_future(lane.batch(checked, i)) for i in (1, -1, 2)]
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        return list(await asyncio.gather(*jobs, return_exceptions=True))

    try:
        good, bad, other = asyncio.run(main())
        assert (good, other) == (2, 3)
        assert isinstance(bad, ValueError)
    finally:
        lane.close()


def test_cooperative_streams_take_turns_and_their_batch_calls_run_together() -> None:
    lane = ComputeLane("coop")
    calls: list[list[str]] = []

    def tag(items: list[str]) -> list[str]:
        assert lane.on_lane()
        calls.append(list(items))
        return [item.upper() for item in items]

    def speaker(name: str):
        for step in range(3):
            yield lane.batch_call(tag, f"{name}{step}")
        yield lane.call(lambda: lane.batch_call(tag, f"{name}-call"))  # lane.call from a stream: inline

    async def consume(name: str) -> list[str]:
        return [item async for item in lane.stream(speaker, name, cooperative=True)]

    async def main() -> list[list[str]]:
        return list(await asyncio.gather(consume("a"), consume("b")))

    try:
        assert asyncio.run(main()) == [["A0", "A1", "A2", "A-CALL"], ["B0", "B1", "B2", "B-CALL"]]
        expected = [f"{name}{step}" for name in "ab" for step in ("0", "1", "2", "-call")]
        assert sorted(item for call in calls for item in call) == sorted(expected)  # each once
        assert max(len(call) for call in calls) == 2  # the two streams' calls shared model calls
    finally:
        lane.close()


def test_a_failing_cooperative_stream_fails_alone() -> None:
    lane = ComputeLane("coop-fail")

    def checked(items: list[int]) -> list[int]:
        if any(i < 0 for i in items):
            raise ValueError("negative item")
        return items

    def counting(sign: int):
        for i in range(1, 4):
            yield lane.batch_call(checked, sign * i)

    async def consume(sign: int) -> list[int]:
        return [item async for item in lane.stream(counting, sign, cooperative=True)]

    async def main() -> list[object]:
        return list(await asyncio.gather(consume(1), consume(-1), return_exceptions=True))

    try:
        good, bad = asyncio.run(main())
        assert good == [1, 2, 3]
        assert isinstance(bad, ValueError)
    finally:
        lane.close()


# -- ASR: several streams' windows in one encoder pass ------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Wav2Vec2Engine:
    root: Path = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), layout="2021", seed=5)
    return Wav2Vec2Engine.from_pretrained(str(root), options=StreamingOptions(embed_layer=-1))


def speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = round(seconds * 16_000)
    envelope = np.abs(np.sin(np.arange(n) / 16_000 * np.pi * 3)) + 0.1
    return (rng.normal(0, 0.2, n) * envelope * 32767 * 0.3).astype(np.int16) / 32768.0


@pytest.mark.parametrize("lengths", [(4.0, 4.0, 4.0), (1.3, 4.0, 2.6)], ids=["equal", "ragged"])
def test_batched_asr_steps_match_each_stream_alone(engine, lengths) -> None:
    """Equal windows stack as they are; ragged ones (a stream's first windows) are padded and masked."""
    audios = [speechlike(s, seed=i).astype(np.float32) for i, s in enumerate(lengths)]
    alone = [StreamState(engine) for _ in audios]
    together = [StreamState(engine) for _ in audios]
    batched_steps = 0
    for start in range(0, max(len(a) for a in audios), FRAME_SAMPLES):
        for states in (alone, together):
            for state, audio in zip(states, audios, strict=True):
                state.add(audio[start : start + FRAME_SAMPLES])
        for state in alone:
            state.step()
        due = [s for s in together if s.due()]
        if len(due) > 1:
            batched_steps += 1
        if due:
            engine.step_many(due)
    assert batched_steps > 0
    for a, b in zip(alone, together, strict=True):
        assert a.committed == b.committed
        fa, fb = a.finish(), b.finish()
        assert fa.text == fb.text
        assert [c.start for c in fa.chars] == [c.start for c in fb.chars]
        np.testing.assert_allclose(
            [c.confidence for c in fa.chars], [c.confidence for c in fb.chars], rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(fa.embedding, fb.embedding, rtol=1e-4, atol=1e-5)


def test_encode_many_pads_without_changing_rows(engine) -> None:
    ckpt = engine.checkpoint
    torch.manual_seed(0)
    hiddens = [torch.randn(n, ckpt.hidden_size) for n in (7, 30, 0, 19)]
    together = ckpt.encode_many(hiddens, layer=-1)
    for hidden, (log_probs, states) in zip(hiddens, together, strict=True):
        alone, alone_states = ckpt.encode(hidden, layer=-1)
        assert log_probs.shape == alone.shape
        torch.testing.assert_close(log_probs, alone, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(states, alone_states, rtol=1e-4, atol=1e-4)


def test_a_stream_that_falls_behind_stops_streaming_and_the_final_catches_up(engine) -> None:
    """A step held up longer than SHED_RTF x its audio: partials pause until the utterance ends."""
    from voiceloop.asr.streaming import SHED_RTF

    audio = (speechlike(4.0, seed=21) * 32767).astype(np.int16)
    frames = [audio[i : i + FRAME_SAMPLES] for i in range(0, len(audio), FRAME_SAMPLES)]
    probe = StreamState(engine)
    first_due = next(i for i, f in enumerate(frames) if (probe.add(f / 32768.0), probe.due())[1])
    hold_s = SHED_RTF * engine.options.chunk_s + 0.2  # the first step waits this long for the lane
    gate = threading.Event()

    async def main() -> tuple[int, str]:
        blocker = asyncio.ensure_future(engine.lane.run(gate.wait))
        await asyncio.sleep(0.01)  # the blocker holds the lane before the first step is queued
        asyncio.get_running_loop().call_later(hold_s, gate.set)
        session, shed, partials = engine.session(), engine.shed_steps, 0
        for frame in frames:
            partials += await session.accept(frame) is not None
        await blocker
        return engine.shed_steps - shed, partials, (await session.finalize()).text

    shed, partials, text = asyncio.run(main())
    assert shed > 0 and partials <= 1  # the slow first step's partial, then none
    expected = StreamState(engine)  # one streaming step, then the final pass
    for frame in frames[: first_due + 1]:
        expected.add(frame / 32768.0)
    expected.step()
    for frame in frames[first_due + 1 :]:
        expected.add(frame / 32768.0)
    assert text == expected.finish().text


def test_concurrent_sessions_share_batches_and_get_their_own_transcripts(engine) -> None:
    audios = [(speechlike(3.0, seed=10 + i) * 32767).astype(np.int16) for i in range(3)]

    async def main() -> list[str]:
        return list(await asyncio.gather(*(_transcript(engine, a) for a in audios)))

    engine.lane.batch_sizes.clear()
    texts = asyncio.run(main())
    assert max(engine.lane.batch_sizes) > 1, engine.lane.batch_sizes  # they did share passes
    assert texts == [asyncio.run(_transcript(engine, a)) for a in audios]  # each alone


async def _transcript(engine: Wav2Vec2Engine, audio: np.ndarray) -> str:
    session = engine.session()
    for i in range(0, len(audio), FRAME_SAMPLES):
        await session.accept(audio[i : i + FRAME_SAMPLES])
    return (await session.finalize()).text


# -- TTS: several sessions' GPT steps in one forward ----------------------------------------------

TTS_STEPS = 24


@pytest.fixture(scope="module")
def tts(chattts_root):
    from voiceloop.tts.chattts.engine import ChatTts, ChatTtsOptions
    from voiceloop.tts.chattts.gpt import SamplingOptions

    sampling = SamplingOptions(max_new_tokens=TTS_STEPS, min_new_tokens=TTS_STEPS)
    # The torch GPT: it runs concurrent sessions' steps as one batched forward (onnxruntime's
    # graph takes one sequence's cache buffers per call, so its rows run one after another).
    options = ChatTtsOptions(sampling=sampling, gpt_backend="torch")
    engine = ChatTts.from_pretrained(str(chattts_root), options)
    yield engine
    engine.lane.close()


def test_forward_rows_matches_each_sequence_alone(tts) -> None:
    llama = tts.gpt.llama
    hidden = llama.hidden
    torch.manual_seed(1)
    prompts = [torch.randn(1, n, hidden) for n in (3, 11, 6)]
    alone, together = [], []
    for prompt in prompts:
        for caches in (alone, together):
            cache = llama.new_cache(1, torch.float32, "cpu")
            llama(prompt, torch.arange(prompt.shape[1])[None], cache)
            caches.append(cache)
    for _ in range(4):
        embeds = [torch.randn(1, 1, hidden) for _prompt in prompts]
        positions = [torch.tensor([[c.length]]) for c in alone]
        expected = [llama(e, p, c) for e, p, c in zip(embeds, positions, alone, strict=True)]
        got = llama.forward_rows(list(zip(embeds, positions, together, strict=True)))
        for want, have in zip(expected, got, strict=True):
            torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)
    assert [c.length for c in together] == [c.length for c in alone] == [7, 15, 10]


def test_concurrent_tts_sessions_batch_their_steps_and_sound_as_alone(tts) -> None:
    import functools

    texts = ["你好，今天天气不错。", "我们明天见。", "谢谢你。"]
    speaker = tts.speaker("seed:3")

    async def one(text: str, seed: int) -> np.ndarray:
        gen = functools.partial(tts.stream, seed=seed)
        chunks = [c async for c in tts.lane.stream(gen, text, speaker, cooperative=True)]
        return np.concatenate(chunks)

    async def together() -> list[np.ndarray]:
        return list(await asyncio.gather(*(one(t, i) for i, t in enumerate(texts))))

    async def alone() -> list[np.ndarray]:
        return [await one(t, i) for i, t in enumerate(texts)]

    expected = asyncio.run(alone())
    tts.lane.batch_sizes.clear()
    got = asyncio.run(together())
    assert max(tts.lane.batch_sizes) > 1, tts.lane.batch_sizes
    for want, have in zip(expected, got, strict=True):
        assert len(have) == len(want) == 512 * TTS_STEPS - 256
        diff = np.abs(have.astype(np.int32) - want.astype(np.int32))
        assert diff.max() <= 2, diff.max()  # same tokens; batched matmuls round differently


def test_lanes_sharing_the_cores_compute_on_one_thread() -> None:
    from voiceloop.compute import share_cores

    first, second = ComputeLane("one"), ComputeLane("two")
    share_cores(first, second)

    async def main() -> set[int]:
        jobs = [lane.run(threading.get_ident) for _ in range(5) for lane in (first, second)]
        return set(await asyncio.gather(*jobs))

    try:
        threads = asyncio.run(main())
        assert len(threads) == 1
        assert first.call(second.on_lane) and second.call(first.on_lane)
    finally:
        first.close()
