"""Stage graph: flow, end of stream, cancellation, error isolation, overflow accounting."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
from helpers.fakes import Collect

from voiceloop.clock import run
from voiceloop.frames import AudioFrame, EndOfStream, Frame
from voiceloop.pipeline import Channel, Pipeline, Stage, StageError


class Numbers(Stage):
    """A source of ``count`` audio frames, optionally live (never waits) and paced."""

    name = "numbers"

    def __init__(self, count: int, *, live: bool = False, period: float = 0.0) -> None:
        super().__init__()
        self.count, self.live, self.period = count, live, period

    async def produce(self) -> None:
        for seq in range(self.count):
            frame = AudioFrame(np.zeros(320, np.int16), seq=seq)
            if self.live:
                self.emit_nowait(frame)
            else:
                await self.emit(frame)
            if self.period:
                await asyncio.sleep(self.period)
        await self.emit(EndOfStream())


class Passthrough(Stage):
    def __init__(self, name: str, delay: float = 0.0) -> None:
        super().__init__()
        self.name, self.delay = name, delay

    async def process(self, frame: Frame) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        await self.emit(frame)


def test_frames_flow_in_order_and_end_of_stream_arrives() -> None:
    sink = Collect()
    stages = [Numbers(500), *(Passthrough(f"p{i}") for i in range(6)), sink]
    run(Pipeline(stages, queue_size=4).run(), clock="virtual")
    assert [f.seq for f in sink.frames] == list(range(500))
    assert sink.ended and sink.stopped


def test_no_task_outlives_a_cancelled_pipeline() -> None:
    async def main() -> set[asyncio.Task]:
        before = asyncio.all_tasks()
        sink = Collect()
        pipeline = Pipeline([Numbers(10_000, period=0.02), Passthrough("slow", 0.05), sink])
        task = asyncio.create_task(pipeline.run())
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sink.stopped, "stop hooks run on cancellation"
        return asyncio.all_tasks() - before - {asyncio.current_task()}

    assert run(main(), clock="virtual") == set()


def test_a_failing_stage_is_named_and_stops_the_pipeline_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    class Boom(Stage):
        name = "boom"

        async def process(self, frame: Frame) -> None:
            if frame.seq == 3:  # type: ignore[attr-defined]
                raise ZeroDivisionError("bad frame")
            await self.emit(frame)

    async def main() -> None:
        sink = Collect()
        pipeline = Pipeline([Numbers(100, period=0.02), Boom(), sink])
        with pytest.raises(StageError, match="stage 'boom' failed: ZeroDivisionError: bad frame") as info:
            await pipeline.run()
        assert info.value.stage == "boom"
        assert sink.stopped
        assert pipeline.metrics.counters["stage_errors.boom"] == 1
        assert len(asyncio.all_tasks()) == 1

    with caplog.at_level(logging.DEBUG, logger="voiceloop"):
        run(main(), clock="virtual")
    # reported once, by the StageError (a CLI prints it as one line), not also as an error log
    assert [r.levelno for r in caplog.records if "stage boom failed" in r.getMessage()] == [logging.DEBUG]


def test_live_source_never_blocks_and_counts_dropped_frames() -> None:
    sink = Collect()
    source = Numbers(300, live=True, period=0.02)
    pipeline = Pipeline([source, Passthrough("slow", 0.1), sink], capture_queue_size=10)
    metrics = run(pipeline.run(), clock="virtual")
    dropped = metrics.counters["dropped.numbers->slow"]
    assert dropped > 0
    # every frame is either delivered or counted as dropped (EndOfStream is never dropped here)
    assert len(sink.frames) + dropped == 300
    seqs = [f.seq for f in sink.frames]
    assert seqs == sorted(seqs)


def test_backpressured_channel_waits_instead_of_dropping() -> None:
    async def main() -> None:
        channel = Channel("x", 2)
        for i in range(2):
            await channel.put(AudioFrame(np.zeros(1, np.int16), seq=i))
        blocked = asyncio.create_task(channel.put(AudioFrame(np.zeros(1, np.int16), seq=2)))
        await asyncio.sleep(0.1)
        assert not blocked.done()
        assert (await channel.get()).seq == 0
        await blocked
        assert len(channel) == 2 and channel.dropped == 0
        with pytest.raises(asyncio.QueueFull):
            channel.put_nowait(AudioFrame(np.zeros(1, np.int16)))

    run(main(), clock="virtual")


def test_invalid_construction() -> None:
    with pytest.raises(ValueError, match="at least one stage"):
        Pipeline([])
    with pytest.raises(ValueError, match="maxsize must be >= 1"):
        Channel("q", 0)
