"""Finding the echo (GCC-PHAT delay tracking) and feeding the canceller only written reference.

Same synthetic rooms as ``test_echo.py``: the bot is espeak English at 24 kHz pushed to an
``EchoReference`` with (possibly misreported) play times; the mic hears it through ``EchoPath``.
"""

# ruff: noqa: F401, F811  (test_echo fixtures, imported by name and requested as arguments)
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from test_echo import (
    BOT_RATE,
    RATE,
    T0,
    Mic,
    Speaking,
    bot16,
    bot24,
    needs_aec,
    place,
    power,
    reference_for,
    run_at_t0,
    run_pipeline,
    seg,
    speech_span,
    user16,
    vad_starts,
)

from voiceloop.aec import AecOptions, EchoGate, EchoProcessor, EchoReference, EchoStage
from voiceloop.aec import stage as stage_module
from voiceloop.aec.delay import DelayOptions, EchoDelayEstimator
from voiceloop.aec.gate import EchoPowerModel
from voiceloop.aec.room import EchoPath, run_frames, scale_to_dbfs
from voiceloop.frames import AudioFrame, EndOfStream
from voiceloop.pipeline import Pipeline


def erle_db(mic: np.ndarray, out: np.ndarray, a: float, b: float) -> float:
    return 10 * np.log10(power(seg(mic, a, b)) / power(seg(out, a, b)))


def track(reference: EchoReference, mic: np.ndarray, options: DelayOptions | None = None):
    estimator = EchoDelayEstimator(reference, options)
    found_at: list[float] = []

    def observe(frame):
        estimator.observe(frame.samples, frame.capture_time)
        if estimator.delay_s is not None and not found_at:
            found_at.append(frame.capture_time - T0)
        return frame

    run_frames(observe, mic, start_time=T0)
    return estimator, found_at


@pytest.mark.parametrize(("path_ms", "error_s"), [(40, 0.0), (90, -0.3), (30, 0.3), (120, 0.45)])
def test_the_echo_is_found_where_it_really_is(bot16, bot24, path_ms, error_s):
    """Play times reported 300 ms early to 450 ms late: the measured delay is the true offset."""
    mic = EchoPath(delay_ms=path_ms, gain_db=-6).mic(bot24, BOT_RATE)
    estimator, found_at = track(reference_for(bot24, error_s), mic)
    assert estimator.delay_s == pytest.approx(path_ms / 1000 - error_s, abs=0.002)
    assert estimator.moves == 1  # found once, never wandering
    start, _ = speech_span(bot16)
    assert found_at[0] - start < 0.8  # within the first syllables of the reply


def test_no_echo_no_estimate(bot24, user16):
    """A mic that hears only the user (headphones), or nothing, never yields a delay."""
    near = np.zeros(len(bot24) * 2 // 3, np.int16)
    for at in range(0, len(near) - len(user16), len(user16) + 8000):
        near[at : at + len(user16)] = user16
    for mic in (near, np.zeros_like(near)):
        estimator, _ = track(reference_for(bot24), mic)
        assert estimator.delay_s is None and estimator.moves == 0


def test_a_known_delay_moves_only_on_lasting_evidence(bot24):
    """A short stretch at another lag (a reply repeating an earlier one correlates with its own past)
    leaves the delay alone; an echo that stays at the new lag moves it."""
    near = EchoPath(delay_ms=60, gain_db=-6).mic(bot24, BOT_RATE)
    far = EchoPath(delay_ms=260, gain_db=-6).mic(bot24, BOT_RATE)
    for switch_s, moved in ((0.4, False), (2.0, True)):
        a = round((0.5 + 1.2) * 16_000)  # 1.2 s into the speech: the delay is known by then
        b = a + round(switch_s * 16_000)
        mic = (
            np.concatenate([near[:a], far[a:b], near[b:]])
            if not moved
            else np.concatenate([near[:a], far[a:]])
        )
        estimator, _ = track(reference_for(bot24), mic)
        assert estimator.delay_s == pytest.approx(0.26 if moved else 0.06, abs=0.002)
        assert estimator.moves == (2 if moved else 1)


def test_delay_options_are_checked():
    with pytest.raises(ValueError, match="min_lag_ms"):
        DelayOptions(min_lag_ms=100, max_lag_ms=50)
    with pytest.raises(ValueError, match="finite"):
        DelayOptions(window_ms=float("nan"))
    with pytest.raises(ValueError, match="settle"):
        DelayOptions(settle=0)


@needs_aec
@pytest.mark.parametrize(("path_ms", "error_s"), [(40, 0.3), (50, -0.5)])
def test_tracking_cancels_echo_outside_aec3s_window(bot16, bot24, path_ms, error_s):
    """Play times reported 300 ms late put the echo *ahead* of its far end, reported 500 ms early
    590 ms behind it: AEC3 removes nothing (or loses it after a second). With tracking the lead
    moves onto the measured echo, once, and the echo is gone."""
    mic = EchoPath(delay_ms=path_ms, gain_db=-6).mic(bot24, BOT_RATE)
    a, b = speech_span(bot16)
    results = {}
    for tracking in (False, True):
        processor = EchoProcessor(reference_for(bot24, error_s), "aec", track_delay=tracking)
        out = run_frames(processor.process, mic, start_time=T0)
        results[tracking] = (erle_db(mic, out, a, a + 1.5), erle_db(mic, out, a + 1.5, b))
        if tracking:
            assert processor.canceller.lead_moves == 1
            lead = AecOptions().tracked_lead_ms / 1000 - (path_ms / 1000 - error_s)
            assert processor.canceller.lead_s == pytest.approx(lead, abs=0.003)
    assert results[True][1] >= 30 and results[False][1] < 10, results


@needs_aec
def test_a_workable_alignment_is_kept(bot16, bot24):
    """An echo AEC3 can cancel where the reported play times put it stays there: moving the far end
    while AEC3 works cost more than it gained (measured: ERLE 50 -> 10 dB for seconds)."""
    mic = EchoPath(delay_ms=120, gain_db=0).mic(bot24, BOT_RATE)
    processor = EchoProcessor(reference_for(bot24), "aec")
    out = run_frames(processor.process, mic, start_time=T0)
    assert processor.delay.delay_s == pytest.approx(0.12, abs=0.002)
    assert processor.canceller.lead_moves == 0
    assert processor.canceller.lead_s == pytest.approx(AecOptions().lead_ms / 1000)
    a, b = speech_span(bot16)
    assert erle_db(mic, out, a + 1.0, b) >= 30


def test_gate_taps_move_with_the_measured_delay():
    model = EchoPowerModel(taps=8, history=100, prior_db=0.0)
    model.taps = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.0, 0.0])
    model.shift(3)  # rows now start 3 blocks later: the peak moves 3 taps toward the newest
    assert model.taps.tolist() == [0.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
    model.shift(-2)
    assert model.taps.tolist() == [0.0, 0.0, 0.0, 1.0, 0.5, 0.0, 0.0, 0.0]
    model.shift(20)  # off the end: back to the prior
    assert model.taps is None


@pytest.mark.parametrize("gain_db", [0, 3])
def test_gate_reads_the_reference_where_the_echo_is(bot24, gain_db):
    """With the echo 400 ms late (beyond the gate's 280 ms of taps) the gate still refuses the
    echo's barge-ins (its power model is forgiving), but told the measured delay it also mutes the
    echo, so fewer utterances open on the bot's voice at all."""
    mic = EchoPath(delay_ms=400, gain_db=gain_db).mic(bot24, BOT_RATE)
    opened = {}
    for tracking in (False, True):
        processor = EchoProcessor(reference_for(bot24), "gate", track_delay=tracking)
        starts = vad_starts(processor, mic)
        assert not any(ok for _, ok in starts)
        opened[tracking] = len(starts)
        assert isinstance(processor.gate, EchoGate)
    assert opened[True] < opened[False], opened


# -- the canceller reads only reference that has been written -------------------------------------
def test_final_until_tracks_what_is_written(bot24):
    reference = EchoReference()
    assert reference.final_until == -np.inf
    step = BOT_RATE // 50
    for i in range(0, 10 * step, step):
        reference.push(bot24[i : i + step], BOT_RATE, T0 + i / BOT_RATE)
    # the resampler holds a few ms back until more comes; everything before that is final
    assert T0 + 0.18 <= reference.final_until <= T0 + 0.2


class LateSpeaker(Mic):
    """The mic plus a speaker that writes each reference block only ``late_s`` after the mic frame
    that needs it has been captured (a device whose output latency is shorter than the lead)."""

    def __init__(self, samples, bot24, reference, late_s):
        super().__init__(samples)
        self.bot24, self.reference, self.late_s = bot24, reference, late_s

    async def produce(self) -> None:
        loop = asyncio.get_running_loop()
        step, pushed = BOT_RATE // 50, 0

        def push_until(t: float) -> None:
            nonlocal pushed
            while T0 + pushed / BOT_RATE < t:  # after the reply: zero-fill, as a device does
                block = self.bot24[pushed : pushed + step]
                block = np.concatenate([block, np.zeros(step - len(block), np.int16)])
                self.reference.push(block, BOT_RATE, T0 + pushed / BOT_RATE)
                pushed += step

        for seq in range(len(self.samples) // 320):
            t = T0 + seq * 0.02
            push_until(t + 0.04)  # written 40 ms ahead of play: the canceller wants 80 + 20 ms
            loop.call_later(self.late_s, push_until, t + 0.2)
            await self.emit(AudioFrame(self.samples[seq * 320 : (seq + 1) * 320], 16_000, t, seq))
            await asyncio.sleep(0.0005)
            while self.outbox is not None and len(self.outbox):  # a live mic: never ahead of the stage
                await asyncio.sleep(0.0005)
        await self.emit(EndOfStream())


@needs_aec
def test_mic_frames_wait_for_their_reference(bot16, bot24, monkeypatch):
    """A far end with holes (reference not written yet when the mic frame is processed) cost AEC3
    the echo path on PulseAudio; the stage now holds each frame until its reference is final."""
    mic = EchoPath(delay_ms=30, gain_db=0).mic(bot24, BOT_RATE)
    a, b = speech_span(bot16)
    results = {}
    for wait in (0.0, stage_module.REFERENCE_WAIT_S):
        monkeypatch.setattr(stage_module, "REFERENCE_WAIT_S", wait)
        reference = EchoReference()
        echo = EchoStage(reference, "aec", aec=AecOptions(), track_delay=False)
        out = Speaking()
        metrics = run_at_t0(Pipeline([LateSpeaker(mic, bot24, reference, 0.01), echo, out]))
        cleaned = np.concatenate([f.samples for f in out.frames if hasattr(f, "samples")])
        results[wait] = (erle_db(mic, cleaned, a + 1.0, b), metrics.counters.get("echo.reference_late", 0))
    no_wait, waited = results[0.0], results[stage_module.REFERENCE_WAIT_S]
    assert waited[1] == 0 and waited[0] >= 30, results
    assert no_wait[1] > 0 and no_wait[0] < waited[0] - 10, results


def test_a_writer_that_stops_is_not_waited_for(bot24):
    """An output stage writes a reply's reference ahead and then nothing: the mic frames after the
    reply must not each wait out the timeout (at most the one that finds the writer gone waits)."""
    reference = reference_for(bot24[: BOT_RATE // 2])  # 0.5 s written at once, then no more
    mic = np.zeros(2 * 16_000, np.int16)
    echo = EchoStage(reference, "gate", track_delay=False)
    metrics = run_at_t0(Pipeline([Mic(mic), echo, Speaking()]))
    assert metrics.counters.get("echo.reference_waits", 0) <= 1
    assert metrics.counters.get("echo.reference_late", 0) == 0


class BurstyMic(Mic):
    """Frames that piled up while the loop was busy (all queued at once), and a speaker that
    writes the far end in real time from T0: every frame's far end is live but not yet written."""

    def __init__(self, samples, reference):
        super().__init__(samples, paced=False)
        self.reference = reference

    async def produce(self) -> None:
        block = np.zeros(BOT_RATE // 50, np.int16)
        for written in range(5):  # 100 ms written before the first frame
            self.reference.push(block, BOT_RATE, T0 + written * 0.02)

        async def speaker() -> None:
            for written in range(5, 100):
                await asyncio.sleep(0.02)
                self.reference.push(block, BOT_RATE, T0 + written * 0.02)

        writer = asyncio.create_task(speaker())
        try:
            await super().produce()
            await asyncio.sleep(0.3)  # the writer keeps going while the stage drains the queue
        finally:
            writer.cancel()


def test_no_frame_is_held_while_mic_frames_queue_behind_it():
    """Holding a frame for its far end is only worth it while the mic path keeps up: with frames
    queued behind, the stage passes them on at once (under load, holds backed the mic up into
    dropped frames)."""
    reference = EchoReference()
    mic = np.zeros(16_000, np.int16)  # 50 frames, all emitted without pause
    echo = EchoStage(reference, "gate", track_delay=False)
    out = Speaking()
    metrics = run_at_t0(Pipeline([BurstyMic(mic, reference), echo, out]))
    got = [f for f in out.frames if isinstance(f, AudioFrame)]
    assert len(got) == 50
    assert metrics.counters.get("echo.reference_behind", 0) >= 1
    # only the last frames (nothing queued behind them) may wait: not one wait per frame
    assert metrics.counters.get("echo.reference_waits", 0) <= stage_module.REFERENCE_BACKLOG_FRAMES


# -- an echo path that moves mid-reply ---------------------------------------------------------


def jumped(bot24: np.ndarray, before_ms: float, after_ms: float, at_s: float, near=None) -> np.ndarray:
    """The mic when the echo delay jumps from ``before_ms`` to ``after_ms`` at ``at_s`` (a sound
    server rebuffering after an underrun, a device switch)."""
    before = EchoPath(delay_ms=before_ms, gain_db=-6).mic(bot24, BOT_RATE, near)
    after = EchoPath(delay_ms=after_ms, gain_db=-6).mic(bot24, BOT_RATE, near)
    k = round(at_s * RATE)
    return np.concatenate([before[:k], after[k:]])


def test_echo_share_finds_the_echo_and_how_much_of_the_mic_it_is(bot16, bot24, user16):
    a, b = speech_span(bot16)
    onset = a + 1.0
    near = place(scale_to_dbfs(user16, -14), onset, len(bot16))
    upto = round((onset + 0.5) * RATE)  # the history is the last 3 s: ask while the window is in it
    for user, share in ((None, (0.6, 1.0)), (near, (0.0, 0.3))):
        mic = EchoPath(delay_ms=80, gain_db=-6).mic(bot24, BOT_RATE, user)
        estimator, _ = track(reference_for(bot24), mic[:upto])
        found = estimator.echo_share(T0 + onset, T0 + onset + 0.24)
        assert found is not None and share[0] <= found[1] <= share[1], found
        if user is None:  # the echo alone: the copy lies where the echo is
            assert found[0] == pytest.approx(0.08, abs=0.002)
    estimator, _ = track(reference_for(bot24), mic)
    assert estimator.echo_share(T0 + b + 0.65, T0 + b + 0.85) is None  # no playback within the lags
    assert estimator.echo_share(T0 + onset, T0 + onset + 0.24) is None  # older than the history


@needs_aec
@pytest.mark.parametrize(("after_ms", "at_s"), [(130, 1.5), (330, 2.5)])
def test_an_echo_path_that_jumps_mid_reply_does_not_cut_the_bot_off(bot24, monkeypatch, after_ms, at_s):
    """After a jump AEC3 re-converges for seconds and the gate's fit is at the old lag: both take
    the bot's voice for the user. The raw mic then is mostly one delayed copy of the reference
    away from the tracked delay, and that barge-in is refused; without the check (the control)
    the bot cuts itself off."""
    mic = jumped(bot24, 30, after_ms, at_s)
    out, metrics = run_pipeline(mic, reference_for(bot24), "aec+gate")
    assert not out.interruptions and metrics.counters["echo.moved_refusals"] >= 1
    monkeypatch.setattr(stage_module, "ECHO_SHARE", 2.0)  # a share never reached: no check
    out, _ = run_pipeline(mic, reference_for(bot24), "aec+gate")
    assert out.interruptions, "the control: the moved echo passes canceller and gate"


@needs_aec
def test_a_user_over_the_bot_still_cuts_it_off_behind_the_canceller(bot16, bot24, user16):
    """The moved-echo check must not refuse real barge-ins: a user over a steady echo path."""
    onset = speech_span(bot16)[0] + 1.5
    near = place(scale_to_dbfs(user16, -14), onset, len(bot16))
    out, metrics = run_pipeline(jumped(bot24, 30, 30, 0.0, near), reference_for(bot24), "aec+gate")
    assert len(out.interruptions) == 1 and "echo.refused_barge_ins" not in metrics.counters
