"""Clock modes, compute lanes (model work off the event loop, one model for many pipelines), files, CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile
from helpers.fakes import Collect

from voiceloop.clock import now, run
from voiceloop.compute import CancelToken, ComputeLane
from voiceloop.frames import AudioFrame, Frame
from voiceloop.io import FileSource, WavSink, read_audio
from voiceloop.pipeline import Pipeline, Stage


def test_virtual_clock_jumps_over_idle_waits() -> None:
    async def main() -> tuple[float, float]:
        start_wall, start = time.monotonic(), now()
        await asyncio.sleep(3600)
        return now() - start, time.monotonic() - start_wall

    virtual, wall = run(main(), clock="virtual")
    assert virtual == 3600.0 and wall < 60


def test_fast_clock_keeps_real_compute_time_but_skips_idle() -> None:
    def compute() -> None:
        time.sleep(0.2)  # stands in for a model's forward pass

    async def main() -> tuple[float, float]:
        lane = ComputeLane("test")
        start = now()
        await asyncio.sleep(100)  # idle: skipped
        idle = now() - start
        start = now()
        await lane.run(compute)
        lane.close()
        return idle, now() - start

    idle, busy = run(main(), clock="fast")
    assert idle >= 100
    assert busy >= 0.2, "compute in a lane is not skipped"


def test_compute_lane_keeps_the_loop_free_and_serves_many_sessions() -> None:
    lane = ComputeLane("model")
    threads: set[str] = set()

    def forward(x: int) -> int:
        threads.add(threading.current_thread().name)
        time.sleep(0.05)
        return x * 2

    async def main() -> tuple[list[int], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        tick_task = asyncio.create_task(ticker())
        results = await asyncio.gather(*(lane.run(forward, i) for i in range(6)))  # six "pipelines"
        tick_task.cancel()
        return list(results), ticks

    results, ticks = asyncio.run(main())
    lane.close()
    assert results == [0, 2, 4, 6, 8, 10]
    assert len(threads) == 1 and next(iter(threads)).startswith("voiceloop-model")
    assert ticks > 6, "the event loop kept running while the model computed"


def test_compute_lane_stream_is_cancellable_between_items() -> None:
    lane = ComputeLane("tts")
    produced: list[int] = []
    token = CancelToken()

    def generate():
        for i in range(1000):
            if token.cancelled:
                return
            time.sleep(0.002)
            produced.append(i)
            yield i

    async def main() -> list[int]:
        got = []
        async for item in lane.stream(generate, cancel=token):
            got.append(item)
            if len(got) == 3:
                break
        await asyncio.sleep(0.1)
        return got

    got = asyncio.run(main())
    lane.close()
    assert got == [0, 1, 2] and token.cancelled
    assert len(produced) < 50, "generation stopped soon after the consumer left"


def test_compute_lane_stream_raises_the_workers_error() -> None:
    lane = ComputeLane("bad")

    def broken():
        yield 1
        raise RuntimeError("weights missing")

    async def main() -> None:
        async for _ in lane.stream(broken):
            pass

    with pytest.raises(RuntimeError, match="weights missing"):
        asyncio.run(main())
    lane.close()


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 440 * t)
    return np.stack([mono] * channels, axis=1).astype(np.float32)


@pytest.mark.parametrize(
    ("suffix", "rate", "channels"), [(".wav", 44_100, 2), (".flac", 48_000, 1), (".wav", 8_000, 1)]
)
def test_file_source_reads_wav_and_flac_into_canonical_frames(tmp_path, suffix, rate, channels) -> None:
    path = tmp_path / f"in{suffix}"
    soundfile.write(str(path), _tone(1.0, rate, channels), rate)
    sink = Collect()
    pipeline = Pipeline([FileSource(path, pace=True), sink])
    run(pipeline.run(), clock="virtual")
    audio = [f for f in sink.frames if isinstance(f, AudioFrame)]
    assert len(audio) in (50, 51) and all(
        len(f.samples) == 320 and f.samples.dtype == np.int16 for f in audio
    )
    assert [f.seq for f in audio] == list(range(len(audio)))
    steps = np.diff([f.capture_time for f in audio])
    assert np.allclose(steps, 0.02), "paced frames are 20 ms apart on the clock"
    assert sink.ended, "end of stream arrived after the last frame"


def test_unpaced_file_source_is_backpressured_and_loses_nothing(tmp_path) -> None:
    path = tmp_path / "in.wav"
    soundfile.write(str(path), _tone(3.0, 16_000), 16_000)

    class Slow(Stage):
        name = "slow"

        async def process(self, frame: Frame) -> None:
            await asyncio.sleep(0.01)
            await self.forward(frame)

    sink = Collect()
    pipeline = Pipeline([FileSource(path, pace=False), Slow(), sink], queue_size=2)
    metrics = run(pipeline.run(), clock="virtual")
    assert len([f for f in sink.frames if isinstance(f, AudioFrame)]) == 150
    assert not any(k.startswith("dropped") for k in metrics.counters)


def test_bad_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        read_audio(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(ValueError, match="cannot decode"):
        read_audio(junk)
    with pytest.raises(ValueError, match="sample_rate is required"):
        FileSource(np.zeros(100, np.int16))
    with pytest.raises(ValueError, match="NaN"):
        FileSource(np.array([0.0, np.nan] * 100, np.float32), sample_rate=16_000)


def test_wav_sink_records_silence_between_writes_and_cuts_at_flush(tmp_path) -> None:
    sink = WavSink(tmp_path / "out.wav", 8_000)

    async def main() -> None:
        await sink.open()
        await asyncio.sleep(0.5)
        await sink.write(np.full(8_000, 100, np.int16))  # plays 0.5 .. 1.5
        await asyncio.sleep(0.5)
        assert sink.buffered() == pytest.approx(4_000, abs=1)
        assert sink.flush() == pytest.approx(4_000, abs=1)  # cut at 1.0
        await asyncio.sleep(1.0)
        await sink.write(np.full(800, 200, np.int16))  # plays 2.0 .. 2.1
        await sink.close()

    run(main(), clock="virtual")
    audio, rate = soundfile.read(str(tmp_path / "out.wav"), dtype="int16")
    assert rate == 8_000 and len(audio) == 16_800
    assert not audio[:4_000].any() and (audio[4_000:8_000] == 100).all()
    assert not audio[8_000:16_000].any() and (audio[16_000:] == 200).all()


def test_cli_help_and_vad_json(tmp_path) -> None:
    help_text = subprocess.run([sys.executable, "-m", "voiceloop", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "vad" in help_text.stdout
    rate = 16_000
    noise = np.random.default_rng(0).normal(0, 0.3, rate).astype(np.float32)
    signal = np.concatenate(
        [np.zeros(rate, np.float32), noise * np.hanning(rate), np.zeros(rate, np.float32)]
    )
    soundfile.write(str(tmp_path / "x.wav"), signal, rate)
    out = subprocess.run(
        [sys.executable, "-m", "voiceloop", "vad", str(tmp_path / "x.wav"), "--json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["duration"] == 3.0 and isinstance(result["segments"], list)


def test_cli_errors_are_one_line_without_traceback(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "voiceloop", "vad", str(tmp_path / "nope.wav")], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.strip() == f"voiceloop vad: error: audio file not found: {tmp_path / 'nope.wav'}"
    out = subprocess.run(
        [sys.executable, "-m", "voiceloop", "vad", "x.wav", "--aggressiveness", "7"],
        capture_output=True,
        text=True,
    )
    assert (
        out.returncode == 2 and "aggressiveness must be 0..3" in out.stderr and "Traceback" not in out.stderr
    )
