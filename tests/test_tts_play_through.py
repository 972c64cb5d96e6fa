"""Gapless starts: the hold forecast, the gate on a scripted clock, and the engine's smooth mode."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from voiceloop.tts.chattts.engine import ChatTts, ChatTtsOptions
from voiceloop.tts.chattts.gpt import SamplingOptions
from voiceloop.tts.chattts.play_through import SMOOTH_SCHEDULE, PlayThrough, start_hold
from voiceloop.tts.chattts.stream_decode import StreamDecodeOptions, piece_size

RATE, STEP_SAMPLES = 24_000, 512
STEP_AUDIO = STEP_SAMPLES / RATE  # 21.3 ms
OPTIONS = StreamDecodeOptions()  # pieces of 4, 8, 16, 32, 32, ... steps, lookahead 8


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def play(
    cost_s: float,
    steps: int,
    start: str,
    sentences: int = 1,
    options: StreamDecodeOptions = OPTIONS,
    decode_step_s: float = 0.0,
) -> tuple[float, float, int]:
    """A scripted generator (``cost_s`` per GPT step, ``decode_step_s`` per step of each decode
    window, pieces as StreamingDecoder schedules them) through the gate (or none); a player that
    plays whatever it is handed at once. Returns (first audio, total gap seconds, gaps)."""
    context = options.left_context + options.lookahead
    clock = Clock()
    gate = PlayThrough(options, step_audio_s=STEP_AUDIO, sample_rate=RATE, clock=clock)
    playhead, first, gaps, gap_s = None, None, 0, 0.0

    def hand_over(pieces: list[np.ndarray]) -> None:
        nonlocal playhead, first, gaps, gap_s
        for piece in pieces:
            if playhead is None:
                first, playhead = clock.t, clock.t
            elif clock.t > playhead + 1e-9:
                gaps, gap_s = gaps + 1, gap_s + clock.t - playhead
                playhead = clock.t
            playhead += len(piece) / RATE

    for _ in range(sentences):
        clock.t += 0.05  # the prompt's prefill
        index, emitted_to, boundary = 0, 0, piece_size(options, 0)
        for step in range(1, steps + 1):
            clock.t += cost_s
            if step == 1:
                gate.sentence()  # as the engine calls it: once the first step is done
            pieces, decode_s, decoded = [], 0.0, 0
            while step >= boundary + options.lookahead:
                pieces.append(np.zeros((boundary - emitted_to) * STEP_SAMPLES, np.int16))
                decoded += boundary - emitted_to + context
                emitted_to, index = boundary, index + 1
                boundary += piece_size(options, index)
            decode_s = decoded * decode_step_s
            clock.t += decode_s
            hand_over(pieces if start == "fast" else gate.step(pieces, decode_s, decoded))
        tail = [np.zeros((steps - emitted_to) * STEP_SAMPLES, np.int16)]
        hand_over(tail if start == "fast" else gate.flush(tail))
    assert first is not None
    return first, gap_s, gaps


def test_the_forecast_holds_only_as_long_as_the_slowest_upcoming_piece_needs() -> None:
    kwargs = dict(
        steps=12, emitted_to=4, boundaries=[12, 28, 60], lookahead=8, context=24, step_audio_s=STEP_AUDIO
    )
    fast = start_hold(held_s=4 * STEP_AUDIO, step_s=0.005, decode_step_s=0.0, **kwargs)
    assert fast == 0.0  # 4x real time
    # 1.2x real time: piece [28, 60) is ready 56 steps on, after 24 steps of audio ahead of it
    slow = 1 / (1.2 / STEP_AUDIO)
    hold = start_hold(held_s=4 * STEP_AUDIO, step_s=slow, decode_step_s=0.0, **kwargs)
    assert hold == pytest.approx(56 * slow - 28 * STEP_AUDIO)
    # decoding adds its windows: (8 + 24) + (16 + 24) + (32 + 24) steps before that piece is out
    decode = start_hold(held_s=4 * STEP_AUDIO, step_s=slow, decode_step_s=0.001, **kwargs)
    assert decode == pytest.approx(hold + 0.128)


@pytest.mark.parametrize("speed", [1.25, 1.6])
def test_smooth_starts_later_and_never_gaps_where_fast_stutters(speed: float) -> None:
    cost = STEP_AUDIO / speed
    fast_first, fast_gap_s, fast_gaps = play(cost, 240, "fast")
    smooth_first, smooth_gap_s, smooth_gaps = play(cost, 240, "smooth")
    assert fast_gaps >= 2 and fast_gap_s > 0.1  # pieces doubling outrun 1.25-1.6x real time
    assert smooth_gaps == 0 and smooth_gap_s == 0
    # it waits as long as the gaps would have lasted, released at the first step after that
    assert fast_first + fast_gap_s - 1e-9 <= smooth_first <= fast_first + fast_gap_s + cost + 1e-9


@pytest.mark.parametrize("steps", [70, 240])
def test_the_smooth_schedule_plays_through_sooner_than_doubling_pieces(steps: int) -> None:
    """Costs as measured on 2 cores: GPT 15 ms a step, decoding 1.29 ms per window step."""
    doubling, gap_s, gaps = play(0.015, steps, "smooth", decode_step_s=0.00129)
    assert gaps == 0 and gap_s == 0
    _, _, fast_gaps = play(0.015, steps, "fast", options=SMOOTH_SCHEDULE, decode_step_s=0.00129)
    assert fast_gaps > 0  # small pieces are dear to decode: slow growth alone still stutters
    slow_growth, gap_s, gaps = play(0.015, steps, "smooth", options=SMOOTH_SCHEDULE, decode_step_s=0.00129)
    assert gaps == 0 and gap_s == 0
    assert slow_growth < doubling - 0.1
    assert [piece_size(SMOOTH_SCHEDULE, i) for i in range(4)] == [8, 9, 11, 12]
    assert [piece_size(OPTIONS, i) for i in range(5)] == [4, 8, 16, 32, 32]


def test_smooth_hands_over_at_once_when_generation_is_fast_and_across_sentences() -> None:
    cost = STEP_AUDIO / 4
    assert play(cost, 120, "smooth", sentences=3) == play(cost, 120, "fast", sentences=3)
    _, gap_s, gaps = play(STEP_AUDIO / 1.25, 120, "smooth", sentences=3)
    assert gaps == 0 and gap_s == 0  # later sentences start while the earlier ones still play


def test_slower_than_real_time_holds_at_most_max_hold() -> None:
    clock = Clock()
    gate = PlayThrough(OPTIONS, step_audio_s=STEP_AUDIO, sample_rate=RATE, max_hold_s=0.5, clock=clock)
    for step in range(1, 13):
        clock.t += STEP_AUDIO * 2  # half real time
        if step == 1:
            gate.sentence()
        out = gate.step([np.zeros(4 * STEP_SAMPLES, np.int16)] if step == 12 else [])
    assert out == [] and gate.holds == [0.5]


def test_engine_smooth_start_yields_the_same_audio(chattts_root) -> None:
    sampling = SamplingOptions(max_new_tokens=40, min_new_tokens=40)
    fast = ChatTts.from_pretrained(str(chattts_root), ChatTtsOptions(sampling=sampling))
    smooth = ChatTts(
        fast.gpt, fast.vocos, fast.hidden_decoder, None, fast.stats, replace(fast.options, start="smooth")
    )
    try:
        speaker = fast.speaker("seed:3")
        text = "你好。今天天气不错。"
        expected = np.concatenate(list(fast.stream(text, speaker, seed=5)))
        got = list(smooth.stream(text, speaker, seed=5))
        assert all(c.dtype == np.int16 and len(c) for c in got)
        assert np.array_equal(np.concatenate(got), expected)
    finally:
        fast.lane.close()
        smooth.lane.close()
    with pytest.raises(ValueError, match="start"):
        ChatTtsOptions(start="eager")  # type: ignore[arg-type]
