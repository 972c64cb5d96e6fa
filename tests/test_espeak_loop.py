"""The whole loop on a file with the espeak engine, checked by ear: the tiny ASR (trained on espeak-ng
Mandarin) transcribes the bot's recorded reply back to the sentence the handler gave.

file → VAD → tiny ASR → handler (a fixed sentence) → espeak-ng TTS → time-aligned WAV, built the way
``voiceloop run`` builds it (``build_pipeline`` on the fast clock), then the WAV → tiny ASR → CER.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
from helpers.speech import espeak, require_espeak

from voiceloop.asr.corpus import char_error_rate
from voiceloop.clock import run
from voiceloop.io.files import FileSource, WavSink
from voiceloop.loop import Engines, LoopOptions, build_pipeline
from voiceloop.timeline import Metrics

TINY_ASR = Path(__file__).parent / "fixtures" / "tiny-zh-asr"
REPLY = "你好，明天早上下雨，晚上很冷。"
MAX_CER = 0.10
pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_loop_speaks_a_reply_the_tiny_asr_understands(tmp_path):
    require_espeak()
    from voiceloop.asr.streaming import Wav2Vec2Engine
    from voiceloop.tts.espeak import EspeakTts

    # The user: two utterances the tiny model knows, far enough apart that each reply plays in full.
    silence = np.zeros(16_000, np.int16)
    user = [silence[:8000], espeak("你好", voice="cmn-latn-pinyin"), *[silence] * 6]
    user += [espeak("明天下雨", voice="cmn-latn-pinyin"), silence]
    user_wav = tmp_path / "user.wav"
    soundfile.write(user_wav, np.concatenate(user), 16_000)

    asr = Wav2Vec2Engine.from_pretrained(str(TINY_ASR))
    tts = EspeakTts.from_pretrained("cmn-latn-pinyin")
    engines = Engines(asr, tts)
    assert engines.on_cpu
    engines.warm_up()
    heard: list[str] = []

    def handler(text: str) -> str:
        heard.append(text)
        return REPLY

    bot_wav, metrics_file = tmp_path / "bot.wav", tmp_path / "m.jsonl"
    metrics = Metrics.to_file(metrics_file)
    pipeline = build_pipeline(
        FileSource(user_wav, pace=True, tail_silence_s=6.0),
        WavSink(bot_wav, tts.sample_rate),
        engines,
        handler,
        LoopOptions(asr=str(TINY_ASR), tts="espeak"),
        metrics=metrics,
    )
    try:
        run(pipeline.run(), clock="fast")
    finally:
        metrics.close()
        engines.close()

    assert heard == ["你好", "明天下雨"]
    turns = [t for t in map(json.loads, metrics_file.read_text().splitlines()) if t["type"] == "turn"]
    assert [t["reply"] for t in turns] == [REPLY, REPLY]
    assert all(not t.get("interrupted") for t in turns), "each reply played to its end"

    audio, rate = soundfile.read(bot_wav, dtype="float32")
    assert rate == tts.sample_rate == 22050
    at_16k = soxr.resample(audio, rate, 16_000)
    samples = np.clip(np.round(at_16k * 32768.0), -32768, 32767).astype(np.int16)
    asr = Wav2Vec2Engine.from_pretrained(str(TINY_ASR))
    try:
        said = asr.transcribe(samples).text.replace(" ", "")
    finally:
        asr.lane.close()
    expected = re.sub(r"[，。]", "", REPLY) * 2
    cer = char_error_rate([expected], [said])
    assert cer <= MAX_CER, f"CER {cer:.1%}: {expected} -> {said}"
