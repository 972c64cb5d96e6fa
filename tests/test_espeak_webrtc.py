"""``voiceloop serve`` with the espeak engine, checked by ear through a real WebRTC peer.

An aiortc peer on loopback speaks espeak-ng Mandarin ("你好") as its microphone track; the server's
pipeline (the tiny ASR, a handler with a fixed sentence, the espeak engine) answers on the bot's track;
the peer records what it receives — Opus-decoded 48 kHz audio, as a browser would hear it — and the
tiny ASR, trained on espeak-ng Mandarin, transcribes it back to the handler's sentence. The same oracle
as tests/test_espeak_loop.py, through resampling to 48 kHz, the Opus codec and RTP both ways.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aioice.ice
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from helpers.oracle import at_16k, cer_against, speech_only
from helpers.speech import espeak, require_espeak
from test_webrtc import Client

from voiceloop.loop import LoopOptions, load_engines
from voiceloop.serve.server import ServerOptions, VoiceServer

TINY_ASR = str(Path(__file__).parent / "fixtures" / "tiny-zh-asr")
REPLY = "你好，明天早上下雨，晚上很冷。"
MAX_CER = 0.10
#: bot frames (20 ms) still recorded once the turn is over: the reply's tail in the peer's jitter buffer
TAIL_FRAMES = 50
# Generous waits for a loaded machine: the assertions are on content only, never on time.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """aioice gathers every interface but loopback; the peers must stay on 127.0.0.1."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.fixture(scope="module")
def engines(one_thread):
    require_espeak()
    loaded = load_engines(LoopOptions(asr=TINY_ASR, tts="espeak"))
    yield loaded
    loaded.close()


class Listener(Client):
    """The test's peer: keeps every frame of the bot's track (first channel, int16 at 48 kHz)."""

    def __init__(self, pcm: np.ndarray) -> None:
        self.heard: list[np.ndarray] = []
        self.rates: set[int] = set()
        super().__init__(pcm)

    async def _drain(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                self.rates.add(int(frame.sample_rate))
                self.heard.append(pcm.astype(np.int16))
                self.bot_frames += 1
        except MediaStreamError:
            pass


async def until(predicate, timeout: float = 300.0, why: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting: {why}"
        await asyncio.sleep(0.05)


async def test_a_webrtc_peer_hears_a_reply_the_tiny_asr_understands(engines):
    silence = np.zeros(8000, np.int16)
    user = np.concatenate([silence, espeak("你好", voice="cmn-latn-pinyin"), silence])
    heard: list[str] = []

    def reply(text: str) -> str:
        heard.append(text)
        return REPLY

    server = VoiceServer(engines, reply, LoopOptions(asr=TINY_ASR, tts="espeak"), ServerOptions(port=0))
    await server.start()
    client = Listener(user)
    try:
        status, _ = await client.connect(server.url)
        assert status == 200
        await until(lambda: client.of_type("turn"), why="the turn's end")
        at_turn = client.bot_frames
        await until(lambda: client.bot_frames >= at_turn + TAIL_FRAMES, why="the reply's tail")
    finally:
        await client.close()
        await server.stop()

    (turn,) = client.of_type("turn")
    assert heard == ["你好"] and turn["text"] == "你好" and turn["reply"] == REPLY
    assert not turn["interrupted"] and turn["played_known"] and turn["durations"]["voice_to_voice"] > 0, turn
    assert client.rates == {48_000}
    speech = speech_only(np.concatenate(client.heard), 48_000)
    assert len(speech) > 48_000, "the bot's reply reached the peer"
    said = engines.asr.transcribe(at_16k(speech, 48_000)).text
    cer = cer_against(REPLY, said)
    assert cer <= MAX_CER, f"CER {cer:.1%}: {REPLY} -> {said}"
