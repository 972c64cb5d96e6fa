"""Capture and play times from sample counts (SampleClock), and the microphone's times under load.

A loaded machine runs PortAudio's capture callbacks late and then in a burst, with no sample
lost; the mic's frame times must keep following the sample count (monotone, no jump), and move
forward only when PortAudio reports an input overflow (samples really lost). The microphone runs
here on a fake PortAudio driven from a virtual clock: no audio device, no sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from helpers.fakes import Collect

from voiceloop import clock
from voiceloop.clock import RESYNC_S, SampleClock
from voiceloop.frames import AudioFrame
from voiceloop.io import devices_mic, devices_stream
from voiceloop.io.devices_list import DeviceInfo
from voiceloop.pipeline import Pipeline

BLOCK_S = 0.02
T0 = 1000.0  # pipeline time of the first captured sample


# -- SampleClock -----------------------------------------------------------------------------------


def test_default_clock_follows_the_earliest_estimate_and_resyncs_on_a_late_one() -> None:
    """The speaker and WebRTC behaviour: a late first estimate is corrected back; a gap moves it on."""
    sc = SampleClock()
    assert sc.place(T0 + 0.03, 480, 24_000) == T0 + 0.03  # primed late
    assert sc.place(T0 + 0.005, 480, 24_000) == pytest.approx(T0 + 0.005)  # earlier: re-anchored back
    assert sc.origin == pytest.approx(T0 - 0.015)
    late = T0 - 0.015 + 0.04 + RESYNC_S + 0.05
    assert sc.place(late, 480, 24_000) == late  # a gap: re-anchored forward


def test_trusted_count_ignores_late_bursts_and_moves_forward_on_loss_only() -> None:
    sc = SampleClock(trust_count=True)
    n, rate = 960, 48_000
    starts = [sc.place(T0, n, rate)]
    # blocks 1-9 reach the callback 150 ms late, then all at once: the count holds
    starts += [sc.place(T0 + 10 * BLOCK_S + 0.15 - BLOCK_S, n, rate) for _ in range(1, 10)]
    # an estimate earlier than the count is not a reason to go back either
    starts.append(sc.place(T0, n, rate))
    assert starts == pytest.approx([T0 + i * BLOCK_S for i in range(11)])
    # an overflow (reported loss of 100 ms) re-anchors forward, to the estimate
    after_loss = T0 + 11 * BLOCK_S + 0.1
    assert sc.place(after_loss, n, rate, resync=True) == after_loss
    # a loss flag on an early estimate (PortAudio zero-filled instead) never moves the times back
    assert sc.place(T0, n, rate, resync=True) == pytest.approx(after_loss + BLOCK_S)


# -- the microphone on a fake PortAudio ------------------------------------------------------------


class Flags:
    """PortAudio's callback status (sounddevice.CallbackFlags): truthy when any flag is set."""

    def __init__(self, input_overflow: bool = False) -> None:
        self.input_overflow = input_overflow

    def __bool__(self) -> bool:
        return self.input_overflow


class FakePortAudio:
    """Just enough of sounddevice for MicSource: one 48 kHz mono input device, callbacks on demand."""

    class PortAudioError(Exception):
        pass

    class CallbackAbort(Exception):
        pass

    def __init__(self) -> None:
        self.stream: Any = None
        self.rate = 48_000

    def check_input_settings(self, *, device: int, channels: int, dtype: str, samplerate: int) -> None:
        if samplerate != self.rate or channels != 1:
            raise self.PortAudioError(f"{samplerate} Hz x{channels} not supported")

    def RawInputStream(self, **settings: Any) -> Any:  # (sounddevice's name)
        settings["latency"] = 0.02  # the opened stream reports seconds, not "low"
        self.stream = SimpleNamespace(
            active=True, start=lambda: None, abort=lambda: None, close=lambda: None, **settings
        )
        return self.stream


def mic_on_fake_portaudio(monkeypatch: pytest.MonkeyPatch) -> tuple[devices_mic.MicSource, FakePortAudio]:
    sd = FakePortAudio()
    info = DeviceInfo(index=0, name="fake mic", inputs=1, outputs=0, default_rate=sd.rate)
    monkeypatch.setattr(devices_mic, "import_sounddevice", lambda: sd)
    monkeypatch.setattr(devices_mic, "pick_device", lambda spec, kind: 0)
    monkeypatch.setattr(devices_mic, "device_info", lambda index: info)
    # PortAudio's thread reads time.monotonic(); here it reads the virtual clock, as the loop does
    virtual_time = SimpleNamespace(monotonic=clock.now)
    monkeypatch.setattr(devices_mic, "time", virtual_time)
    monkeypatch.setattr(devices_stream, "time", virtual_time)
    return devices_mic.MicSource(), sd


def capture(
    monkeypatch: pytest.MonkeyPatch, callbacks: list[tuple[float, int, bool]]
) -> tuple[list[AudioFrame], devices_mic.MicSource]:
    """Run the mic while the fake device calls back with 20 ms blocks.

    ``callbacks``: (callback time, samples lost just before the block, PortAudio's overflow flag).
    """
    mic, sd = mic_on_fake_portaudio(monkeypatch)
    sink = Collect()

    async def device() -> None:
        while sd.stream is None:
            await asyncio.sleep(0)
        n = sd.stream.blocksize
        position = 0  # samples captured so far, lost ones included
        for at, lost, overflow in callbacks:
            await asyncio.sleep(max(0.0, at - clock.now()))
            position += lost
            block = (np.sin(np.arange(position, position + n) * 0.05) * 3000).astype(np.int16)
            sd.stream.callback(block.tobytes(), n, None, Flags(overflow))
            position += n
        await asyncio.sleep(0.1)
        mic.end()

    async def main() -> None:
        await asyncio.gather(Pipeline([mic, sink]).run(), device())

    clock.run(main(), clock="virtual", start=T0)
    return [f for f in sink.frames if isinstance(f, AudioFrame)], mic


def steady(first: int, last: int, shift: float = 0.0) -> list[tuple[float, int, bool]]:
    """On-time callbacks for blocks first..last-1 (block i ends, and is handed over, at T0 + (i+1) 20 ms)."""
    return [(T0 + (i + 1) * BLOCK_S + shift, 0, False) for i in range(first, last)]


def assert_monotone(frames: list[AudioFrame]) -> None:
    """Every frame starts at or after its predecessor's end; seqs count up."""
    for a, b in itertools.pairwise(frames):
        assert b.seq > a.seq
        assert b.capture_time >= a.capture_time + BLOCK_S - 1e-9, (a.seq, a.capture_time, b.capture_time)


def test_mic_times_follow_the_sample_count_through_a_late_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    # blocks 10-19 reach the callback 150 ms late (the machine was busy), all at once; none is lost
    late = [(T0 + 20 * BLOCK_S + 0.15, 0, False)] * 10
    frames, mic = capture(monkeypatch, steady(0, 10) + late + steady(20, 50))
    assert mic.sample_rate == 48_000 and mic.xruns == 0 and mic.dropped == 0
    assert len(frames) >= 45 and frames[0].seq == 0
    assert_monotone(frames)
    assert max(abs(f.capture_time - (T0 + f.seq * BLOCK_S)) for f in frames) < 1e-9


def test_mic_times_move_forward_on_an_input_overflow(monkeypatch: pytest.MonkeyPatch) -> None:
    # PortAudio loses 5 blocks (100 ms) and says so with the next block; that block is on time
    lost = 5 * 960
    after = [(T0 + 26 * BLOCK_S, lost, True), *steady(26, 50)]
    frames, mic = capture(monkeypatch, steady(0, 20) + after)
    assert mic.xruns == 1 and mic.dropped == 0
    assert_monotone(frames)
    before = frames[:15]  # (the resampler holds back a frame or two: those come after the loss)
    assert max(abs(f.capture_time - (T0 + f.seq * BLOCK_S)) for f in before) < 1e-9
    # the frames after the loss are on the device's timeline again, 100 ms on
    tail = frames[-20:]
    assert max(abs(f.capture_time - (T0 + 0.1 + f.seq * BLOCK_S)) for f in tail) < 1e-9


@pytest.mark.parametrize("buffer_blocks", [1, 2])
def test_a_dropped_block_hands_its_overflow_flag_on(buffer_blocks: int) -> None:
    """A block dropped for a stalled loop is counted; the loss PortAudio reported before it is not,
    so the next block must still re-anchor."""
    mic = devices_mic.MicSource(buffer_blocks=buffer_blocks)
    mic.sample_rate, mic.channels = 48_000, 1
    block = bytes(2 * 960)
    mic._put(block, T0, True, True)
    for i in range(buffer_blocks):
        mic._put(block, T0 + (i + 1) * BLOCK_S, False, False)
    assert mic.dropped == 1 and mic._captured.samples == 960
    assert [overflow for *_, overflow in mic._blocks] == [True] + [False] * (buffer_blocks - 1)
