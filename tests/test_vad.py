"""Tests for voiceloop.vad: the WebRTC wrapper, options, the Endpointer state machine (exact, with a
scripted detector) and its accuracy on real speech (espeak-ng scenes in noise)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.speech import espeak, mix_scene

from voiceloop.frames import (
    FRAME_SAMPLES,
    INPUT_RATE,
    AudioFrame,
    Frame,
    SpeechEnded,
    SpeechPaused,
    SpeechStarted,
)
from voiceloop.vad import Endpointer, Segment, VadOptions, WebRtcVad, detect_segments, segments_from_events

T0 = 1000.0  # capture times are offset from stream times so the two cannot be confused
TOL = 0.1


class Script:
    """A detector by script: frame i is voiced iff pattern[i] == "#" (silence after the end)."""

    def __init__(self, pattern: str) -> None:
        self.flags = [c == "#" for c in pattern]
        self.calls = 0

    def is_speech(self, samples: np.ndarray, sample_rate: int = INPUT_RATE) -> bool:
        self.calls += 1
        return self.calls <= len(self.flags) and self.flags[self.calls - 1]


def to_frames(x: np.ndarray, t0: float = T0) -> list[AudioFrame]:
    n = len(x) // FRAME_SAMPLES
    return [
        AudioFrame(x[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES], INPUT_RATE, t0 + i * 0.02, i)
        for i in range(n)
    ]


def steady_frames(n: int) -> list[AudioFrame]:
    """Constant-level audio: no loudness contrast, so the tail trim keeps the detector's end."""
    return to_frames(np.full(n * FRAME_SAMPLES, 1000, np.int16))


def feed(ep: Endpointer, frames: list[AudioFrame]) -> list[Frame]:
    out: list[Frame] = []
    for f in frames:
        out += ep.process(f)
    return out


def events(out: list[Frame]) -> list[Frame]:
    """Start/end decisions (pause hints are checked on their own)."""
    return [f for f in out if not isinstance(f, AudioFrame | SpeechPaused)]


# --- WebRtcVad and options -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "rate"),
    [
        (np.zeros(320, np.float32), 16000),  # dtype
        (np.zeros(321, np.int16), 16000),  # not 10/20/30 ms
        (np.zeros(441, np.int16), 22050),  # unsupported rate
        (np.zeros((320, 1), np.int16), 16000),  # not mono 1-D
        ([0] * 320, 16000),  # not an array
    ],
)
def test_webrtc_vad_rejects_bad_input(samples, rate) -> None:
    with pytest.raises(ValueError):
        WebRtcVad().is_speech(samples, rate)


def test_webrtc_vad_frame_sizes_and_aggressiveness() -> None:
    vad = WebRtcVad(3)
    for rate in (8000, 16000, 32000, 48000):
        for ms in (10, 20, 30):
            assert vad.is_speech(np.zeros(rate * ms // 1000, np.int16), rate) is False
    for bad in (-1, 4, True, 2.0):
        with pytest.raises(ValueError):
            WebRtcVad(bad)  # type: ignore[arg-type]


def test_options_round_up_to_frames_and_reject_nonsense() -> None:
    o = VadOptions(
        end_silence_ms=250, pre_roll_ms=1, start_window_ms=90, start_voiced_ms=41, max_utterance_ms=990
    )
    assert (o.end_silence_ms, o.pre_roll_ms, o.start_window_ms, o.start_voiced_ms) == (260, 20, 100, 60)
    assert o.max_utterance_ms == 1000
    assert VadOptions(max_utterance_ms=None).max_utterance_ms is None
    for bad in (
        {"aggressiveness": 5},
        {"end_silence_ms": -20},
        {"end_silence_ms": 0},
        {"pre_roll_ms": 1.5},
        {"start_window_ms": 100, "start_voiced_ms": 120},
        {"max_utterance_ms": 0},
        {"max_utterance_ms": 200},  # not longer than the start window
    ):
        with pytest.raises(ValueError):
            VadOptions(**bad)


def test_endpointer_rejects_frames_that_are_not_20_ms() -> None:
    ep = Endpointer(detector=Script(""))
    with pytest.raises(ValueError, match="20 ms"):
        ep.process(AudioFrame(np.zeros(160, np.int16), INPUT_RATE, 0.0, 0))


# --- the state machine, exactly (scripted detector) -----------------------------------------


def test_state_machine_timing_pre_roll_and_forwarding_exact() -> None:
    # defaults: trigger 200 of 300 ms (10 of 15 frames), pre-roll 10 frames, hangover 18 frames
    ep = Endpointer(detector=Script("." * 20 + "#" * 15))
    frames = steady_frames(80)
    out = feed(ep, frames[:29])
    assert out == [] and not ep.in_speech
    out = ep.process(frames[29])  # 10th voiced frame: the trigger fires
    started = out[0]
    assert isinstance(started, SpeechStarted) and ep.in_speech
    assert started.turn_id == 1
    assert started.speech_time == pytest.approx(T0 + 20 * 0.02)  # first voiced frame
    assert started.time == pytest.approx(T0 + 30 * 0.02)  # end of the frame that fired
    assert started.stream_start == pytest.approx(0.4)
    assert out[1:] == frames[10:30]  # pre-roll from 200 ms before the first voiced frame, unmodified
    assert all(a is b for a, b in zip(out[1:], frames[10:30], strict=True))
    out = feed(ep, frames[30:52])
    (paused,) = [f for f in out if isinstance(f, SpeechPaused)]  # 100 ms into the silence
    assert out.index(paused) == 10 and out[:10] == frames[30:40]
    assert paused.speech_time == pytest.approx(T0 + 35 * 0.02) and paused.time == pytest.approx(
        T0 + 40 * 0.02
    )
    out.remove(paused)
    assert out == frames[30:52] and ep.in_speech  # hangover audio is forwarded
    out = ep.process(frames[52])  # 18th non-voiced frame after the last voiced one (seq 34)
    assert out[0] is frames[52]
    ended = out[1]
    assert isinstance(ended, SpeechEnded) and not ep.in_speech
    assert (ended.turn_id, ended.reason, ended.discarded) == (1, "silence", False)
    assert ended.speech_time == pytest.approx(T0 + 35 * 0.02)
    assert ended.stream_end == pytest.approx(0.7)
    assert ended.time == pytest.approx(T0 + 53 * 0.02)
    assert feed(ep, frames[53:]) == []  # nothing outside utterances


def test_max_utterance_forces_an_endpoint_then_speech_retriggers() -> None:
    ep = Endpointer(VadOptions(max_utterance_ms=1000), Script("#" * 200))
    frames = steady_frames(200)
    out = feed(ep, frames)
    evs = events(out)
    assert [type(e).__name__ for e in evs[:3]] == ["SpeechStarted", "SpeechEnded", "SpeechStarted"]
    first, forced, second = evs[:3]
    assert isinstance(forced, SpeechEnded) and forced.reason == "max_length" and not forced.discarded
    # warm-up hides seq 0..4, so speech starts at seq 5 and is cut 50 frames (1.0 s) later
    assert first.stream_start == pytest.approx(0.1)
    assert forced.stream_end == pytest.approx(1.1) and forced.time == pytest.approx(T0 + 1.1)
    assert isinstance(second, SpeechStarted) and second.turn_id == 2
    assert second.stream_start == pytest.approx(1.1)  # new utterance, by the normal trigger
    seqs = [f.seq for f in out if isinstance(f, AudioFrame)]
    assert seqs == list(range(len(seqs)))  # pre-roll from seq 0, then contiguous: nothing lost or repeated
    assert all(e.reason == "max_length" for e in evs if isinstance(e, SpeechEnded))


def test_short_voiced_burst_is_discarded_with_a_loose_trigger() -> None:
    options = VadOptions(start_window_ms=40, start_voiced_ms=40, warmup_ms=0)  # min_speech 140 ms
    ep = Endpointer(options, Script("." * 10 + "####" + "." * 30 + "#" * 8))
    evs = events(feed(ep, steady_frames(80)))
    ends = [e for e in evs if isinstance(e, SpeechEnded)]
    assert [e.discarded for e in ends] == [True, False]  # 80 ms voiced < 140 ms; 160 ms kept
    assert [e.turn_id for e in evs] == [1, 1, 2, 2]


def test_finish_closes_an_open_utterance_and_reset_drops_it() -> None:
    ep = Endpointer(detector=Script("." * 10 + "#" * 20))
    feed(ep, steady_frames(30))
    assert ep.in_speech
    (ended,) = ep.finish(now=T0 + 5.0)
    assert isinstance(ended, SpeechEnded)
    assert (ended.reason, ended.time, ended.turn_id) == ("end_of_stream", T0 + 5.0, 1)
    assert ended.speech_time == pytest.approx(T0 + 30 * 0.02) and ended.stream_end == pytest.approx(0.6)
    assert not ep.in_speech and ep.finish(now=T0 + 6.0) == []

    ep = Endpointer(detector=Script("." * 10 + "#" * 20 + "." * 30 + "#" * 20))
    frames = steady_frames(80)
    feed(ep, frames[:30])
    ep.reset()  # silently: no SpeechEnded, the detector restarts (warm-up again)
    assert not ep.in_speech
    evs = events(feed(ep, frames[30:]))
    assert [e.turn_id for e in evs if isinstance(e, SpeechStarted)] == [2]  # ids never repeat


# --- real speech ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, list[tuple[float, float]]]:
    clips = [
        espeak("你好，我想订一张明天去上海的机票。"),
        espeak("Hello, could you check the weather for tomorrow?", voice="en", speed=160, pitch=60),
        espeak("好的，谢谢你。", speed=190, pitch=40),
    ]
    return mix_scene(clips, [1.2, 1.5, 1.3, 1.0], noise="white", snr_db=20, seed=0)


def test_finds_the_utterances_of_a_noisy_scene(scene) -> None:
    signal, truth = scene
    frames = to_frames(signal)
    ep = Endpointer()
    out = feed(ep, frames) + ep.finish(T0 + len(frames) * 0.02)
    starts = [e for e in out if isinstance(e, SpeechStarted)]
    ends = [e for e in out if isinstance(e, SpeechEnded)]
    assert len(starts) == len(ends) == 3
    assert [e.turn_id for e in starts] == [e.turn_id for e in ends] == [1, 2, 3]
    for s, e, (t_start, t_end) in zip(starts, ends, truth, strict=True):
        assert abs(s.stream_start - t_start) <= TOL and abs(s.speech_time - (T0 + t_start)) <= TOL
        assert abs(e.stream_end - t_end) <= TOL and abs(e.speech_time - (T0 + t_end)) <= TOL
        assert s.speech_time < s.time and e.speech_time < e.time
        assert e.time - e.speech_time >= 0.36 - 1e-9  # the hangover
        assert (e.reason, e.discarded) == ("silence", False)
    # pre-roll + contiguous audio from there to SpeechEnded, and nothing outside utterances
    forwarded = 0
    for i, s in enumerate(starts):
        k = out.index(s)
        j = out.index(ends[i])
        audio = [f for f in out[k + 1 : j] if not isinstance(f, SpeechPaused)]
        assert all(isinstance(f, AudioFrame) for f in audio)
        first_voiced = round(s.stream_start / 0.02)
        assert audio[0].seq == first_voiced - 10  # the full 200 ms pre-roll
        assert [f.seq for f in audio] == list(range(audio[0].seq, audio[0].seq + len(audio)))
        assert ends[i].time == pytest.approx(audio[-1].capture_time + 0.02)
        assert all(f is frames[f.seq] for f in audio)
        forwarded += len(audio)
    assert forwarded == sum(isinstance(f, AudioFrame) for f in out)


def test_detect_segments_agrees_with_the_endpointer(scene) -> None:
    signal, _ = scene
    ep = Endpointer()
    out = feed(ep, to_frames(signal, t0=0.0)) + ep.finish(len(signal) / INPUT_RATE)
    expected = segments_from_events(out)
    assert detect_segments(signal) == expected
    assert [s.discarded for s in expected] == [False] * 3
    assert detect_segments(signal[:-7]) == expected  # a partial last frame is zero-padded
    with pytest.raises(ValueError):
        detect_segments(signal.astype(np.float32))


def test_long_speech_is_cut_at_max_utterance(scene) -> None:
    signal, truth = scene
    segments = detect_segments(signal, VadOptions(max_utterance_ms=1500))
    first = [s for s in segments if s.start < truth[0][1]]
    assert len(first) >= 3 and first[0].reason == "max_length"
    assert first[0].end - first[0].start == pytest.approx(1.5)


def test_pure_noise_produces_no_utterance() -> None:
    for kind in ("white", "pink", "brown"):
        noise, _ = mix_scene([], 10.0, noise=kind, snr_db=20, seed=3)
        assert detect_segments(noise) == [], kind


def test_warmup_hides_the_fresh_detectors_start_up_burst() -> None:
    noise, _ = mix_scene([], 3.0, noise="pink", snr_db=20, seed=3)
    loose = {"start_window_ms": 40, "start_voiced_ms": 40}
    assert detect_segments(noise, VadOptions(**loose)) == []
    (burst,) = detect_segments(noise, VadOptions(**loose, warmup_ms=0))
    assert burst.start == 0.0 and burst.discarded


def test_clicks_and_short_bursts_do_not_start_an_utterance() -> None:
    background, _ = mix_scene([], 4.0, noise="white", snr_db=30, seed=5)
    x = background.astype(np.float64)
    rng = np.random.default_rng(5)
    x[16000 : 16000 + 80] += 12000 * np.exp(-np.arange(80) / 15.0) * np.sign(rng.standard_normal(80))
    x[40000 : 40000 + 960] += 3000 * rng.standard_normal(960) * np.hanning(960)  # 60 ms burst
    signal = np.clip(np.round(x), -32768, 32767).astype(np.int16)
    assert detect_segments(signal) == []  # default trigger: 200 ms voiced needed
    loose = detect_segments(signal, VadOptions(start_window_ms=40, start_voiced_ms=40))
    assert loose and all(s.discarded for s in loose)  # below min_speech_ms: reported, discarded
    assert all(isinstance(s, Segment) for s in loose)


@pytest.mark.parametrize("quiet_db", [30, 0])
def test_a_quiet_voiced_tail_does_not_delay_the_pause_hint_but_still_counts_for_the_hangover(
    quiet_db,
) -> None:
    # 20 silent, 30 loud voiced, 5 voiced at -60 dB (WebRTC's own tail), then silence
    level = np.concatenate([np.zeros(20 * FRAME_SAMPLES), np.full(30 * FRAME_SAMPLES, 8000.0)])
    level = np.concatenate([level, np.full(5 * FRAME_SAMPLES, 8.0), np.zeros(45 * FRAME_SAMPLES)])
    noise = np.random.default_rng(0).choice([-1.0, 1.0], level.size)
    frames = to_frames((level * noise).astype(np.int16))
    ep = Endpointer(VadOptions(quiet_tail_db=quiet_db), detector=Script("." * 20 + "#" * 35))
    quiet_seen: list[int] = []
    out: list[Frame] = []
    for f in frames:
        out += ep.process(f)
        quiet_seen.append(ep.quiet_frames)
    (paused,) = [f for f in out if isinstance(f, SpeechPaused)]
    (ended,) = [f for f in out if isinstance(f, SpeechEnded)]
    loud_end = T0 + 50 * 0.02
    if quiet_db:  # quiet from the first tail frame: the hint 100 ms after the loud speech
        assert paused.speech_time == pytest.approx(loud_end) and paused.time == pytest.approx(loud_end + 0.1)
        assert quiet_seen.index(10) == 59  # a 200 ms turn check at frame 59 (ends loud_end + 0.2)
    else:  # the detector's tail first
        assert paused.speech_time == pytest.approx(loud_end + 0.1) and paused.time == pytest.approx(
            loud_end + 0.2
        )
        assert quiet_seen.index(10) == 64
    # the hangover still counts from the detector's last voiced frame; the tail trim finds the real end
    assert ended.time == pytest.approx(loud_end + 0.1 + 0.36)
    assert ended.speech_time == pytest.approx(loud_end)


def test_quiet_tail_db_is_checked() -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="quiet_tail_db"):
            VadOptions(quiet_tail_db=bad)
