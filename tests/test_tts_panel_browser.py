"""The text-to-speech panel in headless Chromium (issue 22 part 2): two pages at once, each with its own
settings and voice, the refined text, the per-turn download, a voice from an uploaded WAV and one
recorded from the microphone.

Same setup as tests/test_webrtc_browser.py (loopback only, a fake microphone playing an espeak-ng WAV).
The engines are fakes (``PanelTts`` from tests/test_tts_panel.py: settings kept per engine session, a
refinement that appends ``[uv_break]``, a voice per recording): the random tiny ChatTTS runs each GPT
step in tens of milliseconds on a loaded 2-core machine, too slow for two live pages; its own side of the
panel (settings reaching the sampler, the refined text before the audio, a voice from a recording) is
tests/test_tts_panel_chattts.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import soundfile
from helpers.fakes import FakeAsr
from helpers.speech import espeak, require_espeak
from test_tts_panel import PanelTts
from test_webrtc import loopback_only, until  # noqa: F401 (fixture)
from test_webrtc_browser import CHROMIUM, FLAGS, require_browser, wait_js

from voiceloop.dialogue import echo
from voiceloop.loop import Engines, LoopOptions
from voiceloop.serve.server import ServerOptions, VoiceServer
from voiceloop.tts.base import SynthesisSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def mic_wav(tmp_path) -> Path:
    """What the fake microphone plays: 1 s silence, one sentence (one turn per page), 120 s silence."""
    require_espeak()
    rate = 16_000
    pcm = np.concatenate(
        [np.zeros(rate, np.int16), espeak("hello there", voice="en"), np.zeros(120 * rate, np.int16)]
    )
    path = tmp_path / "mic.wav"
    soundfile.write(str(path), pcm, rate, subtype="PCM_16")
    return path


@pytest.fixture
def reference_wav(tmp_path) -> Path:
    """A voice to upload: about three seconds of espeak-ng Mandarin at 16 kHz (the server resamples it)."""
    path = tmp_path / "reference.wav"
    pcm = espeak("你好，今天天气很好，我们出去走走吧", voice="cmn")
    soundfile.write(str(path), pcm, 16_000, subtype="PCM_16")
    return path


async def test_two_pages_each_with_its_own_panel(mic_wav, reference_wav, tmp_path):
    async_playwright = require_browser()
    tts = PanelTts()
    engines = Engines(FakeAsr(["hello"] * 20, final_delay=0.05), tts)
    options = ServerOptions(port=0, token="s3cret", loopback_candidates_only=True)
    server = VoiceServer(engines, echo, LoopOptions(), options)
    await server.start()
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=[*FLAGS, f"--use-file-for-fake-audio-capture={mic_wav}"],
            )
            try:
                await drive(browser, server, tts, reference_wav, tmp_path)
            finally:
                await browser.close()
    finally:
        await server.stop()


async def open_page(browser, server: VoiceServer, errors: list[str]):
    page = await browser.new_page(accept_downloads=True)  # its own context: its own tab storage
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{server.url}#token=s3cret")
    await page.wait_for_selector("body[data-ready='1']")
    await page.click("#connect")
    await page.wait_for_selector("#status.connected", timeout=20_000)
    return page, server.session(await page.evaluate("window.voiceloop.state.session"))


async def set_knob(page, knob: str, value) -> None:
    """Move a control as a user does (its change event sends the setting)."""
    await page.evaluate(
        """([knob, value]) => {
            const input = document.getElementById(`tts-${knob}`);
            if (input.type === "checkbox") input.checked = value; else input.value = String(value);
            input.dispatchEvent(new Event("change"));
        }""",
        [knob, value],
    )


async def drive(browser, server: VoiceServer, tts: PanelTts, reference: Path, tmp_path: Path) -> None:
    errors: list[str] = []
    one, mine = await open_page(browser, server, errors)
    two, theirs = await open_page(browser, server, errors)
    assert mine is not None and theirs is not None and mine is not theirs
    for page in (one, two):  # the engine acts on every knob: every control is shown, and the note
        for knob in ("temperature", "top_p", "top_k", "refine", "refine_prompt"):
            assert await page.locator(f"[data-knob='{knob}']").is_visible()
        assert "CC BY-NC" in await page.locator("#voice-clone .licence").text_content()

    # different settings on each page; each server-side session holds its own page's, and only those
    await set_knob(one, "temperature", 0.8)
    await set_knob(one, "refine", True)
    await set_knob(two, "top_k", 5)
    await set_knob(two, "refine_prompt", "[laugh_2][break_4]")
    await until(lambda: mine.tts.settings == SynthesisSettings(temperature=0.8, refine=True))
    await until(lambda: theirs.tts.settings == SynthesisSettings(top_k=5, refine_prompt="[laugh_2][break_4]"))
    assert mine.tts.session.settings == mine.tts.settings  # the engine sessions act on them
    assert theirs.tts.session.settings == theirs.tts.settings
    await set_knob(two, "refine_prompt", "[oral_2] and words")  # the page refuses it, sends nothing
    assert "refine prompt" in await two.locator("#errors").text_content()
    assert theirs.tts.settings.refine_prompt == "[laugh_2][break_4]"

    # refine on: the refined text reaches page one before the typed turn's audio; page two refines nothing
    await one.locator(".turn[data-turn='1'] .latency").wait_for(timeout=20_000)  # after the mic's turn
    await one.fill("#say-text", "Typed words.")
    await one.click("#say")
    typed = one.locator(".turn", has_text="typed")
    await typed.locator(".refined").wait_for(timeout=15_000)
    assert await typed.locator(".refined").text_content() == "refined: Typed words. [uv_break]"
    await typed.locator(".latency").wait_for(timeout=15_000)  # the turn ended: its audio was sent
    events = await one.evaluate("window.voiceloop.state.events.map(e => [e.type, e.turn_id])")
    turn = next(t for kind, t in events if kind == "refined" and t >= 1_000_000)  # the typed turn
    assert events.index(["refined", turn]) < events.index(["turn", turn])
    assert await two.evaluate("window.voiceloopPanel.refined.length") == 0

    # the bot's audio of that turn, as a download
    link = typed.locator("a.download")
    await link.wait_for(timeout=15_000)
    async with one.expect_download() as waiting:
        await link.click()
    download = await waiting.value
    saved = tmp_path / "turn.wav"
    await download.save_as(saved)
    audio, rate = soundfile.read(str(saved), dtype="float32")
    assert rate > 0 and len(audio) > rate // 2 and np.abs(audio).max() > 0.05  # the 440 Hz reply

    # a voice from a WAV file on page one: its session speaks in it, page two's voice is untouched
    await one.fill("#voice-transcript", "你好，今天天气很好，我们出去走走吧")
    await one.set_input_files("#voice-file", str(reference))
    await wait_js(one, "document.getElementById('voice').value === 'recording'")
    assert mine.tts.voice == tts.cloned[0] and tts.cloned[0].startswith("cloned:1:你好")
    assert "s," in await one.locator("#voice-status").text_content()
    assert theirs.tts.voice is None

    # page two records two seconds of its microphone: no transcript given, the ASR hears one
    await two.click("#record")
    await asyncio.sleep(2.0)  # the fake microphone plays in real time
    await two.click("#record")
    await wait_js(two, "document.getElementById('voice').value === 'recording'")
    await until(lambda: theirs.tts.voice is not None)
    assert theirs.tts.voice == tts.cloned[1] and mine.tts.voice == tts.cloned[0]
    assert "heard by the ASR" in await two.locator("#voice-status").text_content()

    # page two rolls a seed: a seed:N voice there, the recording stays page one's
    await two.click("#seed-roll")
    await until(lambda: (theirs.tts.voice or "").startswith("seed:"))
    seed = await two.evaluate("document.getElementById('seed').value")
    assert theirs.tts.voice == f"seed:{seed}" and mine.tts.voice == tts.cloned[0]
    assert mine.tts.settings.temperature == 0.8 and theirs.tts.settings.temperature is None

    assert not errors
    for page in (one, two):
        await page.close()
    await until(lambda: server.sessions == 0, timeout=30)
