"""Desktop devices against a real (private, virtual) PulseAudio server: listing, mic, speaker, errors.

Assertions are on frequencies, silence and counters, never on tight timings (the machines are
shared); the latencies are measured by ``benchmarks/device_latency.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.fakes import Collect
from helpers.pulse import Pulse, missing, pulse_fixture  # noqa: F401  (registers the `pulse` fixture)

from voiceloop.errors import UserError
from voiceloop.frames import FRAME_SAMPLES, INPUT_RATE, AudioChunk, AudioFrame, EndOfStream, ReplyEnd
from voiceloop.io.output import OutputStage
from voiceloop.pipeline import Pipeline, Stage
from voiceloop.timeline import Metrics

ROOT = Path(__file__).parents[1]


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return np.rint(amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def peak_hz(x: np.ndarray, rate: int) -> float:
    x = x.astype(np.float64) * np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


def loud(x: np.ndarray) -> bool:
    return bool(len(x)) and float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) > 1000


# -- listing and picking ---------------------------------------------------------------------------


def test_devices_listed_and_picked_by_name_and_index(pulse: Pulse) -> None:
    from voiceloop.io.devices import list_devices, pick_device

    devices = list_devices()
    names = {d.name: d for d in devices}
    assert {"vmic", "vmic_feed", "vspeaker", "vspeaker_mon"} <= set(names)
    assert any(d.is_default_in for d in devices) and any(d.is_default_out for d in devices)
    assert names["vmic"].inputs > 0 and names["vspeaker"].outputs > 0 and names["vmic"].default_rate > 0
    # an exact name wins over the longer names that contain it; case does not matter
    assert pick_device("VMIC", "input") == names["vmic"].index
    assert pick_device("vspeaker", "output") == names["vspeaker"].index
    assert pick_device("speaker_m", "input") == names["vspeaker_mon"].index
    index = names["vspeaker"].index
    assert pick_device(index, "output") == index
    assert pick_device(str(index), "output") == index
    default = pick_device(None, "input")
    assert next(d for d in devices if d.index == default).is_default_in


def test_unknown_or_ambiguous_device_lists_the_devices(pulse: Pulse) -> None:
    from voiceloop.io.devices import DeviceError, pick_device

    with pytest.raises(DeviceError) as unknown:
        pick_device("no such mic", "input")
    assert isinstance(unknown.value, UserError)
    assert "no such mic" in str(unknown.value) and "vmic" in str(unknown.value)
    assert "vspeaker_mon" in str(unknown.value)
    with pytest.raises(DeviceError, match=r"ambiguous.*vmic_feed"):
        pick_device("mic", "input")
    with pytest.raises(DeviceError, match=r"index 999.*vmic"):
        pick_device(999, "output")


# -- microphone ------------------------------------------------------------------------------------


async def capture_while_playing(pulse: Pulse, mic_rate: int | None, seconds: float = 2.0) -> list[AudioFrame]:
    from voiceloop.io.devices import MicSource

    mic = MicSource(pulse.mic, sample_rate=mic_rate, max_seconds=seconds)
    sink = Collect()
    task = asyncio.ensure_future(Pipeline([mic, sink]).run())
    # The tone starts once 0.3 s of the mic's audio has arrived: opening the stream blocks the loop
    # for longer than a fixed 0.3 s sleep on a loaded machine, and the tone then began with capture.
    while len(sink.frames) < 15 and not task.done():
        await asyncio.sleep(0.01)
    player = pulse.play(tone(1000, 1.0, pulse.rate))
    try:
        await task
    finally:
        player.stop()
    assert mic.sample_rate == (mic_rate or INPUT_RATE)
    return [f for f in sink.frames if isinstance(f, AudioFrame)]


@pytest.mark.parametrize("mic_rate", [None, 48_000], ids=["16k-from-device", "48k-resampled"])
async def test_mic_tone_arrives_as_canonical_frames(pulse: Pulse, mic_rate: int | None) -> None:
    frames = await capture_while_playing(pulse, mic_rate)
    assert len(frames) >= 90  # 2 s of 20 ms frames (a few may come in late on a loaded machine)
    assert all(f.samples.dtype == np.int16 and f.samples.shape == (FRAME_SAMPLES,) for f in frames)
    assert all(f.sample_rate == INPUT_RATE for f in frames)
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs))
    times = [f.capture_time for f in frames]
    assert times == sorted(times) and times[-1] <= time.monotonic()
    audio = np.concatenate([f.samples for f in frames])
    voiced = [f.samples for f in frames if loud(f.samples)]
    assert len(voiced) >= 30, "the tone did not reach the microphone"
    assert abs(peak_hz(np.concatenate(voiced), INPUT_RATE) - 1000) < 20
    assert not loud(audio[: FRAME_SAMPLES * 5])  # silence before the tone started


async def test_mic_drops_oldest_when_the_loop_stalls(pulse: Pulse) -> None:
    from voiceloop.io.devices import MicSource

    mic = MicSource(pulse.mic, buffer_blocks=5, max_seconds=1.5)
    sink = Collect()
    pipeline = Pipeline([mic, sink])
    task = asyncio.ensure_future(pipeline.run())
    await asyncio.sleep(0.3)
    time.sleep(0.6)  # the event loop is blocked; the capture callback must not be
    metrics = await task
    frames = [f for f in sink.frames if isinstance(f, AudioFrame)]
    assert mic.dropped > 0 and metrics.counters["dropped.mic"] == mic.dropped
    # the stall is visible as such: blocks captured during it waited (about) that long for the loop
    assert metrics.gauges["mic.handoff_max_ms"] >= 300
    seqs = [f.seq for f in frames]
    assert any(b - a > 1 for a, b in itertools.pairwise(seqs)), "dropped audio leaves a seq gap"
    # capture times stay on the device's timeline across the gap
    t0 = frames[0].capture_time - frames[0].seq * 0.02
    assert max(abs(f.capture_time - (t0 + f.seq * 0.02)) for f in frames) < 0.1 + 1e-9


# -- speaker ---------------------------------------------------------------------------------------


async def test_speaker_plays_a_tone(pulse: Pulse) -> None:
    from voiceloop.io.devices import SpeakerSink

    sink = SpeakerSink(pulse.speaker, sample_rate=24_000)
    await sink.open()
    rec = pulse.recorder()
    try:
        audio = tone(1000, 1.0, 24_000)
        first = None
        for i in range(0, len(audio), 2400):
            asked = time.monotonic()
            played_at = await sink.write(audio[i : i + 2400])
            assert played_at is not None and played_at >= asked
            first = played_at if first is None else first
        await sink.drain()
        assert sink.buffered() == 0
    finally:
        recording = rec.stop()
        await sink.close()
    assert sink.sample_rate == 24_000 and sink.underruns == 0
    voiced = recording[np.abs(recording) > 3000]
    assert len(voiced) > 0.8 * pulse.rate, "less than 0.8 s of the 1 s tone was heard"
    start = int(np.argmax(np.abs(recording) > 3000))
    assert abs(peak_hz(recording[start : start + pulse.rate // 2], pulse.rate) - 1000) < 10


async def test_flush_silences_the_speaker(pulse: Pulse) -> None:
    from voiceloop.io.devices import SpeakerSink

    sink = SpeakerSink(pulse.speaker, sample_rate=24_000)
    await sink.open()
    rec = pulse.recorder()
    try:
        audio = tone(1000, 3.0, 24_000)
        for i in range(0, round(0.8 * 24_000), 960):
            await sink.write(audio[i : i + 960])
        assert sink.buffered() > 0
        flushed_at = time.monotonic()
        dropped = sink.flush()
        assert dropped > 0 and sink.buffered() == 0
        await asyncio.sleep(0.8)
    finally:
        recording = rec.stop()
        await sink.close()
    cut = rec.index_at(flushed_at)
    assert loud(recording[cut - pulse.rate // 4 : cut]), "the tone was playing before the flush"
    after = recording[cut + round(0.3 * pulse.rate) :]
    assert len(after) > pulse.rate // 4 and np.abs(after).max() == 0, "audio kept playing after flush()"
    assert sink.underruns == 0  # a barge-in is not an underrun


async def test_underruns_counted_only_while_a_reply_starves(pulse: Pulse) -> None:
    from voiceloop.io.devices import SpeakerSink

    metrics = Metrics()
    sink = SpeakerSink(pulse.speaker, sample_rate=24_000)
    sink.bind_metrics(metrics)
    await sink.open()
    try:
        await asyncio.sleep(0.3)  # idle silence is not an underrun
        assert sink.underruns == 0
        chunk = tone(1000, 0.1, 24_000)
        await sink.write(chunk)
        await asyncio.sleep(0.4)  # the reply starves: its audio runs out mid-reply
        await sink.write(chunk)
        await asyncio.sleep(0.4)  # and again
        await sink.write(chunk)
        await sink.drain()  # the reply ends: running dry now is fine
        await asyncio.sleep(0.3)
    finally:
        await sink.close()
    assert sink.underruns == 2
    assert sink.underrun_samples > 0.5 * 24_000
    assert metrics.counters["underruns"] == 2
    assert sink.counters()["underruns"] == 2


async def test_write_backpressure_bounds_the_buffer(pulse: Pulse) -> None:
    from voiceloop.io.devices import SpeakerSink

    sink = SpeakerSink(pulse.speaker, sample_rate=24_000, buffer_s=0.2)
    await sink.open()
    try:
        audio = tone(440, 1.5, 24_000)
        most = 0
        started = time.monotonic()
        for i in range(0, len(audio), 1200):
            await sink.write(audio[i : i + 1200])
            most = max(most, sink.buffered())
        waited = time.monotonic() - started
        await sink.drain()
    finally:
        await sink.close()
    assert most <= 0.2 * 24_000 + 1200  # the threshold plus one write
    assert waited > 0.8  # writing 1.5 s of audio had to wait for the device to play most of it


class ReplySource(Stage):
    """Plays one synthesized reply (24 kHz chunks) into the output stage, like the TTS stage does."""

    name = "reply"

    async def produce(self) -> None:
        audio = tone(1000, 0.6, 24_000)
        for i in range(0, len(audio), 2400):
            await self.emit(
                AudioChunk(0, audio[i : i + 2400], 24_000, text="你好", piece_end=i + 2400 >= len(audio))
            )
        await self.emit(ReplyEnd(0, "你好"))
        await self.emit(EndOfStream())


async def test_output_stage_resamples_to_the_speaker_and_stamps_first_played(pulse: Pulse) -> None:
    from voiceloop.io.devices import SpeakerSink

    sink = SpeakerSink(pulse.speaker, sample_rate=48_000)  # not the TTS rate: the output stage resamples
    rec = pulse.recorder()
    try:
        metrics = await Pipeline([ReplySource(), OutputStage(sink)]).run()
    finally:
        recording = rec.stop()
    assert sink.sample_rate == 48_000
    (turn,) = metrics.finished
    assert turn.output_first_sample is not None and turn.first_played is not None
    assert turn.first_played > turn.output_first_sample
    start = int(np.argmax(np.abs(recording) > 3000))
    assert loud(recording[start : start + pulse.rate // 2])
    assert abs(peak_hz(recording[start : start + pulse.rate // 2], pulse.rate) - 1000) < 10


# -- without a server / library, and losing the device ---------------------------------------------


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join([str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=60,
    )


TRY_ALL = """
    import asyncio
    from voiceloop.io.devices import DeviceError, MicSource, SpeakerSink, list_devices, pick_device

    async def main():
        for what, fn in [("list", list_devices), ("pick", lambda: pick_device("vmic", "input"))]:
            try:
                fn()
                print(what, "OK")
            except DeviceError as exc:
                print(what, "DeviceError:", exc)
        for what, opener in [("mic", MicSource().start), ("speaker", SpeakerSink().open)]:
            try:
                await opener()
                print(what, "OK")
            except DeviceError as exc:
                print(what, "DeviceError:", exc)

    asyncio.run(main())
"""


@pytest.mark.skipif(missing() is not None, reason=str(missing()))
def test_no_sound_server_is_a_clear_device_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    result = run_python(
        TRY_ALL,
        {
            "PULSE_SERVER": f"unix:{empty}/native",
            "XDG_RUNTIME_DIR": str(empty),
            "XDG_CONFIG_HOME": str(empty),
        },
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["list", "pick", "mic", "speaker"]
    for line in lines:
        assert "DeviceError: no audio devices found" in line and "PULSE_SERVER" in line
    assert "Traceback" not in result.stderr


def test_missing_portaudio_is_a_clear_device_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    result = run_python(
        "import voiceloop, voiceloop.io  # never needs PortAudio\n" + textwrap.dedent(TRY_ALL),
        {"PYTHONPATH": str(fake)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4
    assert all("DeviceError: the PortAudio library is missing" in line for line in lines)
    assert all("libportaudio2" in line for line in lines)


LOSE_DEVICE = """
    import asyncio
    from helpers.pulse import PulseServer, use_server

    server = PulseServer()
    server.start()
    use_server(server)  # before sounddevice is imported
    import numpy as np
    from helpers.fakes import Collect
    from voiceloop.io.devices import DeviceError, MicSource, SpeakerSink
    from voiceloop.pipeline import Pipeline, StageError

    async def main():
        sink = SpeakerSink("vspeaker")
        await sink.open()
        mic = MicSource("vmic")
        run = asyncio.ensure_future(Pipeline([mic, Collect()]).run())
        await asyncio.sleep(0.5)
        server.kill()
        try:
            await asyncio.wait_for(run, 10)
            print("mic: ended without error")
        except StageError as exc:
            print("mic:", type(exc.error).__name__, exc.error)
        try:
            for _ in range(200):
                await sink.write(np.zeros(2400, np.int16))
            print("speaker: no error")
        except DeviceError as exc:
            print("speaker: DeviceError", exc)
        await sink.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()
"""


@pytest.mark.skipif(missing() is not None, reason=str(missing()))
def test_device_lost_mid_run_ends_the_pipeline_with_a_device_error() -> None:
    result = run_python(LOSE_DEVICE, {})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "mic: DeviceError microphone 'vmic' lost" in out, out + result.stderr[-2000:]
    assert "speaker: DeviceError speaker 'vspeaker' lost" in out, out + result.stderr[-2000:]
    assert "Traceback" not in result.stderr


ALSA_MISS = """
    import ctypes, ctypes.util, logging, sys
    logging.basicConfig(stream=sys.stdout, level=logging.DEBUG, format="%(name)s: %(message)s")
    if sys.argv[1] == "voiceloop":
        from voiceloop.io.devices_list import import_sounddevice
        import_sounddevice()  # PortAudio starts (and probes ALSA) with alsa-lib's errors routed
    alsa = ctypes.CDLL(ctypes.util.find_library("asound") or "libasound.so.2")
    pcm = ctypes.c_void_p()
    print("open:", alsa.snd_pcm_open(ctypes.byref(pcm), b"no_such_pcm", 0, 0))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="alsa-lib is Linux only")
@pytest.mark.parametrize("who", ["voiceloop", "control"])
def test_alsa_lib_errors_go_to_the_debug_log_not_stderr(who: str) -> None:
    """alsa-lib prints a line per PCM it cannot open (PortAudio's startup probe on desktops makes a
    screenful); once voiceloop has imported sounddevice they are debug log records instead."""
    pythonpath = os.pathsep.join([str(ROOT / "tests"), str(ROOT)])
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(ALSA_MISS), who],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "open: -" in result.stdout, result.stdout + result.stderr
    if who == "control":
        assert "ALSA lib" in result.stderr and "Unknown PCM no_such_pcm" in result.stderr
        return
    assert "ALSA lib" not in result.stderr, result.stderr
    assert "voiceloop.alsa: alsa-lib pcm.c" in result.stdout and "Unknown PCM" in result.stdout
