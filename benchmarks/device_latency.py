"""Desktop device latencies on a virtual PulseAudio server (the test harness in tests/pulse.py).

Measures, with ``MicSource``/``SpeakerSink`` on the server's null sinks (48 kHz):

* **flush → silence**: a tone is playing with a full buffer; ``sink.flush()`` at time T; the last
  non-zero sample recorded from the speaker's monitor, mapped to the clock, minus T. This is
  what a barge-in costs after the decision is made (goal ≤ 100 ms).
* **first write → audible**: an idle sink, ``await sink.write(tone)`` at T; the first non-zero
  sample at the monitor minus T. Also how far ``write()``'s returned play time is off.
* **mic capture**: a tone is played into the mic feed (onset = its callback time + its output
  latency); ``delivery`` = when the first loud frame reaches the next stage, ``stamp error`` =
  that frame's ``capture_time`` (advanced to the onset inside the frame) minus the onset.
* **mic → speaker loop**: a duplex harness stream plays clicks into the mic feed and records the
  speaker's monitor on one clock (sample exact); the app copies every mic frame to the speaker.

Times at the sinks: PortAudio's reported latencies through ALSA → PulseAudio overstate the real
ones (40 ms reported per stream, ~20 ms real), so the harness latency is measured instead: a
duplex click round trip speaker → monitor (sample exact), split evenly between its playback and
capture sides. A sample reached the sink at its arrival in the recorder's callback (the earliest
callbacks bound the delivery delay) minus half that round trip, and a played sample reached the
mic feed half a round trip after it was handed to PortAudio. ``*_upper_bound`` leaves the
correction out. Expect a few ms of error, not sample accuracy (except the loop).

    python benchmarks/device_latency.py [--repeats 10]   # writes benchmarks/results/device_latency.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.pulse import Pulse, PulseServer, missing, use_server  # noqa: E402
from machine import finish, machine_info, print_table  # noqa: E402

RATE = 24_000  # the TTS rate the speaker is opened at


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return np.rint(amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def stats(values: list[float]) -> dict[str, Any]:
    ms = sorted(v * 1000 for v in values)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "min_ms": round(ms[0], 1),
        "max_ms": round(ms[-1], 1),
        "all_ms": [round(v, 1) for v in ms],
    }


async def flush_to_silence(pulse: Pulse, repeats: int, half_rt: float) -> list[float]:
    from voiceloop.io.devices import SpeakerSink

    out = []
    sink = SpeakerSink(pulse.speaker, sample_rate=RATE)
    await sink.open()
    try:
        for _ in range(repeats):
            rec = pulse.recorder()
            audio = tone(1000, 2.0, RATE)
            for i in range(0, RATE // 2, 480):  # play 0.5 s, with the 0.2 s buffer kept full
                await sink.write(audio[i : i + 480])
            flushed_at = time.monotonic()
            sink.flush()
            await asyncio.sleep(0.4)
            recording = rec.stop()
            start = rec.index_at(flushed_at - 0.1)
            tail = np.nonzero(recording[start:])[0]
            out.append(rec.arrival_of(start + int(tail[-1]) + 1) - half_rt - flushed_at)
            await asyncio.sleep(0.1)
    finally:
        await sink.close()
    return out


async def first_write_to_audible(
    pulse: Pulse, repeats: int, half_rt: float
) -> tuple[list[float], list[float]]:
    from voiceloop.io.devices import SpeakerSink

    audible, predicted_error = [], []
    sink = SpeakerSink(pulse.speaker, sample_rate=RATE)
    await sink.open()
    try:
        for _ in range(repeats):
            rec = pulse.recorder()
            await asyncio.sleep(0.3)  # idle: the device plays silence
            written_at = time.monotonic()
            predicted = await sink.write(tone(1000, 0.2, RATE))
            await sink.drain()
            await asyncio.sleep(0.1)
            recording = rec.stop()
            start = rec.index_at(written_at - 0.1)
            onset = rec.arrival_of(start + int(np.nonzero(recording[start:])[0][0])) - half_rt
            audible.append(onset - written_at)
            predicted_error.append(onset - predicted)  # type: ignore[operator]
    finally:
        await sink.close()
    return audible, predicted_error


async def mic_capture(pulse: Pulse, repeats: int, half_rt: float) -> tuple[list[float], list[float]]:
    from voiceloop.frames import AudioFrame
    from voiceloop.io.devices import MicSource
    from voiceloop.pipeline import Pipeline, Stage

    class FirstLoud(Stage):
        name = "probe"

        def __init__(self) -> None:
            super().__init__()
            self.hit: tuple[float, AudioFrame] | None = None

        async def process(self, frame: Any) -> None:
            if self.hit is None and isinstance(frame, AudioFrame) and np.abs(frame.samples).max() > 3000:
                self.hit = (time.monotonic(), frame)

    delivery, stamp_error = [], []
    for _ in range(repeats):
        probe = FirstLoud()
        task = asyncio.ensure_future(Pipeline([MicSource(pulse.mic, max_seconds=1.0), probe]).run())
        await asyncio.sleep(0.3)
        player = pulse.play(tone(1000, 0.3, pulse.rate))
        await task
        player.stop()
        assert probe.hit is not None and player.handed is not None, "the tone never reached the mic"
        arrived, frame = probe.hit
        onset = player.handed + half_rt
        inside = int(np.argmax(np.abs(frame.samples) > 3000)) / frame.sample_rate
        delivery.append(arrived - onset)
        stamp_error.append(frame.capture_time + inside - onset)
    return delivery, stamp_error


async def mic_to_speaker(pulse: Pulse, repeats: int) -> tuple[list[float], list[float]]:
    """Sample-exact: one duplex harness stream plays clicks into the mic feed, records the speaker."""
    import sounddevice as sd

    from voiceloop.frames import AudioFrame
    from voiceloop.io.devices import MicSource, SpeakerSink
    from voiceloop.pipeline import Pipeline, Stage

    sink = SpeakerSink(pulse.speaker, sample_rate=16_000)
    levels: list[int] = []

    class Echo(Stage):
        name = "echo"

        async def start(self) -> None:
            await sink.open()

        async def stop(self) -> None:
            await sink.close()

        async def process(self, frame: Any) -> None:
            if isinstance(frame, AudioFrame):
                levels.append(sink.buffered())
                await sink.write(frame.samples)

    period = pulse.rate // 2  # a click every 0.5 s
    clicks = np.zeros(period * (repeats + 2), np.float32)
    starts = [period * (k + 1) for k in range(repeats)]
    for s in starts:
        clicks[s : s + 48] = 0.8  # 1 ms pulse
    task = asyncio.ensure_future(
        Pipeline([MicSource(pulse.mic, max_seconds=len(clicks) / pulse.rate + 0.5), Echo()]).run()
    )
    await asyncio.sleep(0.3)
    recording = await asyncio.to_thread(
        sd.playrec, clicks, pulse.rate, channels=1, device=("vspeaker_mon", "vmic_feed"),
        blocksize=480, latency="low", blocking=True,
    )  # fmt: skip
    await task
    heard = np.abs(recording[:, 0]) > 0.2
    out = []
    for s in starts:
        later = np.nonzero(heard[s : s + period])[0]
        if len(later):
            out.append(later[0] / pulse.rate)
    return out, [level / 16_000 for level in levels]


async def measure(pulse: Pulse, repeats: int) -> dict[str, Any]:
    round_trip = pulse.round_trip()
    half_rt = round_trip / 2
    flush = await flush_to_silence(pulse, repeats, half_rt)
    audible, predicted = await first_write_to_audible(pulse, repeats, half_rt)
    delivery, stamp = await mic_capture(pulse, repeats, half_rt)
    loop, fifo = await mic_to_speaker(pulse, repeats)
    return {
        "harness_round_trip": stats([round_trip]),
        "flush_to_silence": stats(flush),
        "flush_to_silence_upper_bound": stats([v + half_rt for v in flush]),
        "first_write_to_audible": stats(audible),
        "write_play_time_error": stats(predicted),
        "mic_capture_to_pipeline": stats(delivery),
        "mic_capture_time_stamp_error": stats(stamp),
        "mic_to_speaker_loop": stats(loop),
        "mic_to_speaker_loop_minus_harness": stats([v - round_trip for v in loop]),
        "mic_to_speaker_loop_fifo_before_write": {k: v for k, v in stats(fifo).items() if k != "all_ms"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/device_latency.json"))
    args = parser.parse_args()
    reason = missing()
    if reason:
        sys.exit(f"cannot run: {reason}")
    machine = machine_info()
    server = PulseServer()
    server.start()
    try:
        use_server(server)
        results = asyncio.run(measure(Pulse(server), args.repeats))
    finally:
        server.stop()
    report = {
        "benchmark": "device_latency",
        "description": "barge-in flush -> silence, first write -> audible, write() play-time error, mic "
        "capture delivery and capture_time stamp error, mic -> speaker loop; how each is measured: the "
        "docstring of benchmarks/device_latency.py",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "setup": "PulseAudio 16 null sinks (48 kHz) via the ALSA pulse plugin; SpeakerSink 24 kHz "
        "(loop: 16 kHz), 20 ms blocks, latency='low', buffer 0.2 s; MicSource 16 kHz mono 20 ms",
        "machine": finish(machine),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print_table(
        "device latency (ms)",
        ["measure", "median", "min", "max"],
        [
            [name, f"{v['median_ms']:.1f}", v["min_ms"], v["max_ms"]]
            for name, v in results.items()
            if "all_ms" in v
        ],
    )


if __name__ == "__main__":
    main()
