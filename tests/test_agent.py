"""The front door: ``voiceloop.Agent`` on a file and on a custom transport, checked by ear (the tiny
ASR, trained on espeak-ng Mandarin, transcribes what the bot said back to the handler's words)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
from helpers.speech import espeak, require_espeak

import voiceloop
from voiceloop.asr.corpus import char_error_rate
from voiceloop.errors import UserError
from voiceloop.io.files import FileSource, WavSink

TINY_ASR = str(Path(__file__).parent / "fixtures" / "tiny-zh-asr")
REPLY = "你好，明天早上下雨，晚上很冷。"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def agent():
    require_espeak()
    heard: list[str] = []

    def reply(text: str) -> str:
        heard.append(text)
        return REPLY

    with voiceloop.Agent(reply, asr=TINY_ASR, tts="espeak") as agent:
        agent.heard = heard  # type: ignore[attr-defined]
        yield agent.load()


def user_wav(path: Path) -> Path:
    silence = np.zeros(8000, np.int16)
    soundfile.write(path, np.concatenate([silence, espeak("你好", voice="cmn-latn-pinyin"), silence]), 16_000)
    return path


def said(path: Path, agent) -> str:
    audio, rate = soundfile.read(path, dtype="float32")
    samples = np.clip(np.round(soxr.resample(audio, rate, 16_000) * 32768), -32768, 32767).astype(np.int16)
    return agent.engines.asr.transcribe(samples).text.replace(" ", "")


def test_run_file_answers_and_the_reply_is_understood(agent, tmp_path):
    summary = agent.run_file(user_wav(tmp_path / "in.wav"), tmp_path / "out.wav", tail_s=5.0)
    assert summary["turns"] == 1 and summary["durations"]["voice_to_voice"]["p50"] > 0
    assert agent.heard[-1] == "你好"
    expected = re.sub(r"[，。]", "", REPLY)
    got = said(tmp_path / "out.wav", agent)
    assert char_error_rate([expected], [got]) <= 0.10, got


def test_a_session_on_your_own_transport(agent, tmp_path):
    """``await agent.session(source, sink)``: any live source Stage and AudioSink, same engines."""

    async def main():
        source = FileSource(user_wav(tmp_path / "in.wav"), pace=True, tail_silence_s=5.0)
        return await agent.session(source, WavSink(tmp_path / "out.wav", agent.engines.tts.sample_rate))

    metrics = asyncio.run(main())
    assert [t.reply for t in metrics.finished] == [REPLY]
    assert said(tmp_path / "out.wav", agent)


def test_bad_arguments_fail_before_any_model_loads(tmp_path):
    with pytest.raises(UserError, match="handler"):
        voiceloop.Agent("no_such_module_here:reply")
    with pytest.raises(UserError, match="unknown TTS engine"):
        voiceloop.Agent(tts="piper:zh")
    with pytest.raises(ValueError, match="echo mode"):
        voiceloop.Agent(echo="loud")
    agent = voiceloop.Agent(asr=TINY_ASR, tts="espeak")
    with pytest.raises(UserError, match="does not exist"):
        agent.run_file(tmp_path / "missing.wav", tmp_path / "out.wav")
    assert agent._engines is None  # nothing was loaded for a call that could not run
