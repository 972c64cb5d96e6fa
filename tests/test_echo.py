"""Echo handling on synthetic rooms (no devices): reference alignment, AEC3, the energy gate and
the stage in a pipeline. Bot = espeak English at 24 kHz, user = espeak Mandarin; the mic hears
the bot through ``EchoPath`` (delay, decaying impulse response, gain, noise)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import soxr
from helpers.fakes import Collect
from helpers.speech import RATE, espeak, trim_bounds

from voiceloop.aec import (
    AecOptions,
    EchoCanceller,
    EchoGate,
    EchoModeError,
    EchoProcessor,
    EchoReference,
    EchoStage,
    EchoUnavailable,
    GateOptions,
    aec_available,
    level_db,
    resolve_mode,
)
from voiceloop.aec import canceller as canceller_module
from voiceloop.aec.room import EchoPath, run_frames, scale_to_dbfs
from voiceloop.clock import now, run
from voiceloop.errors import UserError
from voiceloop.frames import AudioFrame, EndOfStream, Interruption, SpeechEnded, SpeechStarted
from voiceloop.pipeline import BargeInOptions, Pipeline, Stage
from voiceloop.vad import Endpointer, VadStage, detect_segments

BOT_RATE = 24_000
T0 = 500.0  # pipeline clock when the session starts: any clock value must work
LEAD_S, TAIL_S = 0.5, 1.0  # silence around the bot's speech

needs_aec = pytest.mark.skipif(not aec_available(), reason="livekit (WebRTC APM) is not installed")


def _trimmed(text: str, voice: str, dbfs: float, speed: int = 165, pitch: int = 50) -> np.ndarray:
    x = espeak(text, voice, speed, pitch)
    a, b = trim_bounds(x)
    return scale_to_dbfs(x[round(a * RATE) : round(b * RATE)], dbfs)


@pytest.fixture(scope="module")
def bot16() -> np.ndarray:
    """The bot's reply at 16 kHz with silence around it."""
    speech = _trimmed("The weather today is sunny with a light breeze, and tomorrow it will rain.", "en", -20)
    return np.concatenate(
        [np.zeros(round(LEAD_S * RATE), np.int16), speech, np.zeros(round(TAIL_S * RATE), np.int16)]
    )


@pytest.fixture(scope="module")
def bot24(bot16: np.ndarray) -> np.ndarray:
    """What the speaker plays: the reply at the TTS rate."""
    return np.round(soxr.resample(bot16.astype(np.float32), RATE, BOT_RATE)).astype(np.int16)


@pytest.fixture(scope="module")
def user16() -> np.ndarray:
    return _trimmed("等一下，我想改成明天下午。", "cmn", -22, speed=150, pitch=70)


def speech_span(bot16: np.ndarray) -> tuple[float, float]:
    """Seconds (from T0) where the bot speaks."""
    return LEAD_S, len(bot16) / RATE - TAIL_S


def reference_for(bot24: np.ndarray, error_s: float = 0.0) -> EchoReference:
    """Pushed as the output stage does: 20 ms writes with their play times."""
    ref = EchoReference()
    step = BOT_RATE // 50
    for i in range(0, len(bot24), step):
        ref.push(bot24[i : i + step], BOT_RATE, T0 + i / BOT_RATE + error_s)
    return ref


def place(user: np.ndarray, at_s: float, n: int) -> np.ndarray:
    out = np.zeros(n, np.int16)
    a = round(at_s * RATE)
    out[a : a + len(user)] = user[: max(0, n - a)]
    return out


def power(x: np.ndarray) -> float:
    v = x.astype(np.float64)
    return float(np.dot(v, v)) + 1.0


def seg(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return x[round(a * RATE) : round(b * RATE)]


# -- reference -------------------------------------------------------------------------------------
def test_reference_places_audio_at_its_play_time():
    ref = EchoReference()
    click = np.zeros(BOT_RATE // 10, np.int16)
    click[BOT_RATE // 20 :] = 10_000  # a step 50 ms into the chunk
    ref.push(click, BOT_RATE, T0 + 1.0)
    out = ref.read(T0 + 0.9, RATE // 4).astype(np.int32)
    onset = np.flatnonzero(np.abs(out) > 5000)[0] / RATE
    assert onset == pytest.approx(0.15, abs=0.002)  # 0.1 s before the chunk + 50 ms into it
    assert not ref.read(T0, 1600).any() and not ref.read(T0 + 5, 1600).any()  # nothing played there


def test_reference_chunking_is_seamless_and_gaps_are_silence(bot24):
    whole, chunked = EchoReference(), reference_for(bot24)
    whole.push(bot24, BOT_RATE, T0)
    a = whole.read(T0 + 0.5, RATE * 2).astype(np.float64)
    b = chunked.read(T0 + 0.5, RATE * 2).astype(np.float64)
    assert np.max(np.abs(a - b)) <= 2  # same signal, up to int16 rounding
    gap = EchoReference()
    tone = (np.sin(np.arange(BOT_RATE // 5) * 0.3) * 8000).astype(np.int16)
    gap.push(tone, BOT_RATE, T0)
    gap.push(tone, BOT_RATE, T0 + 0.5)  # an underrun: 0.3 s of silence played in between
    assert not gap.read(T0 + 0.25, RATE // 5).any()
    assert gap.read(T0 + 0.5, RATE // 10).any() and gap.end_time == pytest.approx(T0 + 0.7, abs=0.002)


def test_reference_flush_capacity_and_formats():
    ref = EchoReference(capacity_s=2.0)
    tone = (np.sin(np.arange(48_000 * 3) * 0.1) * 0.3).astype(np.float32)  # float, 48 kHz, 3 s
    ref.push(np.stack([tone, tone], axis=1), 48_000, T0)  # stereo: downmixed
    assert not ref.read(T0, RATE // 2).any()  # older than the 2 s kept
    assert level_db(ref.read(T0 + 2.0, RATE // 2)) == pytest.approx(-13.5, abs=1.0)  # 0.3 sine
    ref.flush(T0 + 2.2)  # barge-in: nothing after this plays
    assert ref.read(T0 + 2.0, RATE // 10).any() and not ref.read(T0 + 2.2, RATE // 2).any()
    with pytest.raises(ValueError, match="rate"):
        ref.push(tone, 1_000, T0)
    with pytest.raises(ValueError, match="NaN"):
        ref.push(np.array([np.nan, 0.0], np.float32), 16_000, T0)
    with pytest.raises(ValueError, match="play_time"):
        ref.push(tone, 48_000, float("nan"))
    with pytest.raises(ValueError, match="channel-first"):
        ref.push(np.zeros((2, 4800), np.int16), 48_000, T0)


def test_reference_push_from_another_thread_while_reading(bot24):
    ref = EchoReference()
    step = BOT_RATE // 50

    def writer() -> None:
        for i in range(0, len(bot24), step):
            ref.push(bot24[i : i + step], BOT_RATE, T0 + i / BOT_RATE)

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive():  # the capture side reads what is playing now, behind the writer
        ref.read(max(T0, (ref.end_time or T0) - 0.2), 320)
    thread.join()
    expected = reference_for(bot24).read(T0, RATE * 3)
    assert np.array_equal(ref.read(T0, RATE * 3), expected)


# -- the room ------------------------------------------------------------------------------------
def test_echo_path_delays_and_scales(bot24, bot16):
    path = EchoPath(delay_ms=90, gain_db=-10, noise_dbfs=-90, length_ms=0.05)  # the direct path only
    mic = path.mic(bot24, BOT_RATE).astype(np.float64)
    ref = bot16[: len(mic)].astype(np.float64)
    lags = range(0, 2400, 16)
    best = max(lags, key=lambda lag: float(np.dot(mic[lag:], ref[: len(ref) - lag])))
    assert best / RATE == pytest.approx(0.09, abs=0.001)
    assert level_db(mic.astype(np.int16)) - level_db(bot16) == pytest.approx(-10, abs=0.2)
    reverberant = EchoPath(delay_ms=90, decay_ms=20).impulse_response()
    assert np.sum(reverberant**2) == pytest.approx(1.0) and np.argmax(np.abs(reverberant)) == 0


# -- AEC3 ----------------------------------------------------------------------------------------
@needs_aec
@pytest.mark.parametrize(("delay_ms", "gain_db"), [(40, -6), (80, 0), (120, -12)])
def test_aec_removes_echo(bot16, bot24, delay_ms, gain_db):
    mic = EchoPath(delay_ms=delay_ms, gain_db=gain_db, drive=1.5, seed=delay_ms).mic(bot24, BOT_RATE)
    canceller = EchoCanceller(reference_for(bot24))
    out = run_frames(canceller.process, mic, start_time=T0)
    a, b = speech_span(bot16)
    erle = 10 * np.log10(power(seg(mic, a + 0.5, b)) / power(seg(out, a + 0.5, b)))
    assert erle >= 20, f"ERLE {erle:.1f} dB"  # measured 29-53 dB
    assert detect_segments(mic) and not detect_segments(out)  # the VAD heard the bot; now it hears nothing


@needs_aec
def test_aec_keeps_near_end_speech(bot16, bot24, user16):
    n = len(bot16) + 3 * RATE  # the user talks over the bot, then again alone
    bot_padded = np.concatenate([bot24, np.zeros(3 * BOT_RATE, np.int16)])
    over, after = LEAD_S + 1.2, len(bot16) / RATE
    near = place(user16, over, n) + place(user16, after, n)
    path = EchoPath(delay_ms=70, gain_db=-6)
    mic = path.mic(bot_padded, BOT_RATE, near)
    out = run_frames(EchoCanceller(reference_for(bot_padded)).process, mic, start_time=T0)
    dur = len(user16) / RATE
    alone = 10 * np.log10(power(seg(out, after, after + dur)) / power(seg(near, after, after + dur)))
    assert abs(alone) <= 3, f"near-end alone changed by {alone:.1f} dB"
    segments = detect_segments(out)
    for start in (over, after):  # the VAD finds both utterances, double talk included
        assert any(s.start <= start + 0.3 and s.end >= start + 0.5 for s in segments), (start, segments)
    assert not any(s.end < over for s in segments)  # and nothing of the bot before the user spoke


@needs_aec
def test_aec_does_not_modify_the_input_and_rejects_bad_frames(bot24):
    canceller = EchoCanceller(reference_for(bot24))
    samples = (np.random.default_rng(0).standard_normal(320) * 1000).astype(np.int16)
    frame = AudioFrame(samples.copy(), 16_000, T0 + 1.0, 50)
    out = canceller.process(frame)
    assert np.array_equal(frame.samples, samples) and out.samples is not frame.samples
    assert (out.capture_time, out.seq, out.sample_rate) == (frame.capture_time, 50, 16_000)
    bad = [
        (AudioFrame(np.zeros((320, 2), np.int16), 16_000), "mono"),
        (AudioFrame(np.zeros(160, np.int16), 8_000), "16000 Hz"),
        (AudioFrame(np.zeros(400, np.int16), 16_000), "10 ms"),  # 25 ms: would abort inside livekit
        (AudioFrame(np.zeros(320, np.float32), 16_000), "int16"),
    ]
    for frame, message in bad:
        with pytest.raises(ValueError, match=message):
            canceller.process(frame)
    with pytest.raises(ValueError, match="lead_ms"):
        AecOptions(lead_ms=15)


@needs_aec
def test_apm_binding_facts():
    """What the canceller relies on in livekit's APM binding (see canceller.py)."""
    from livekit import rtc

    apm = rtc.AudioProcessingModule(echo_cancellation=True)
    for rate in (16_000, 24_000, 48_000):
        for ms in (10, 20):  # whole 10 ms blocks, split by the binding
            n = rate * ms // 1000
            apm.process_reverse_stream(rtc.AudioFrame(bytearray(2 * n), rate, 1, n))
            apm.process_stream(rtc.AudioFrame(bytearray(2 * n), rate, 1, n))
    apm.set_stream_delay_ms(0)
    apm.set_stream_delay_ms(500)
    with pytest.raises(RuntimeError):
        apm.set_stream_delay_ms(501)


@needs_aec
def test_aec_tolerates_play_time_errors_within_the_lead(bot16, bot24):
    mic = EchoPath(delay_ms=40, gain_db=-6).mic(bot24, BOT_RATE)
    a, b = speech_span(bot16)
    for error_s in (-0.1, 0.05):  # sink reports 100 ms early / 50 ms late (> the 40 ms lead - 40 ms path)
        out = run_frames(EchoCanceller(reference_for(bot24, error_s)).process, mic, start_time=T0)
        assert 10 * np.log10(power(seg(mic, a + 0.5, b)) / power(seg(out, a + 0.5, b))) >= 20


# -- the gate ------------------------------------------------------------------------------------
def vad_starts(gate_or_proc, mic: np.ndarray, process=None) -> list[tuple[SpeechStarted, bool]]:
    """Run mic frames through ``process`` and the real Endpointer; each SpeechStarted with the
    barge-in predicate's verdict."""
    endpointer = Endpointer()
    starts = []

    def on_frame(_: AudioFrame, out: AudioFrame) -> None:
        for ev in endpointer.process(out):
            if isinstance(ev, SpeechStarted):
                starts.append((ev, gate_or_proc.allow(ev)))

    run_frames(process or gate_or_proc.process, mic, start_time=T0, on_frame=on_frame)
    return starts


@pytest.mark.parametrize("gain_db", [-10, 0])
def test_gate_refuses_echo_only_barge_ins(bot24, gain_db):
    mic = EchoPath(delay_ms=100, gain_db=gain_db, seed=3).mic(bot24, BOT_RATE)
    gate = EchoGate(reference_for(bot24), GateOptions(suppress="off"))
    starts = vad_starts(gate, mic)
    assert starts and not any(ok for _, ok in starts)  # the VAD heard the bot; every start refused
    assert list(gate.refused) == [ev.turn_id for ev, _ in starts]
    muting = EchoGate(reference_for(bot24))  # default: echo-only frames are muted before the VAD
    assert not any(ok for _, ok in vad_starts(muting, mic)) and muting.suppressed > 50
    assert muting.coupling_db == pytest.approx(gain_db, abs=4)  # it measured the room


def test_gate_lets_a_louder_user_through(bot16, bot24, user16):
    a, _ = speech_span(bot16)
    onset = a + 1.5
    near = place(scale_to_dbfs(user16, -16), onset, len(bot16))
    mic = EchoPath(delay_ms=60, gain_db=-8, seed=5).mic(bot24, BOT_RATE, near)
    starts = vad_starts(EchoGate(reference_for(bot24)), mic)
    allowed = [ev for ev, ok in starts if ok]
    assert allowed and all(ev.speech_time >= T0 + onset - 0.1 for ev in allowed)  # only the user
    assert allowed[0].time - (T0 + onset) < 0.8


def test_gate_without_playback_passes_everything(user16):
    gate = EchoGate(EchoReference())
    mic = place(user16, 0.5, len(user16) + RATE)
    out = run_frames(gate.process, mic, start_time=T0)
    assert np.array_equal(out, mic[: len(out)]) and gate.suppressed == 0
    starts = vad_starts(EchoGate(EchoReference()), mic)
    assert starts and all(ok for _, ok in starts)


def test_half_duplex_mutes_only_while_the_bot_plays(bot16, bot24, user16):
    n = len(bot16) + 2 * RATE
    after = len(bot16) / RATE + 0.2
    near = place(scale_to_dbfs(user16, -10), LEAD_S + 1.0, n) + place(user16, after, n)  # loud, then after
    padded = np.concatenate([bot24, np.zeros(2 * BOT_RATE, np.int16)])
    mic = EchoPath(delay_ms=80, gain_db=-6).mic(padded, BOT_RATE, near)
    gate = EchoGate(reference_for(padded), GateOptions(suppress="all"))
    out = run_frames(gate.process, mic, start_time=T0)
    a, b = speech_span(bot16)
    assert not seg(out, a + 0.05, b).any()  # even the loud user is muted while the bot speaks
    end = len(out) / RATE
    assert np.array_equal(seg(out, after, end), seg(mic, after, end))  # after it, nothing is muted


def test_gate_options_are_checked():
    for bad in (dict(suppress="some"), dict(margin_db=float("nan")), dict(taps_ms=15), dict(percentile=20)):
        with pytest.raises(ValueError):
            GateOptions(**bad)
    with pytest.raises(ValueError, match="16000 Hz"):
        EchoGate(EchoReference()).observe(AudioFrame(np.zeros(480, np.int16), 24_000))


# -- modes and the stage -------------------------------------------------------------------------
def test_modes_and_fallback(monkeypatch, bot24):
    assert resolve_mode("off") == "off" and resolve_mode(None) == resolve_mode("auto")
    assert resolve_mode("auto") == ("aec+gate" if aec_available() else "gate")  # one "auto", CLI and library
    with pytest.raises(EchoModeError, match="echo mode") as info:
        resolve_mode("loud")
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)

    def missing():
        raise EchoUnavailable("echo cancellation needs ... pip install 'voiceloop[echo]'")

    monkeypatch.setattr(canceller_module, "_load_rtc", missing)
    assert EchoProcessor(EchoReference(), None).mode == "gate"  # default: falls back, logged
    with pytest.raises(EchoUnavailable, match="voiceloop\\[echo\\]"):
        EchoProcessor(EchoReference(), "aec+gate")
    off = EchoProcessor(reference_for(bot24), "off")
    frame = AudioFrame(np.ones(320, np.int16), 16_000, T0 + 1.0)
    assert off.process(frame) is frame and off.allow(SpeechStarted(1, T0, T0 + 0.3))


def test_the_default_handler_is_not_shadowed():
    import voiceloop
    import voiceloop.aec

    assert voiceloop.echo("hi") == "hi"


class Mic(Stage):
    """A live mic on the pipeline clock: 20 ms frames captured from T0, each emitted once it has
    been captured (``paced=False``: all at once, as frames that piled up while the loop was busy).
    Run it with :func:`run_at_t0`, so the clock the pipeline reads and the frames' times agree."""

    name = "mic"

    def __init__(self, samples: np.ndarray, *, paced: bool = True) -> None:
        super().__init__()
        self.samples = samples
        self.paced = paced

    async def produce(self) -> None:
        for seq in range(len(self.samples) // 320):
            captured = T0 + seq * 0.02
            if self.paced:
                await asyncio.sleep(captured + 0.02 - now())
            await self.emit(AudioFrame(self.samples[seq * 320 : (seq + 1) * 320], 16_000, captured, seq))
        await self.emit(EndOfStream())


def run_at_t0(pipeline: Pipeline):
    """Run ``pipeline`` on a virtual clock that reads T0 at the start. On the real clock (seconds
    since boot) a machine up for less than T0 saw speech stamped in its future, and barge-ins
    were put off past the end of the test (CI on fresh VMs)."""
    return run(pipeline.run(), clock="virtual", start=T0)


class Speaking(Collect):
    """Stands for the output side: the bot counts as speaking the whole time."""

    interruptible = True

    def __init__(self) -> None:
        super().__init__()
        self.interruptions: list[Interruption] = []

    def bot_active(self) -> bool:
        return True

    def on_interrupt(self, interruption: Interruption) -> None:
        self.interruptions.append(interruption)


def run_pipeline(mic: np.ndarray, reference: EchoReference, mode: str, gate: GateOptions | None = None):
    echo = EchoStage(reference, mode, gate=gate)
    out = Speaking()
    stages = [Mic(mic), echo, VadStage(), echo.turn_filter(), out]
    pipeline = Pipeline(stages, barge_in=BargeInOptions(allow=echo.allow_barge_in))
    return out, run_at_t0(pipeline)


def test_stage_drops_refused_echo_turns(bot24):
    mic = EchoPath(delay_ms=80, gain_db=-3).mic(bot24, BOT_RATE)
    out, metrics = run_pipeline(mic, reference_for(bot24), "gate", GateOptions(suppress="off"))
    assert not out.interruptions and "interruptions" not in metrics.counters
    assert metrics.counters["echo.refused_barge_ins"] >= 1
    assert metrics.counters["echo.discarded_turns"] == metrics.counters["echo.refused_barge_ins"]
    ended = [f for f in out.frames if isinstance(f, SpeechEnded)]
    assert ended and all(f.discarded for f in ended)  # the ASR will forget them: no self-answer
    assert not any(isinstance(f, AudioFrame) for f in out.frames)  # no echo audio reached the ASR


def test_stage_counts_muted_frames_and_passes_a_real_barge_in(bot16, bot24, user16):
    onset = LEAD_S + 1.5
    near = place(scale_to_dbfs(user16, -14), onset, len(bot16))
    mic = EchoPath(delay_ms=80, gain_db=-8).mic(bot24, BOT_RATE, near)
    out, metrics = run_pipeline(mic, reference_for(bot24), "gate")
    assert metrics.counters["echo.suppressed_frames"] > 50
    assert len(out.interruptions) == 1  # the user, once
    started = [f for f in out.frames if isinstance(f, SpeechStarted)]
    assert started and started[0].speech_time >= T0 + onset - 0.1


@needs_aec
def test_stage_with_aec_never_hears_the_bot(bot24):
    mic = EchoPath(delay_ms=120, gain_db=0, drive=3.0).mic(bot24, BOT_RATE)
    for mode in ("aec", "aec+gate"):
        out, metrics = run_pipeline(mic, reference_for(bot24), mode)
        assert not any(isinstance(f, SpeechStarted) for f in out.frames), mode
        assert not out.interruptions and "echo.refused_barge_ins" not in metrics.counters
