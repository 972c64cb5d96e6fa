"""Voices from a recording (ChatTTS ``spk_smp`` + ``txt_smp``): parity with the reference's codes and
string, the input checks, the voice string and store, and synthesis (stream, batch, sessions) with it.

The prompt-token, generated-code and waveform parity of generation with an audio prompt is in
test_tts_parity.py beside the other golden checks.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from voiceloop.tts.chattts.clone import VoiceCloneError, prepare_audio
from voiceloop.tts.chattts.dvae import CodeDecoder
from voiceloop.tts.chattts.engine import ChatTts, ChatTtsOptions
from voiceloop.tts.chattts.gpt import SamplingOptions
from voiceloop.tts.chattts.speaker import SpeakerError, VoiceStore, decode_prompt_codes, encode_prompt_codes
from voiceloop.tts.chattts.stream_decode import StreamDecodeOptions
from voiceloop.tts.chattts.voice import Voice, parse_voice_json, voice_json

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "chattts-golden"
CLONE = json.loads((GOLDEN_DIR / "golden.json").read_text())["synth_tokenizer"]["voice_clone"]
_spec = importlib.util.spec_from_file_location("voice_clone_golden", GOLDEN_DIR / "voice_clone_golden.py")
GOLDEN_INPUT = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(GOLDEN_INPUT)  # type: ignore[union-attr]

STEPS = 24
SAMPLING = SamplingOptions(max_new_tokens=STEPS, min_new_tokens=STEPS)
RATE = 24_000

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wave() -> np.ndarray:
    return GOLDEN_INPUT.clone_wave()


@pytest.fixture(scope="module")
def engine(chattts_root, tmp_path_factory):
    store = VoiceStore(tmp_path_factory.mktemp("voices"))
    engine = ChatTts.from_pretrained(str(chattts_root), ChatTtsOptions(sampling=SAMPLING))
    engine.voice_store = store
    yield engine
    engine.lane.close()


# -- parity with the reference (golden values) ------------------------------------------------------


def test_the_test_signal_is_bit_identical_to_the_one_the_goldens_were_made_from(wave):
    assert GOLDEN_INPUT.wave_sha256(wave) == CLONE["input"]["sha256_float32_le"]


def test_mel_features_dvae_codes_and_spk_smp_are_identical_to_the_reference(chattts_root, wave):
    dvae = CodeDecoder.from_file(chattts_root / "asset" / "DVAE.safetensors")
    mel = dvae.preprocessor_mel(torch.from_numpy(wave))
    assert list(mel.shape) == CLONE["mel"]["shape"]
    np.testing.assert_allclose(mel[0, :8].numpy(), CLONE["mel"]["first8_of_row0"], atol=2e-6)
    assert float(mel.double().sum()) == pytest.approx(CLONE["mel"]["sum"], abs=2e-2)
    codes = dvae.encode(torch.from_numpy(wave))
    assert codes.tolist() == CLONE["codes"]
    assert encode_prompt_codes(codes) == CLONE["spk_smp"]
    assert decode_prompt_codes(CLONE["spk_smp"]).tolist() == CLONE["codes"]


def test_voice_from_audio_gives_the_reference_spk_smp_for_the_same_recording(engine, wave):
    result = engine.voice_from_audio(wave, RATE, CLONE["txt_smp"])
    assert result.spk_smp == CLONE["spk_smp"]
    assert result.transcript == CLONE["txt_smp"] and result.transcript_source == "given"
    assert result.seconds == pytest.approx(2.5) and result.prompt_steps == len(CLONE["codes"][0])
    assert result.warnings == ()
    # int16 input is the reference web UI's float decoding (÷32768) of the same PCM
    pcm = np.round(wave * 32767).astype(np.int16)
    from_int = engine.voice_from_audio(pcm, RATE, CLONE["txt_smp"])
    from_float = engine.voice_from_audio(pcm.astype(np.float32) / 32768, RATE, CLONE["txt_smp"])
    assert from_int.spk_smp == from_float.spk_smp


def test_practical_prompt_length_follows_the_reference_code_rate():
    """The reference encodes N seconds to N·46.875 steps (+1); 30 s is 1406 of 4096 positions."""
    for seconds, entry in CLONE["prompt_lengths"].items():
        assert entry["steps"] == (int(float(seconds) * RATE) // 256 + 1) // 2


# -- input checks -------------------------------------------------------------------------------------


def test_channels_are_averaged_like_the_reference_web_ui_and_reported(engine, wave):
    mono = engine.voice_from_audio(wave, RATE, "今天你好。")
    stereo = engine.voice_from_audio(np.stack([wave, wave], 1), RATE, "今天你好。")
    planar = engine.voice_from_audio(np.stack([wave, wave], 0), RATE, "今天你好。")
    assert stereo.spk_smp == planar.spk_smp == mono.spk_smp
    assert any("downmixed 2 channels" in w for w in stereo.warnings)


def test_other_rates_are_resampled_with_soxr_and_reported(engine):
    wave48 = GOLDEN_INPUT.clone_wave(rate=48_000)
    result = engine.voice_from_audio(wave48, 48_000, "今天你好。")
    assert "resampled from 48000 Hz to 24000 Hz" in result.warnings
    assert abs(result.prompt_steps - len(CLONE["codes"][0])) <= 1
    low = prepare_audio(GOLDEN_INPUT.clone_wave(rate=8_000), 8_000)
    assert len(low.wave) == 60_000 and any("muffled" in w for w in low.warnings)


@pytest.mark.parametrize(
    ("samples", "rate", "problem", "words"),
    [
        (np.zeros(RATE * 3, np.float32), RATE, "silent", "silent"),
        (np.full(RATE * 3, 1e-4, np.float32), RATE, "silent", "silent"),
        (np.zeros(RATE // 2, np.int16), RATE, "too_short", "0.50 s"),
        (np.zeros(RATE * 31, np.int16), RATE, "too_long", "31.0 s"),
        (np.full(RATE * 2, 1.5, np.float32), RATE, "bad_samples", "[-1, 1]"),
        (np.full(RATE * 2, np.nan, np.float32), RATE, "bad_samples", "NaN"),
        (np.zeros(RATE * 2, np.uint8), RATE, "bad_samples", "uint8"),
        (np.zeros((RATE, 20, 20), np.float32), RATE, "bad_samples", "1-D or 2-D"),
        (np.zeros(RATE * 2, np.float32), 0, "bad_rate", "sample rate"),
        (np.zeros(RATE * 2, np.float32), 44_100.0, "bad_rate", "sample rate"),
    ],
)
def test_unusable_recordings_raise_a_typed_error_naming_the_problem(samples, rate, problem, words):
    with pytest.raises(VoiceCloneError, match=words) as err:
        prepare_audio(samples, rate)
    assert err.value.problem == problem
    assert isinstance(err.value, SpeakerError | ValueError)


def test_a_recording_with_little_sound_is_refused():
    burst = np.zeros(RATE * 4, np.float32)
    burst[RATE : RATE + RATE // 5] = GOLDEN_INPUT.clone_wave(0.2)
    with pytest.raises(VoiceCloneError, match=r"only 0\.\d+ s of the recording holds sound") as err:
        prepare_audio(burst, RATE)
    assert err.value.problem == "silent"


def test_clipping_a_quiet_level_and_long_silences_are_warnings(wave):
    clipped = prepare_audio(np.clip(wave * 8, -1, 1), RATE)
    assert any(w.startswith("clipped:") for w in clipped.warnings)
    quiet = prepare_audio(wave * 0.05, RATE)
    assert any(w.startswith("quiet:") for w in quiet.warnings)
    padded = prepare_audio(np.concatenate([np.zeros(RATE * 2, np.float32), wave]), RATE)
    assert any(w.startswith("starts with 2.0 s of silence") for w in padded.warnings)
    assert prepare_audio(wave, RATE).warnings == ()


def test_the_transcript_comes_from_the_caller_s_asr_when_not_given(engine, wave):
    heard = []

    def transcribe(samples: np.ndarray, rate: int) -> str:
        heard.append((samples.dtype, rate, len(samples)))
        return "今天 你好"

    result = engine.voice_from_audio(np.stack([wave, wave], 1), RATE, transcribe=transcribe)
    assert heard == [(np.float32, RATE, len(wave))]  # mono, 24 kHz, as encoded
    assert result.transcript_source == "asr" and "你好" in result.transcript
    assert parse_voice_json(result.voice).prompt_text == result.transcript
    with pytest.raises(VoiceCloneError, match="no transcript") as err:
        engine.voice_from_audio(wave, RATE)
    assert err.value.problem == "no_transcript"
    with pytest.raises(VoiceCloneError, match="heard no words"):
        engine.voice_from_audio(wave, RATE, transcribe=lambda samples, rate: "  ")


def test_a_transcript_that_cannot_fit_the_audio_is_a_warning(engine, wave):
    long_text = "今天天气不错我们一起去公园散步吧" * 2
    result = engine.voice_from_audio(wave, RATE, long_text)
    assert any("exactly what is said" in w for w in result.warnings)


# -- the voice string, the store, synthesis ---------------------------------------------------------


def test_the_voice_string_carries_codes_and_transcript_and_is_validated(engine, wave):
    result = engine.voice_from_audio(wave, RATE, "今天你好。")
    voice = engine.voice(result.voice)
    assert isinstance(voice, Voice) and voice.speaker is None and voice.prompt_text == "今天你好。"
    assert voice.prompt_codes.tolist() == CLONE["codes"] and voice.prompt_steps == len(CLONE["codes"][0])
    assert json.loads(result.voice)["transcript_from"] == "given"
    spk = engine.random_voice()
    both = engine.voice(voice_json(result.spk_smp, "今天你好。", spk_emb=spk))
    assert torch.equal(both.speaker, engine.speaker(spk))
    for bad, words in [
        ('{"format": "chattts-voice/1", "txt_smp": "x"}', "spk_smp"),
        (voice_json(result.spk_smp, "x").replace('"txt_smp":"x"', '"txt_smp":""'), "txt_smp"),
        ('{"spk_smp": "x", "txt_smp": "y"}', "format"),
        ('{"format": "chattts-voice/1", "spk_smp": "garbled", "txt_smp": "y"}', "spk_smp"),
        ("{not json", "malformed"),
    ]:
        with pytest.raises(SpeakerError, match=words):
            engine.voice(bad)


def test_saved_cloned_voices_load_by_name_and_a_failed_save_leaves_nothing(engine, wave):
    store = engine.voice_store
    result = engine.voice_from_audio(wave, RATE, "今天你好。")
    path = store.save("clone-a", result.voice)
    assert "clone-a" in engine.voice_names() and path.read_text(encoding="utf-8").strip() == result.voice
    assert engine.voice("clone-a").prompt_codes.tolist() == CLONE["codes"]
    assert engine.voice(str(path)).prompt_text == "今天你好。"  # a path to the file works too
    with pytest.raises(SpeakerError):
        store.save("clone-b", result.voice.replace(result.spk_smp, "broken"))
    assert "clone-b" not in store and not list(store.root.glob(".*tmp"))


def test_stream_equals_offline_and_both_start_from_the_audio_prompt(engine, wave):
    voice = engine.voice(engine.voice_from_audio(wave, RATE, "今天你好。").voice)
    exact = StreamDecodeOptions(first_chunk=3, chunk=7, lookahead=52, left_context=52, crossfade=0)
    options = replace(engine.options, stream=exact)
    streamer = ChatTts(engine.gpt, engine.vocos, engine.hidden_decoder, None, engine.stats, options)
    chunks = list(streamer.stream("你好，今天天气不错。", voice, seed=5))
    (offline,) = streamer.synthesize(["你好，今天天气不错。"], voice, seed=5)
    assert np.array_equal(np.concatenate(chunks), offline) and len(offline) == 512 * STEPS - 256
    (plain,) = streamer.synthesize(["你好，今天天气不错。"], None, seed=5)
    assert not np.array_equal(plain, offline)  # the prompt changes what is generated


def test_two_sessions_with_different_cloned_voices_batch_and_sound_as_alone(engine):
    voices = [
        engine.voice(engine.voice_from_audio(GOLDEN_INPUT.clone_wave(s), RATE, "今天你好。").voice)
        for s in (2.0, 3.5)
    ]
    assert voices[0].prompt_steps != voices[1].prompt_steps  # different prefill lengths in one batch
    texts = ["你好，今天天气不错。", "我们明天见。"]

    async def one(text: str, voice: Voice, seed: int) -> np.ndarray:
        gen = functools.partial(engine.stream, seed=seed)
        return np.concatenate([c async for c in engine.lane.stream(gen, text, voice, cooperative=True)])

    jobs = list(enumerate(zip(texts, voices, strict=True)))

    async def together() -> list[np.ndarray]:
        return list(await asyncio.gather(*(one(t, v, i) for i, (t, v) in jobs)))

    expected = [asyncio.run(one(t, v, i)) for i, (t, v) in jobs]
    engine.lane.batch_sizes.clear()
    got = asyncio.run(together())
    assert max(engine.lane.batch_sizes) > 1, engine.lane.batch_sizes
    for want, have in zip(expected, got, strict=True):
        assert len(have) == len(want) == 512 * STEPS - 256
        assert np.abs(have.astype(np.int32) - want.astype(np.int32)).max() <= 2  # batched matmul rounding


def test_a_session_takes_the_voice_string_without_anything_saved(engine, wave):
    result = engine.voice_from_audio(wave, RATE, "今天你好。")
    session = engine.session(result.voice)
    assert session.voice.prompt_steps == result.prompt_steps and session.speaker is None

    async def speak() -> int:
        return sum([len(c) async for c in session.synthesize("你好。")])

    assert asyncio.run(speak()) == 512 * STEPS - 256
    engine.check_voice(result.voice)


# -- the agent's ASR seam and the CLI ----------------------------------------------------------------


def test_the_agent_transcribes_with_its_own_asr_engine_also_from_async_code(engine, wave):
    from helpers.fakes import FakeAsr, FakeTts

    from voiceloop import Agent
    from voiceloop.errors import UserError
    from voiceloop.loop import Engines

    asr = FakeAsr(["今天 你好", "你好"], final_delay=0)
    agent = Agent()
    agent._engines = Engines(asr=asr, tts=engine)  # not closed here: the module's engine lives on
    result = agent.voice_from_audio(np.round(wave * 32767).astype(np.int16), RATE)
    assert result.transcript_source == "asr" and "你好" in result.transcript
    assert agent.voice_from_audio(wave, RATE, "今天你好。").transcript_source == "given"

    async def from_a_running_loop() -> str:
        return agent.voice_from_audio(wave, RATE).transcript_source

    assert asyncio.run(from_a_running_loop()) == "asr" and asr.texts == []
    agent._engines = Engines(asr=asr, tts=FakeTts())
    with pytest.raises(UserError, match="cannot make voices"):
        agent.voice_from_audio(wave, RATE, "x")


def test_cli_saves_a_voice_from_a_wav_and_every_voice_flag_takes_its_name(chattts_root, tmp_path, capsys):
    import soundfile

    from voiceloop.cli import main

    voices = ["--voice-dir", str(tmp_path / "voices")]
    ref = tmp_path / "ref.wav"
    stereo = GOLDEN_INPUT.clone_wave(rate=48_000)
    soundfile.write(ref, np.stack([stereo, stereo], 1), 48_000, subtype="PCM_16")
    save = ["tts", "voice", "save", "anna", "--from-audio", str(ref), "--model", str(chattts_root)]
    assert main([*save, "--transcript", "今天你好。", *voices]) == 0
    out = capsys.readouterr()
    assert "warning: downmixed 2 channels" in out.err and "resampled from 48000 Hz" in out.err
    assert "transcript (given): 今天你好。" in out.err and out.out.strip().endswith("anna.txt")
    assert main(["tts", "voice", "show", "anna", *voices]) == 0
    assert parse_voice_json(capsys.readouterr().out).prompt_text == "今天你好。"
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(RATE * 3, np.int16), RATE)
    bad = ["tts", "voice", "save", "mute", "--from-audio", str(silent), "--model", str(chattts_root)]
    assert main([*bad, "--transcript", "你好", *voices]) == 2
    err = capsys.readouterr().err
    assert "silent" in err and len(err.strip().splitlines()) == 1
    assert main(["tts", "voice", "list", *voices]) == 0 and capsys.readouterr().out.split() == ["anna"]


def test_say_speaks_in_a_saved_cloned_voice(chattts_root, tmp_path, monkeypatch, engine, wave):
    import soundfile

    from voiceloop.cli import main

    monkeypatch.setenv("VOICELOOP_HOME", str(tmp_path / "home"))
    VoiceStore().save("clone", engine.voice_from_audio(wave, RATE, "今天你好。").voice)
    out = tmp_path / "say.wav"
    argv = ["say", "你好", "-o", str(out), "--voice", "clone", "--model", str(chattts_root), "--seed", "3"]
    assert main([*argv, "--threads", "1", "--max-seconds", "0.4", "--backend", "torch"]) == 0
    audio, rate = soundfile.read(out, dtype="int16")
    assert rate == RATE and len(audio) > 0
