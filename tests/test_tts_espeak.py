"""The espeak-ng engine: streams espeak-ng's PCM as it comes, kills the process on barge-in, and
what it says in Mandarin the bundled tiny ASR (trained on espeak-ng Mandarin) writes back down."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
from helpers.speech import require_espeak

from voiceloop.asr.corpus import char_error_rate
from voiceloop.errors import UserError
from voiceloop.tts.espeak import (
    DEFAULT_VOICE,
    EspeakError,
    EspeakNotFoundError,
    EspeakOptions,
    EspeakTts,
    TtsCapabilities,
    UnknownVoiceError,
    parse_wav_header,
    prepare_text,
)

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-zh-asr"
#: ~48 s of speech (under max_seconds): far more than the pipe, the stream reader and stdio buffers
#: together (~200 KiB, ~5 s at 22050 Hz), so espeak-ng cannot have finished while a chunk is held.
LONG = "今天天气很好，我们去东门车站买水。" * 10
#: Sentences of characters the tiny model knows (its vocab.json); the commas are not transcribed.
SENTENCES = [
    "今天天气很好",
    "明天早上下雨",
    "请问车站往左走吗",
    "我要去东门车站",
    "谢谢你，明天见",
    "晚上很冷，有大风",
    "我要买三个水",
    "往前走一百米到南门",
]
MAX_CER = 0.10


@pytest.fixture(scope="module")
def engine() -> EspeakTts:
    require_espeak()
    return EspeakTts.from_pretrained(None)


async def collect(session, text: str) -> np.ndarray:
    chunks = [chunk async for chunk in session.synthesize(text)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def espeak_wav(text: str, voice: str = DEFAULT_VOICE) -> tuple[np.ndarray, int]:
    """espeak-ng's own WAV for ``text`` at default settings, read by soundfile."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
    data, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    return data, rate


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie, not reaped) process, from /proc."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_engine_reads_the_rate_from_espeak_and_describes_itself(engine):
    _, rate = espeak_wav("你好")
    assert engine.sample_rate == rate == 22050
    assert engine.voice == DEFAULT_VOICE == "cmn-latn-pinyin"
    assert engine.device == "cpu"
    assert engine.capabilities == TtsCapabilities(streaming=True, voices=True, seed_voices=False)
    assert {"cmn-latn-pinyin", "cmn", "en-us"} <= set(engine.voices())
    assert engine.voice_names() == [] and engine.seed_voices is False
    engine.warm_up()
    assert engine.sample_rate == rate


async def test_chunks_are_int16_mono_pieces_of_exactly_espeaks_audio(engine):
    session = engine.session()
    chunks = [chunk async for chunk in session.synthesize("谢谢你，明天见")]
    step = round(engine.sample_rate * engine.options.chunk_ms / 1000)
    assert len(chunks) > 5
    assert all(c.dtype == np.int16 and c.ndim == 1 for c in chunks)
    assert {len(c) for c in chunks[:-1]} == {step} and 0 < len(chunks[-1]) <= step
    expected, _ = espeak_wav("谢谢你，明天见")
    np.testing.assert_array_equal(np.concatenate(chunks), expected)
    assert session.processes == ()
    await session.aclose()


async def test_first_chunk_arrives_while_espeak_is_still_speaking(engine):
    session = engine.session()
    stream = session.synthesize(LONG)
    first = await anext(stream)
    assert len(first) > 0
    (process,) = session.processes
    assert process.returncode is None and alive(process.pid), "audio before the process finished"
    rest = [chunk async for chunk in stream]
    total = (len(first) + sum(len(c) for c in rest)) / engine.sample_rate
    assert total > 30, "the long text's audio came after the first chunk"
    assert process.returncode == 0 and not alive(process.pid)
    await session.aclose()


async def test_cancel_mid_sentence_kills_espeak_and_ends_the_stream(engine):
    session = engine.session()
    stream = session.synthesize(LONG)
    got = [await anext(stream) for _ in range(3)]
    (process,) = session.processes
    assert alive(process.pid)
    session.cancel()  # barge-in, from the event loop
    with pytest.raises(StopAsyncIteration):  # buffered audio is dropped, not played
        await anext(stream)
    assert process.returncode == -9 and not alive(process.pid), "killed and reaped: no zombie"
    assert session.processes == () and len(got) == 3
    # the session goes on: the next piece is spoken in full
    assert len(await collect(session, "你好")) > 0.2 * engine.sample_rate
    await session.aclose()


async def test_cancel_while_the_process_starts_gives_no_audio(engine):
    session = engine.session()
    stream = session.synthesize(LONG)
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)  # the generator is now starting espeak-ng
    session.cancel()
    with pytest.raises(StopAsyncIteration):
        await pending
    assert session.processes == ()


async def test_closing_the_generator_early_kills_espeak(engine):
    session = engine.session()
    stream = session.synthesize(LONG)
    await anext(stream)
    (process,) = session.processes
    await stream.aclose()
    assert process.returncode == -9 and not alive(process.pid)
    assert session.processes == ()


async def test_aclose_and_engine_close_stop_everything_in_flight():
    require_espeak()
    engine = EspeakTts.from_pretrained("en-us")
    session = engine.session()
    stream = session.synthesize("This is a long sentence that goes on and on. " * 30)
    await anext(stream)
    (process,) = session.processes
    engine.close()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert process.returncode == -9 and not alive(process.pid)
    with pytest.raises(RuntimeError, match="closed"):
        engine.session()
    await session.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await anext(session.synthesize("hello"))


async def test_max_seconds_cuts_a_runaway_piece():
    require_espeak()
    engine = EspeakTts.from_pretrained(None, EspeakOptions(max_seconds=1.5))
    session = engine.session()
    stream = session.synthesize(LONG)
    audio = [chunk async for chunk in stream]
    assert sum(len(c) for c in audio) == round(1.5 * engine.sample_rate)
    assert session.processes == ()


def test_tags_are_stripped_and_breaks_become_pauses():
    assert prepare_text("[uv_break]你好[laugh]，明天见[lbreak]") == "你好，明天见"
    assert prepare_text("你好[laugh]") == "你好"
    assert prepare_text("你好[uv_break]明天[break_4]见[oral_2][speed_5]") == "你好, 明天, 见"
    for empty in ("", "   \n", "[lbreak]", "[laugh][uv_break]", "，。！？", "\x00\x07"):
        assert prepare_text(empty) == ""
    with pytest.raises(TypeError):
        prepare_text(None)  # type: ignore[arg-type]


async def test_tags_are_not_spoken_and_empty_text_starts_nothing(engine):
    session = engine.session()
    plain = await collect(session, "你好")
    np.testing.assert_array_equal(await collect(session, "你好[laugh]"), plain)
    np.testing.assert_array_equal(await collect(session, "[oral_2][speed_5]你好"), plain)
    for empty in ("", "   ", "[uv_break][laugh]", "。"):
        assert len(await collect(session, empty)) == 0
    await session.aclose()


async def test_text_that_looks_like_options_is_spoken():
    require_espeak()
    engine = EspeakTts.from_pretrained("en-us")
    session = engine.session()
    for text in ("--help", "-v xx -w /tmp/x.wav hello", "--stdout; rm -rf /"):
        audio = await collect(session, text)
        assert len(audio) > 0.3 * engine.sample_rate and np.abs(audio).max() > 1000, text
    await session.aclose()


def test_an_unknown_voice_is_a_clear_error(engine):
    with pytest.raises(UnknownVoiceError, match=r"no voice 'klingon'.*cmn-latn-pinyin.*espeak-ng --voices"):
        EspeakTts.from_pretrained("klingon")
    with pytest.raises(UserError, match="no voice"):
        engine.session("zz-nothing")
    with pytest.raises(UnknownVoiceError, match="variant 'nosuch'"):
        engine.session("en+nosuch")
    with pytest.raises(UnknownVoiceError):
        engine.session("")
    for name in ("cmn", "CMN", "cmn-Latn-pinyin", "zh", "en-us+Alex", "gmw/en-US"):
        assert engine.session(name).voice == name


@pytest.mark.parametrize("where", ["option", "path"])
def test_missing_espeak_names_the_package(where, tmp_path, monkeypatch):
    if where == "option":
        options = EspeakOptions(executable=str(tmp_path / "espeak-ng"))
    else:
        monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory
        options = EspeakOptions()
    with pytest.raises(EspeakNotFoundError, match=r"needs espeak-ng: apt-get install espeak-ng") as caught:
        EspeakTts.from_pretrained(None, options)
    assert isinstance(caught.value, UserError)


FAKE_ESPEAK = """#!{python}
import shutil, subprocess, sys
real = shutil.which("espeak-ng")
if "--stdin" not in sys.argv:
    sys.exit(subprocess.call([real, *sys.argv[1:]]))
text = sys.stdin.buffer.read()
if b"boom" in text:
    sys.stderr.write("Error: boom\\n")
    sys.exit(3)
wav = subprocess.run([real, *sys.argv[1:]], input=text, capture_output=True).stdout
if b"half" in text:
    sys.stdout.buffer.write(wav[:20000])
    sys.exit(1)
sys.stdout.buffer.write(wav)
"""


async def test_espeak_failing_is_an_error_not_a_hang(tmp_path):
    require_espeak()
    fake = tmp_path / "espeak-ng"
    fake.write_text(FAKE_ESPEAK.format(python=sys.executable))
    fake.chmod(0o755)
    engine = EspeakTts.from_pretrained("en-us", EspeakOptions(executable=str(fake)))
    session = engine.session()
    assert len(await collect(session, "fine")) > 0
    with pytest.raises(EspeakError, match="boom"):
        await collect(session, "boom")
    got = []
    with pytest.raises(EspeakError, match="exit status 1"):
        async for chunk in session.synthesize("half of a long sentence that goes on and on"):
            got.append(chunk)
    assert got, "the audio before the failure was passed on"
    assert session.processes == ()
    await session.aclose()


def test_options_are_checked():
    for bad in ({"speed": 10}, {"pitch": 100}, {"amplitude": -1}, {"gap": 1.5}, {"max_seconds": 0}):
        with pytest.raises(ValueError):
            EspeakOptions(**bad)


def test_wav_header_parsing():
    wav = io.BytesIO()
    soundfile.write(wav, np.zeros(10, np.int16), 16000, format="WAV", subtype="PCM_16")
    data = wav.getvalue()
    assert parse_wav_header(data) == (16000, len(data) - 20)
    assert parse_wav_header(data[:20]) is None  # incomplete: wait for more
    with pytest.raises(EspeakError, match="not write a WAV"):
        parse_wav_header(b"Usage: espeak-ng [options]")
    stereo = io.BytesIO()
    soundfile.write(stereo, np.zeros((10, 2), np.int16), 16000, format="WAV", subtype="PCM_16")
    with pytest.raises(EspeakError, match="2 channel"):
        parse_wav_header(stereo.getvalue())


async def test_concurrent_sessions_are_independent(engine):
    zh, en = engine.session(), engine.session("en-us")
    solo_zh = await collect(zh, "我要去东门车站")
    solo_en = await collect(en, "good morning")
    both = await asyncio.gather(collect(zh, "我要去东门车站"), collect(en, "good morning"))
    np.testing.assert_array_equal(both[0], solo_zh)
    np.testing.assert_array_equal(both[1], solo_en)

    long_stream = zh.synthesize(LONG)
    await anext(long_stream)
    zh.cancel()  # barge-in on one session leaves the other alone
    assert len(await collect(en, "good morning")) == len(solo_en)
    with pytest.raises(StopAsyncIteration):
        await anext(long_stream)
    await zh.aclose()
    await en.aclose()


@pytest.mark.usefixtures("one_thread")
async def test_the_tiny_asr_understands_the_engine(engine):
    """The end-to-end oracle: the engine's Mandarin, resampled to 16 kHz, transcribed back."""
    from voiceloop.asr.streaming import Wav2Vec2Engine

    asr = Wav2Vec2Engine.from_pretrained(str(FIXTURE))
    session = engine.session()
    hyps = []
    try:
        for text in SENTENCES:
            audio = (await collect(session, text)).astype(np.float32) / 32768.0
            at_16k = soxr.resample(audio, engine.sample_rate, 16_000)
            samples = np.clip(np.round(at_16k * 32768.0), -32768, 32767).astype(np.int16)
            hyps.append(asr.transcribe(samples).text.replace(" ", ""))
    finally:
        asr.lane.close()
        await session.aclose()
    refs = [re.sub(r"[，。]", "", text) for text in SENTENCES]
    cer = char_error_rate(refs, hyps)
    assert cer <= MAX_CER, f"CER {cer:.1%}: {[(r, h) for r, h in zip(refs, hyps, strict=True) if r != h]}"


def test_no_espeak_processes_are_left_behind():
    """Every test above reaped what it started (the module runs in this process)."""
    children = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(os.getpid())], capture_output=True)
    assert b"espeak" not in children.stdout, children.stdout.decode()
