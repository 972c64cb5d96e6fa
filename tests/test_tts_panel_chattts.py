"""The panel's settings and recorded voices on the real ChatTTS session, with random tiny weights
(tests/conftest.py ``chattts_root``): each session's knobs reach its own sampler and refinement, the
refined text is reported before the piece's first audio, and a recording becomes one session's voice."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.fakes import FakeAsr
from helpers.speech import espeak, require_espeak
from test_tts_panel import sent, session_on

from voiceloop.loop import Engines
from voiceloop.serve.tts_panel import Recording
from voiceloop.tts.base import SynthesisSettings
from voiceloop.tts.chattts.engine import ChatTts, ChatTtsOptions
from voiceloop.tts.chattts.gpt import SamplingOptions
from voiceloop.tts.chattts.voice import parse_voice_json

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(300)]
STEPS = 6
SAMPLING = SamplingOptions(max_new_tokens=STEPS, min_new_tokens=STEPS)


@pytest.fixture(scope="module")
def engine(chattts_root):
    refine = SamplingOptions(temperature=0.7, repetition_penalty=1.0, max_new_tokens=8)
    engine = ChatTts.from_pretrained(
        str(chattts_root), ChatTtsOptions(sampling=SAMPLING, refine_sampling=refine)
    )
    yield engine
    engine.close()


class Spy:
    """What the GPT was asked for: each generation's sampling, each refinement's control prompt."""

    def __init__(self, engine: ChatTts, monkeypatch) -> None:
        self.sampling: list[SamplingOptions] = []
        self.controls: list[str] = []
        gpt = engine.gpt
        generate, refine = gpt.generate, gpt.refine

        def spy_generate(prompt, sampling, **kwargs):
            if not kwargs.get("text"):
                self.sampling.append(sampling)
            return generate(prompt, sampling, **kwargs)

        def spy_refine(texts, control="", *args, **kwargs):
            self.controls.append(control)
            return refine(texts, control, *args, **kwargs)

        monkeypatch.setattr(gpt, "generate", spy_generate)
        monkeypatch.setattr(gpt, "refine", spy_refine)


async def speak(session, text: str, order: list[str]) -> None:
    async for chunk in session.synthesize(text):
        if len(chunk):
            order.append("audio")


def test_the_engine_lists_its_knobs_and_their_defaults(engine):
    assert engine.capabilities.settings == {"temperature", "top_p", "top_k", "refine", "refine_prompt"}
    assert engine.settings_defaults() == {
        "temperature": 0.3,
        "top_p": 0.7,
        "top_k": 20,
        "refine": False,
        "refine_prompt": "[oral_2][laugh_0][break_6]",
    }


async def test_each_session_samples_with_its_own_settings(engine, monkeypatch):
    spy = Spy(engine, monkeypatch)
    one, two = engine.session("seed:1"), engine.session("seed:2")
    one.configure(SynthesisSettings(temperature=0.9, top_k=3))
    two.configure(SynthesisSettings(top_p=0.5))
    order: list[str] = []
    await speak(one, "你好", order)
    await speak(two, "你好", order)
    await speak(engine.session("seed:3"), "你好", order)  # a session left alone: the engine's options
    first, second, third = spy.sampling
    assert (first.temperature, first.top_p, first.top_k) == (0.9, 0.7, 3)
    assert (second.temperature, second.top_p, second.top_k) == (0.3, 0.5, 20)
    assert (third.temperature, third.top_p, third.top_k) == (0.3, 0.7, 20)
    assert first.max_new_tokens == STEPS and not spy.controls  # refine is off unless asked for
    assert order.count("audio") >= 3


async def test_refine_uses_the_sessions_prompt_and_reports_before_the_audio(engine, monkeypatch):
    spy = Spy(engine, monkeypatch)
    session = engine.session("seed:1")
    session.configure(SynthesisSettings(refine=True, refine_prompt="[oral_1][break_2]"))
    order: list[str] = []
    session.on_rewrite = lambda text: order.append(f"refined:{text}")
    await speak(session, "今天天气很好", order)
    assert spy.controls == ["[oral_1][break_2]"]
    reported = [o for o in order if o.startswith("refined:")]
    assert len(reported) == 1 and order[0] == reported[0]  # before any audio
    session.configure(SynthesisSettings(refine=False))  # off again: no refinement, nothing reported
    order.clear()
    await speak(session, "今天天气很好", order)
    assert spy.controls == ["[oral_1][break_2]"] and all(o == "audio" for o in order)


async def test_a_recording_becomes_one_sessions_voice(engine):
    require_espeak()
    engines = Engines(FakeAsr(["不用"]), engine)
    mine, other = session_on(engines, 1), session_on(engines, 2)
    for session in (mine, other):
        await session.tts.start()
    before = other.tts.session.voice
    speech = espeak("你好，今天天气很好", voice="cmn").astype(np.float32) / 32768
    info = await mine.panel.use_recording(Recording(speech, 16_000, "你好，今天天气很好"), None, False)
    assert info["voice"] == "recording" and info["transcript_from"] == "given" and info["seconds"] > 1
    voice = parse_voice_json(mine.tts.voice)
    assert voice.prompt_steps > 40 and voice.prompt_text  # the recording's codes and words
    assert sent(mine, "voice")[-1]["transcript"] == info["transcript"]
    assert other.tts.session.voice is before and other.tts.voice is None
    order: list[str] = []
    await speak(mine.tts.session, "你好", order)  # it speaks in the recorded voice
    assert "audio" in order
    assert json.loads(mine.tts.voice)["format"] == "chattts-voice/1"
