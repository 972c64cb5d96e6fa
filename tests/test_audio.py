"""Tests for voiceloop.audio: validation, conversions, streaming resampling and rechunking."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from voiceloop.audio import (
    SUPPORTED_RATES,
    InputAdapter,
    OutputAdapter,
    Rechunker,
    StreamResampler,
    check_pcm,
    check_rate,
    downmix,
    float_to_int16,
    int16_to_float,
)
from voiceloop.frames import FRAME_SAMPLES, INPUT_RATE


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def random_chunks(x: np.ndarray, rng: np.random.Generator, sizes: list[int]) -> list[np.ndarray]:
    """Split ``x`` into chunks whose sizes are drawn from ``sizes`` (order randomised)."""
    out, i = [], 0
    while i < len(x):
        n = int(rng.choice(sizes))
        out.append(x[i : i + n])
        i += n
    return out


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "match"),
    [
        ([0.0, 0.1], "numpy array.*list"),
        ((1, 2), "numpy array.*tuple"),
        (np.zeros(10, np.int32), "dtype int32"),
        (np.zeros(10, np.uint8), "dtype uint8"),
        (np.zeros(10, np.int64), "dtype int64"),
        (np.zeros(10, object), "dtype object"),
        (np.zeros(10, np.complex64), "dtype complex64"),
        (np.zeros(10, bool), "dtype bool"),
        (np.zeros((2, 48000), np.float32), "channel-first.*transpose"),
        (np.zeros((100, 9), np.float32), "9 channels"),
        (np.zeros((10, 2, 2), np.float32), "shape"),
        (np.zeros((), np.float32), "shape"),
        (np.zeros(0, np.int16), "empty"),
        (np.zeros((0, 2), np.float32), "empty"),
        (np.array([0.0, np.nan], np.float32), "NaN"),
        (np.array([0.0, np.inf], np.float64), "inf"),
        (np.array([[0.0, -np.inf]], np.float32), "inf"),
    ],
)
def test_check_pcm_rejects(x: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_pcm(x)


def test_check_pcm_names_what() -> None:
    with pytest.raises(ValueError, match=r"^mic audio"):
        check_pcm(np.zeros(0, np.int16), what="mic audio")


@pytest.mark.parametrize(
    "x",
    [
        np.zeros(10, np.int16),
        np.zeros(10, np.float32),
        np.zeros(10, np.float64),
        np.zeros((10, 1), np.int16),
        np.zeros((48000, 2), np.float32),
        np.zeros((10, 8), np.float32),
        np.zeros((2, 2), np.int16),
    ],
)
def test_check_pcm_accepts(x: np.ndarray) -> None:
    assert check_pcm(x) is x


@pytest.mark.parametrize(
    ("rate", "match"),
    [
        (16000.0, "must be an int"),
        ("16000", "must be an int"),
        (None, "must be an int"),
        (True, "must be an int"),
        (0, "positive"),
        (-16000, "positive"),
        (7999, "out of range"),
        (192001, "out of range"),
    ],
)
def test_check_rate_rejects(rate: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_rate(rate)


def test_check_rate_accepts() -> None:
    for rate in (8000, 16000, 22050, 44100, 48000, 192000, np.int64(24000)):
        assert check_rate(rate) == int(rate)
    assert 8000 in SUPPORTED_RATES and 192000 in SUPPORTED_RATES and 7999 not in SUPPORTED_RATES


# --- conversions ------------------------------------------------------------------------------


def test_int16_float_round_trip_exact() -> None:
    x = np.arange(-32768, 32768, dtype=np.int16)
    f = int16_to_float(x)
    assert f.dtype == np.float32
    assert f.min() == -1.0 and f.max() < 1.0
    np.testing.assert_array_equal(float_to_int16(f), x)


def test_float_to_int16_clips_without_wraparound() -> None:
    y = float_to_int16(np.array([1.0, 1.5, -1.0, -2.0, 0.0, 0.5], np.float32))
    assert y.dtype == np.int16
    assert y.tolist() == [32767, 32767, -32768, -32768, 0, 16384]


def test_downmix_float_keeps_dtype() -> None:
    x = np.array([[1.0, 0.0], [0.5, -0.5], [-1.0, -1.0]], np.float32)
    y = downmix(x)
    assert y.dtype == np.float32 and y.shape == (3,)
    np.testing.assert_allclose(y, [0.5, 0.0, -1.0])
    mono = np.zeros(5, np.float64)
    assert downmix(mono) is mono


def test_downmix_int16_extremes_do_not_overflow() -> None:
    x = np.array([[32767, 32767], [-32768, -32768], [32767, -32768], [100, 201]], np.int16)
    y = downmix(x)
    assert y.dtype == np.int16
    assert y[0] == 32767 and y[1] == -32768
    assert abs(int(y[2])) <= 1 and abs(int(y[3]) - 150) <= 1


# --- streaming resampler ----------------------------------------------------------------------


def test_resampler_chunked_equals_one_shot_float() -> None:
    x = sine(1000, 48000, 0.5)
    ref = soxr.resample(x, 48000, 16000, "HQ")
    rng = np.random.default_rng(1)
    rs = StreamResampler(48000, 16000)
    out = [rs.process(c) for c in random_chunks(x, rng, [1, 2, 7, 480, 333, 1])]
    out.append(rs.flush())
    y = np.concatenate(out)
    assert y.dtype == np.float32 and len(y) == len(ref)
    assert np.abs(y - ref).max() <= 1e-6


def test_resampler_no_discontinuity_at_chunk_boundaries() -> None:
    x = sine(1000, 48000, 0.5)
    rng = np.random.default_rng(2)
    rs = StreamResampler(48000, 16000)
    y = np.concatenate([rs.process(c) for c in random_chunks(x, rng, [1, 480, 17])] + [rs.flush()])
    # Natural max step of a 0.5-amplitude 1 kHz sine sampled at 16 kHz: 0.5 * 2*sin(pi*1000/16000).
    natural = 0.5 * 2 * np.sin(np.pi * 1000 / 16000)
    body = y[100:-100]  # skip the filter's start/end transients
    assert np.abs(np.diff(body)).max() <= natural * 1.02


def test_resampler_int16_chunked_matches_one_shot_within_1_lsb() -> None:
    x = float_to_int16(sine(1000, 48000, 0.5, amp=0.9))
    ref = float_to_int16(soxr.resample(int16_to_float(x), 48000, 24000, "HQ"))
    rng = np.random.default_rng(3)
    rs = StreamResampler(48000, 24000)
    y = np.concatenate([rs.process(c) for c in random_chunks(x, rng, [1, 480, 3])] + [rs.flush()])
    assert y.dtype == np.int16 and len(y) == len(ref)
    assert np.abs(y.astype(np.int32) - ref).max() <= 1


def test_resampler_reusable_after_flush_and_reset() -> None:
    x = sine(440, 44100, 0.2)
    rs = StreamResampler(44100, 16000)
    first = np.concatenate([rs.process(x), rs.flush()])
    second = np.concatenate([rs.process(x), rs.flush()])
    np.testing.assert_array_equal(first, second)
    rs.process(x[:1000])
    rs.reset()
    third = np.concatenate([rs.process(x), rs.flush()])
    np.testing.assert_array_equal(first, third)


def test_resampler_passthrough_when_rates_equal() -> None:
    rs = StreamResampler(16000, 16000)
    assert rs.passthrough and rs.delay == 0.0
    x = np.arange(100, dtype=np.int16)
    y = rs.process(x)
    np.testing.assert_array_equal(y, x)
    assert y is not x and y.dtype == np.int16
    assert rs.process(np.ones(4, np.float64)).dtype == np.float32
    assert len(rs.flush()) == 0


def test_resampler_rejects_bad_input() -> None:
    rs = StreamResampler(48000, 16000)
    assert len(rs.process(np.zeros(0, np.float32))) == 0
    with pytest.raises(ValueError, match="mono"):
        rs.process(np.zeros((10, 2), np.float32))
    with pytest.raises(ValueError, match="dtype int32"):
        rs.process(np.zeros(10, np.int32))
    with pytest.raises(ValueError, match="out of range"):
        StreamResampler(48000, 4000)


# --- rechunker --------------------------------------------------------------------------------


def test_rechunker_many_tiny_pushes() -> None:
    x = np.arange(100_003, dtype=np.int32).astype(np.int16)
    rc = Rechunker(320)
    frames: list[np.ndarray] = []
    for i in range(0, len(x), 3):
        frames += rc.push(x[i : i + 3])
    assert all(f.shape == (320,) and f.dtype == np.int16 for f in frames)
    assert len(frames) == len(x) // 320 and rc.pending == len(x) % 320
    tail = rc.flush()
    assert len(tail) == 1 and tail[0].shape == (320,)
    got = np.concatenate(frames + tail)
    np.testing.assert_array_equal(got[: len(x)], x)
    assert not got[len(x) :].any()
    assert rc.pending == 0 and rc.flush() == []


def test_rechunker_big_push_and_unpadded_flush() -> None:
    rc = Rechunker(4)
    frames = rc.push(np.arange(10, dtype=np.float32))
    assert [f.tolist() for f in frames] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert rc.pending == 2
    assert [f.tolist() for f in rc.flush(pad=False)] == [[8, 9]]
    assert rc.push(np.zeros(0, np.float32)) == []


def test_rechunker_frames_do_not_alias_input() -> None:
    rc = Rechunker(4)
    x = np.arange(4, dtype=np.int16)
    (f,) = rc.push(x)
    x[:] = 0
    assert f.tolist() == [0, 1, 2, 3]


def test_rechunker_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="positive"):
        Rechunker(0)
    rc = Rechunker(4)
    with pytest.raises(ValueError, match="1-D"):
        rc.push(np.zeros((4, 2), np.int16))
    rc.push(np.zeros(1, np.int16))
    with pytest.raises(ValueError, match="dtype changed"):
        rc.push(np.zeros(1, np.float32))


# --- adapters ---------------------------------------------------------------------------------


def run_adapter(adapter: InputAdapter, x: np.ndarray, chunk: int) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    for i in range(0, len(x), chunk):
        frames += adapter.push(x[i : i + chunk])
    return frames + adapter.flush()


def test_input_adapter_48k_stereo_webrtc() -> None:
    seconds = 1.0
    mono = float_to_int16(sine(1000, 48000, seconds))
    stereo = np.stack([mono, mono], axis=1)
    frames = run_adapter(InputAdapter(48000, 2), stereo, 480)  # 10 ms WebRTC packets
    assert all(f.dtype == np.int16 and f.shape == (FRAME_SAMPLES,) for f in frames)
    expected = seconds * INPUT_RATE
    assert abs(len(frames) * FRAME_SAMPLES - expected) < FRAME_SAMPLES


@pytest.mark.parametrize(("rate", "channels", "chunk"), [(44100, 1, 441), (8000, 1, 1), (44100, 2, 1024)])
def test_input_adapter_other_rates(rate: int, channels: int, chunk: int) -> None:
    seconds = 0.5
    x = sine(300, rate, seconds)
    if channels == 2:
        x = np.stack([x, x], axis=1)
    frames = run_adapter(InputAdapter(rate, channels), x, chunk)
    assert all(f.dtype == np.int16 and f.shape == (FRAME_SAMPLES,) for f in frames)
    assert abs(len(frames) * FRAME_SAMPLES - seconds * INPUT_RATE) < FRAME_SAMPLES
    y = np.concatenate(frames)
    ref = float_to_int16(soxr.resample(sine(300, rate, seconds), rate, INPUT_RATE, "HQ"))
    assert np.abs(y[: len(ref)].astype(np.int32) - ref).max() <= 1


def test_input_adapter_passthrough_is_exact() -> None:
    x = (np.arange(1000) * 37 % 65536 - 32768).astype(np.int16)
    frames = run_adapter(InputAdapter(16000, 1), x, 123)
    y = np.concatenate(frames)
    assert len(y) == 4 * FRAME_SAMPLES  # 1000 samples -> 3 full frames + 1 padded
    np.testing.assert_array_equal(y[:1000], x)


def test_input_adapter_checks_channels() -> None:
    a = InputAdapter(48000, 2)
    with pytest.raises(ValueError, match=r"1 channel.*expects 2.*reshape"):
        a.push(np.zeros(960, np.int16))
    with pytest.raises(ValueError, match="channel-first"):
        a.push(np.zeros((2, 960), np.int16))
    with pytest.raises(ValueError, match="channels must be"):
        InputAdapter(48000, 0)
    with pytest.raises(ValueError, match="NaN"):
        InputAdapter(16000, 1).push(np.array([np.nan], np.float32))


def test_output_adapter_resamples_and_resets() -> None:
    x = float_to_int16(sine(500, 24000, 0.3))
    out = OutputAdapter(24000, 48000)
    y = np.concatenate([out.process(c) for c in np.array_split(x, 17)] + [out.flush()])
    ref = float_to_int16(soxr.resample(int16_to_float(x), 24000, 48000, "HQ"))
    assert y.dtype == np.int16 and len(y) == len(ref)
    assert np.abs(y.astype(np.int32) - ref).max() <= 1
    out.process(x[:1000])
    out.reset()  # barge-in: the next reply starts clean
    z = np.concatenate([out.process(x), out.flush()])
    np.testing.assert_array_equal(z, y)
    with pytest.raises(ValueError, match="int16"):
        out.process(np.zeros(10, np.float32))
    assert OutputAdapter(24000, 24000).flush().dtype == np.int16
