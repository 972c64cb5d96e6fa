"""The page end to end in headless Chromium: fake mic (an espeak-ng WAV) → bot → the page's DOM and ears.

Loopback only: Chromium needs ``--allow-loopback-in-peer-connection`` to offer 127.0.0.1 at all, the
server drops its other candidates (``loopback_candidates_only``) and aioice gathers only 127.0.0.1
(the patch in ``loopback_only``). Set ``VOICELOOP_SCREENSHOT=path.png`` to also keep the screenshot
(how ``docs/serve-page.png`` was made).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from helpers.speech import espeak, require_espeak
from test_webrtc import engines, loopback_only, pipeline_tasks, until  # noqa: F401 (fixture)

from voiceloop.dialogue import echo
from voiceloop.loop import LoopOptions
from voiceloop.serve.server import ServerOptions, VoiceServer

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
]


def require_browser():
    """playwright's async API, or a skip naming what is missing (CI installs both)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("the playwright package is missing (pip install playwright; no browser download needed)")
    return async_playwright


@pytest.fixture
def mic_wav(tmp_path) -> Path:
    """What the fake microphone plays, looped: 1 s silence, one sentence, 9 s silence."""
    require_espeak()
    rate = 16_000
    sentence = espeak("hello there, how are you", voice="en")
    pcm = np.concatenate([np.zeros(rate, np.int16), sentence, np.zeros(9 * rate, np.int16)])
    path = tmp_path / "mic.wav"
    soundfile.write(str(path), pcm, rate, subtype="PCM_16")
    return path


async def test_the_page_in_headless_chromium(mic_wav, tmp_path):
    async_playwright = require_browser()
    server = VoiceServer(
        engines(["hello"]),
        echo,
        LoopOptions(),
        ServerOptions(port=0, token="s3cret", loopback_candidates_only=True),
    )
    await server.start()
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=[*FLAGS, f"--use-file-for-fake-audio-capture={mic_wav}"],
            )
            try:
                await drive(browser, server, tmp_path)
            finally:
                await browser.close()
    finally:
        await server.stop()


async def drive(browser, server: VoiceServer, tmp_path: Path) -> None:
    page = await browser.new_page(viewport={"width": 900, "height": 470})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{server.url}#token=s3cret")
    await page.wait_for_selector("body[data-ready='1']")
    assert "s3cret" not in page.url  # the page took the token out of the address bar
    assert await page.locator("#voice option").count() >= 2  # /config with the token: the voices
    await page.click("#connect")
    await page.wait_for_selector("#status.connected", timeout=15_000)
    assert server.sessions == 1

    # the fake mic's sentence: transcript, bot text, latency bar in the DOM
    first = page.locator(".turn[data-turn='1']")
    await first.locator(".latency .seg").first.wait_for(timeout=20_000)
    assert await first.locator(".user").text_content() == "hello"
    assert await first.locator(".bot").text_content() == "hello"
    segments = await first.locator(".latency .seg").evaluate_all("els => els.map(e => e.className)")
    assert {"seg endpointing", "seg asr", "seg tts", "seg sent"} <= set(segments)
    assert "voice to voice" in await first.locator(".latency .total").text_content()
    # the bot's audio reached the page: RTP samples decoded and a tone on the analyser
    await wait_js(page, "(await window.voiceloop.stats()).totalSamplesReceived > 48000")
    await wait_js(page, "window.voiceloop.state.botPeak > 0.05")

    # the text-to-speech box, in a voice from the picker
    await page.select_option("#voice", "seed:42")
    await page.fill("#say-text", "Typed words.")
    peak_before = await page.evaluate("window.voiceloop.state.botPeak = 0")
    assert peak_before == 0
    await page.click("#say")
    typed = page.locator(".turn", has_text="typed")
    await typed.locator(".latency .seg.sent").wait_for(timeout=15_000)
    assert await typed.locator(".bot").text_content() == "Typed words."
    await wait_js(page, "window.voiceloop.state.botPeak > 0.05")
    session = server.session(await page.evaluate("window.voiceloop.state.session"))
    assert session is not None and session.tts.voice == "seed:42"
    assert not await page.locator("#errors").text_content() and not errors

    shot = tmp_path / "serve-page.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("VOICELOOP_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["VOICELOOP_SCREENSHOT"])

    # closing the tab ends the session and its pipeline
    await page.close()
    await until(lambda: server.sessions == 0, timeout=30)
    await until(lambda: not pipeline_tasks(), timeout=30)


async def wait_js(page, condition: str, timeout: float = 15.0) -> None:
    """Poll an async JS condition (page.wait_for_function takes no awaits in the expression)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await page.evaluate(f"async () => {condition}"):
        assert loop.time() < deadline, f"timed out waiting for {condition}"
        await asyncio.sleep(0.1)
