"""The page waits for a free line and keeps its call over a lost connection (issue 21), in headless Chromium.

Same setup as tests/test_webrtc_browser.py (loopback only, a fake microphone playing an espeak-ng WAV,
fake engines). The server side is the real one: ``max_sessions`` refusals (503 + Retry-After), the
offer rate limit (429), the per-turn call checkpoints and the data-channel heartbeat. Each test counts
the offers the server saw (``OfferLog``) rather than trusting the page's own account.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from helpers.speech import espeak, require_espeak
from test_webrtc import Client, engines, loopback_only, post, until  # noqa: F401 (fixture)
from test_webrtc_browser import CHROMIUM, FLAGS, require_browser, wait_js

from voiceloop.dialogue import echo
from voiceloop.loop import LoopOptions
from voiceloop.serve.guard import Refused
from voiceloop.serve.server import ServerOptions, VoiceServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def mic(tmp_path) -> Path:
    """What the fake microphone plays, looped: 1 s silence, one sentence (one turn), 9 s silence."""
    require_espeak()
    rate = 16_000
    pcm = np.concatenate(
        [np.zeros(rate, np.int16), espeak("hello there", voice="en"), np.zeros(9 * rate, np.int16)]
    )
    path = tmp_path / "mic.wav"
    soundfile.write(str(path), pcm, rate, subtype="PCM_16")
    return path


class OfferLog:
    """Every offer the server's calls saw: the call id it came with and what became of it."""

    def __init__(self, srv: VoiceServer) -> None:
        self.offers: list[tuple[str | None, int, dict[str, Any]]] = []  # (call, status, answer)
        inner = srv.calls.offer

        async def offer(sdp: str, call: str | None) -> dict[str, Any]:
            try:
                answer = await inner(sdp, call)
            except Refused as refused:
                self.offers.append((call, refused.status, {}))
                raise
            self.offers.append((call, 200, answer))
            return answer

        srv.calls.offer = offer  # type: ignore[method-assign]

    def count(self, status: int) -> int:
        return sum(1 for _, s, _ in self.offers if s == status)

    def admitted(self) -> list[tuple[str | None, dict[str, Any]]]:
        return [(call, answer) for call, s, answer in self.offers if s == 200]


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[VoiceServer, OfferLog]]:
    opts = ServerOptions(port=0, loopback_candidates_only=True, **options)
    srv = VoiceServer(engines(["hello"]), echo, LoopOptions(), opts)
    log = OfferLog(srv)
    await srv.start()
    try:
        yield srv, log
    finally:
        await srv.stop()


@asynccontextmanager
async def page_on(srv: VoiceServer, mic) -> AsyncIterator[Any]:
    """The page loaded (config read) in a fresh headless Chromium; page errors fail the test."""
    async_playwright = require_browser()
    async with async_playwright() as p:
        args = [*FLAGS, f"--use-file-for-fake-audio-capture={mic}"]
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(srv.url)
            await page.wait_for_selector("body[data-ready='1']")
            yield page
            assert not errors
        finally:
            await browser.close()


async def js(page, expression: str) -> Any:
    return await page.evaluate(f"() => {expression}")


async def connected_after_a_turn(page, srv: VoiceServer) -> Any:
    """Connect and wait for the fake microphone's sentence to make a whole turn (checkpointed)."""
    await page.click("#connect")
    await page.wait_for_selector("#status.connected", timeout=15_000)
    await page.locator(".turn[data-turn='1'] .latency .seg").first.wait_for(timeout=20_000)
    session = srv.session(await js(page, "window.voiceloop.state.session"))
    assert session is not None and len(session.dialogue.history) >= 2  # the user's words and the reply
    return session


async def no_offer_for(log: OfferLog, seconds: float) -> None:
    """Nothing offered for a while (longer than the page's failover wait): the call stays ended."""
    before = len(log.offers)
    await asyncio.sleep(seconds)
    assert len(log.offers) == before


async def test_the_page_waits_for_a_free_line_then_gets_in(mic):
    async with serving(max_sessions=1, retry_after_s=1, offer_rate_per_min=0) as (srv, log):
        holder = Client(np.zeros(16_000, np.int16))
        assert (await holder.connect(srv.url))[0] == 200
        await until(lambda: holder.bot_frames > 5)
        async with page_on(srv, mic) as page:
            await page.click("#connect")
            await page.wait_for_selector("#status.waiting", timeout=15_000)
            notice = page.locator("#notice")
            assert "All lines are busy — retrying in" in await notice.text_content()
            assert await page.locator("#disconnect").text_content() == "Cancel"
            await until(lambda: log.count(503) >= 3, timeout=20)  # it retried by itself
            assert srv.sessions == 1 and not await page.locator("#errors").text_content()

            await holder.close()  # the line frees: the page gets in, no click
            await page.wait_for_selector("#status.connected", timeout=20_000)
            await wait_js(page, "window.voiceloop.state.events.some(e => e.type === 'session')")
            assert srv.sessions == 1 and log.count(200) == 2  # the holder's and the page's
            assert await notice.text_content() == ""
            assert await page.locator("#disconnect").text_content() == "Disconnect"

            # cancelling a wait: Disconnect while refused stops the retries
            await page.click("#disconnect")
            await until(lambda: srv.sessions == 0)
            holder = Client(np.zeros(16_000, np.int16))
            assert (await holder.connect(srv.url))[0] == 200
            await page.click("#connect")
            await page.wait_for_selector("#status.waiting", timeout=15_000)
            await page.click("#disconnect")
            assert await js(page, "window.voiceloop.state.status") == "closed"
            await no_offer_for(log, 2.5)
            await holder.close()


async def test_a_rate_limited_offer_waits_its_retry_after(mic):
    async with serving(offer_rate_per_min=12, offer_burst=1) as (srv, log), page_on(srv, mic) as page:
        assert (await post(srv.url, b"{}"))[0] == 400  # spends the one offer of the burst
        await page.click("#connect")
        await page.wait_for_selector("#status.waiting", timeout=15_000)
        assert "Too many tries — retrying in" in await page.locator("#notice").text_content()
        await page.wait_for_selector("#status.connected", timeout=20_000)
        assert srv.sessions == 1 and log.count(200) == 1


async def test_a_lost_call_is_offered_again_with_its_turns(mic):
    async with serving() as (srv, log), page_on(srv, mic) as page:
        old = await connected_after_a_turn(page, srv)
        [(first_call, answer)] = log.admitted()
        assert first_call is None and answer["call"]
        call = answer["call"]
        stored = await js(page, "JSON.stringify([localStorage, sessionStorage, location.href])")
        assert call not in stored  # memory only: the call id reads the conversation back
        await wait_js(page, "window.voiceloop.state.alive > 0")  # heartbeats arrive, unlogged
        assert not await js(page, "window.voiceloop.state.events.some(e => e.type === 'alive')")

        await srv.peers.close(old)  # the server side dies without a word
        await wait_js(page, "window.voiceloop.state.resumed !== null", timeout=15)
        assert await js(page, "window.voiceloop.state.losses") == ["the events channel closed"]
        resumed = await js(page, "window.voiceloop.state.resumed")
        assert resumed["call"] == call and resumed["turns"] >= 1
        assert "conversation is kept" in await page.locator("#notice").text_content()
        assert await page.locator(".turn.resumed").count() == 1
        assert [c for c, _ in log.admitted()] == [None, call]  # the re-offer named the call
        await page.wait_for_selector("#status.connected", timeout=15_000)
        new = srv.session(await js(page, "window.voiceloop.state.session"))
        assert new is not None and new is not old and srv.sessions == 1
        assert [m.text for m in new.dialogue.history[:2]] == ["hello", "hello"]

        # the new leg works: a typed turn on the new session, numbered afresh
        await page.fill("#say-text", "Still here.")
        await page.click("#say")
        typed = page.locator(".turn[data-turn]", has_text="typed")
        await typed.locator(".latency .seg.sent").wait_for(timeout=15_000)
        assert await typed.locator(".bot").text_content() == "Still here."
        assert await page.locator(".turn[data-earlier='1']").count() == 1  # the first leg's card

        # the user's own disconnect: no reconnect, and the server forgets the call
        await page.click("#disconnect")
        await until(lambda: srv.sessions == 0)
        await no_offer_for(log, 3.0)
        assert await js(page, "window.voiceloop.state.status") == "closed"
        assert srv.peers is not None and await srv.peers.history.get(call) == []


async def test_a_silent_server_is_left_for_a_new_connection(mic):
    """The server's loop hangs (alive to TCP, silent to the page): no heartbeat for failover_after_s."""
    async with serving() as (srv, log), page_on(srv, mic) as page:
        old = await connected_after_a_turn(page, srv)
        old.send = lambda record: None  # its events and heartbeats stop; its connection stays up
        await wait_js(page, "window.voiceloop.state.resumed !== null", timeout=15)
        assert await js(page, "window.voiceloop.state.resumed.turns") >= 1
        assert await js(page, "window.voiceloop.state.losses") == ["nothing heard for 2 s"]
        assert old.closing and srv.sessions == 1  # the re-offer ended the silent session
        assert [c is None for c, _ in log.admitted()] == [True, False]
        await page.wait_for_selector("#status.connected", timeout=15_000)

        # a server that ends a session with a reason other than a silent microphone (a worker
        # shutting down): the page goes on elsewhere, as after a loss
        new = srv.session(await js(page, "window.voiceloop.state.session"))
        await srv.peers.close(new, reason="the worker is shutting down")
        await wait_js(page, "window.voiceloop.state.losses.length === 2")
        await wait_js(page, "window.voiceloop.state.resumed !== null", timeout=15)
        assert len(log.admitted()) == 3 and not await page.locator("#errors").text_content()


async def test_no_reconnect_after_the_server_closes_for_a_silent_microphone(mic):
    async with serving() as (srv, log), page_on(srv, mic) as page:
        await page.click("#connect")
        await page.wait_for_selector("#status.connected", timeout=15_000)
        session = srv.session(await js(page, "window.voiceloop.state.session"))
        assert session is not None
        srv.peers._check_media(session, session.source.received)  # as if nothing came since
        await page.wait_for_selector("#status.closed", timeout=15_000)
        assert "no audio" in await page.locator("#errors").text_content()
        await until(lambda: srv.sessions == 0)
        await no_offer_for(log, 3.0)
        assert await js(page, "window.voiceloop.state.reconnects") == 0
