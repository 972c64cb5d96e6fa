"""WebRTC media ends and the signalling server, on loopback only (fake engines keep it fast)."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from helpers.caller import mic_frame
from helpers.fakes import FakeAsr, FakeTts
from helpers.speech import espeak, require_espeak

from voiceloop.dialogue import echo
from voiceloop.errors import UserError
from voiceloop.frames import EndOfStream
from voiceloop.io.webrtc import WebRtcSink, WebRtcSource
from voiceloop.loop import Engines, LoopOptions
from voiceloop.pipeline import Pipeline
from voiceloop.serve.server import ServerOptions, VoiceServer, loopback_candidates
from voiceloop.serve.session import ServeLog
from voiceloop.timeline import Metrics

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).parents[1]
TINY_ASR = str(ROOT / "tests" / "fixtures" / "tiny-zh-asr")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """aioice gathers every interface but loopback; these tests must stay on 127.0.0.1."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


class SineTts(FakeTts):
    """FakeTts with a 440 Hz tone (Opus removes the DC that FakeTts emits)."""

    def session(self, voice: str | None = None):
        session = super().session(voice)
        inner = session.synthesize

        async def synthesize(text: str):
            async for chunk in inner(text):
                t = np.arange(len(chunk)) / self.sample_rate
                yield (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)

        session.synthesize = synthesize  # type: ignore[method-assign]
        return session


class PcmTrack(MediaStreamTrack):
    """Plays 16 kHz mono int16 in paced 20 ms frames, then silence forever (like an open mic)."""

    kind = "audio"

    def __init__(self, pcm: np.ndarray) -> None:
        super().__init__()
        self.pcm = pcm
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            await asyncio.sleep(max(0.0, self._start + self._pts / 16_000 - loop.time()))
        frame = mic_frame(self.pcm[self._pts : self._pts + 320], self._pts)
        self._pts += 320
        return frame


class Client:
    """An aiortc peer like the browser page: mic track out, bot track in, 'events' data channel."""

    def __init__(self, pcm: np.ndarray) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.events: list[dict] = []
        self.bot_frames = 0
        self.bot_peak = 0
        self._tasks: list[asyncio.Task] = []
        channel = self.channel = self.pc.createDataChannel("events")
        channel.on("message", lambda m: self.events.append(json.loads(m)))
        self.pc.addTrack(PcmTrack(pcm))
        self.pc.on("track", lambda track: self._tasks.append(asyncio.ensure_future(self._drain(track))))

    async def _drain(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                self.bot_frames += 1
                self.bot_peak = max(self.bot_peak, int(np.abs(frame.to_ndarray().astype(np.int32)).max()))
        except MediaStreamError:
            pass

    async def offer(self) -> dict:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return {"sdp": self.pc.localDescription.sdp, "type": "offer"}

    async def connect(self, url: str, token: str | None = None) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        offer = await self.offer()
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + "offer", json=offer, headers=headers) as response,
        ):
            body = await response.json()
        if response.status == 200:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        return response.status, body

    def send(self, message: dict | str | bytes) -> None:
        """A message to the server on the events channel (dicts as JSON)."""
        self.channel.send(json.dumps(message) if isinstance(message, dict) else message)

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:  # a track that never started does not end by itself
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def until(predicate, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


def engines(texts: list[str] | None = None) -> Engines:
    tts = SineTts(first_delay=0.05, chunk_delay=0.02, voices=["alice"])
    return Engines(FakeAsr(texts or ["hello"], final_delay=0.05), tts)


def pipeline_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("voiceloop:") and not t.done()]


async def post(url: str, data: bytes, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "offer", data=data, headers=headers) as response,
    ):
        return response.status, await response.json(content_type=None)


@pytest.fixture
async def server():
    made: list[VoiceServer] = []

    async def make(observer=None, **options) -> VoiceServer:
        srv = VoiceServer(engines(), echo, LoopOptions(), ServerOptions(port=0, **options), observer)
        await srv.start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        await srv.stop()


def speech() -> np.ndarray:
    require_espeak()
    silence = np.zeros(8000, np.int16)
    return np.concatenate([silence, espeak("hello there, how are you", voice="en"), silence])


# -- the whole loop over WebRTC ------------------------------------------------------------------
async def test_a_peer_speaks_and_hears_the_bot_and_gets_events(server):
    srv = await server(token="s3cret")
    client = Client(speech())
    status, answer = await client.connect(srv.url, "s3cret")
    assert status == 200 and answer["type"] == "answer"
    assert srv.sessions == 1
    await until(lambda: any(e["type"] == "turn" for e in client.events))
    types = [e["type"] for e in client.events]
    assert {"speech_started", "speech_ended", "final", "reply_text", "reply_end"} <= set(types)
    final = next(e for e in client.events if e["type"] == "final")
    assert final["text"] == "hello"
    turn = next(e for e in client.events if e["type"] == "turn")
    assert turn["reply"] == "hello" and turn["durations"]["voice_to_voice"] > 0
    await until(lambda: client.bot_peak > 1000)  # the 440 Hz reply arrived on the bot track
    assert client.bot_frames > 0
    await client.close()
    await until(lambda: srv.sessions == 0)
    await until(lambda: not pipeline_tasks())


async def test_teardown_when_the_client_goes_away(server):
    srv = await server()
    client = Client(np.zeros(16_000, np.int16))
    status, _ = await client.connect(srv.url)
    assert status == 200
    await until(lambda: client.bot_frames > 5)  # connected: silence flows from the bot
    assert srv.sessions == 1 and pipeline_tasks()
    await client.close()
    await until(lambda: srv.sessions == 0)
    await until(lambda: not pipeline_tasks())


# -- request validation ----------------------------------------------------------------------------
async def test_token_required(server):
    srv = await server(token="s3cret")
    offer = json.dumps(await Client(np.zeros(320, np.int16)).offer()).encode()
    for token in (None, "wrong"):
        status, body = await post(srv.url, offer, token)
        assert status == 401 and "token" in body["error"]
    assert srv.sessions == 0


async def test_bad_requests(server):
    srv = await server(max_body_bytes=4096)
    status, body = await post(srv.url, b"x" * 10_000)
    assert status == 413
    status, body = await post(srv.url, b"{not json")
    assert status == 400 and "JSON" in body["error"]
    status, body = await post(srv.url, json.dumps({"sdp": 1, "type": "offer"}).encode())
    assert status == 400 and "sdp" in body["error"]
    status, body = await post(srv.url, json.dumps({"sdp": "garbage", "type": "offer"}).encode())
    assert status == 400 and "SDP" in body["error"]
    broken = "v=0\r\nm=audio notaport UDP/TLS/RTP/SAVPF 111\r\n"
    status, body = await post(srv.url, json.dumps({"sdp": broken, "type": "offer"}).encode())
    assert status == 400 and "SDP" in body["error"]
    assert srv.sessions == 0 and not pipeline_tasks()
    async with aiohttp.ClientSession() as http, http.get(srv.url) as response:
        assert response.status == 200 and "voiceloop" in await response.text()


async def test_session_cap(server):
    srv = await server(max_sessions=1)
    first = Client(np.zeros(16_000, np.int16))
    assert (await first.connect(srv.url))[0] == 200
    await until(lambda: first.bot_frames > 5)
    second = Client(np.zeros(16_000, np.int16))
    status, body = await second.connect(srv.url)
    assert status == 503 and "busy" in body["error"]
    await second.close()
    await first.close()
    await until(lambda: srv.sessions == 0)
    third = Client(np.zeros(16_000, np.int16))
    assert (await third.connect(srv.url))[0] == 200  # the slot is free again
    await third.close()


async def test_a_peer_that_never_connects_is_dropped(server):
    srv = await server(connect_timeout_s=0.5)
    offer = await Client(np.zeros(320, np.int16)).offer()  # offered, then vanished
    status, _ = await post(srv.url, json.dumps(offer).encode())
    assert status == 200 and srv.sessions == 1
    await until(lambda: srv.sessions == 0)
    await until(lambda: not pipeline_tasks())


def test_bad_options():
    with pytest.raises(UserError):
        ServerOptions(max_sessions=0)
    with pytest.raises(UserError):
        ServerOptions(token=" ")
    with pytest.raises(UserError):
        ServerOptions(port=70_000)


# -- media ends without a network --------------------------------------------------------------
class FrameTrack:
    """A remote track stand-in: 48 kHz stereo 960-sample frames (what aiortc decodes), then ends."""

    kind = "audio"

    def __init__(self, frames: int) -> None:
        self.left = frames

    async def recv(self) -> Any:
        if not self.left:
            raise MediaStreamError
        self.left -= 1
        pcm = np.full((1, 1920), 500, np.int16)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        frame.sample_rate = 48_000
        return frame


async def test_source_resamples_to_canonical_frames_and_ends_with_the_track():
    from helpers.fakes import Collect

    source = WebRtcSource(FrameTrack(50))  # 1 s
    collect = Collect()
    await Pipeline([source, collect]).run()
    audio = [f for f in collect.frames if not isinstance(f, EndOfStream)]
    assert source.received == 50 and collect.ended
    assert all(len(f.samples) == 320 and f.sample_rate == 16_000 for f in audio)
    assert 48 <= len(audio) <= 50 and [f.seq for f in audio] == list(range(len(audio)))
    assert abs(int(np.median(np.concatenate([f.samples for f in audio])))) == 500


async def test_sink_paces_flushes_and_counts_underruns_mid_reply():
    sink = WebRtcSink(buffer_s=0.2)
    metrics = Metrics()
    sink.bind_metrics(metrics)
    first = await sink.track.recv()  # starts the schedule: silence while idle
    assert first.samples == 960 and first.sample_rate == 48_000 and not np.any(first.to_ndarray())
    assert metrics.counters.get("underruns", 0) == 0
    tone = np.full(48_000, 1000, np.int16)  # 1 s: the write waits until the buffer is under 0.2 s
    writer = asyncio.ensure_future(sink.write(tone))
    await asyncio.sleep(0)
    assert not writer.done() or sink.buffered() > 0
    frames = [await sink.track.recv() for _ in range(5)]
    assert all(np.all(f.to_ndarray() == 1000) for f in frames)
    assert [f.pts for f in frames] == [960 * k for k in range(1, 6)]
    await writer
    assert sink.flush() > 0 and sink.buffered() == 0  # barge-in
    await sink.write(np.full(480, 1000, np.int16))  # a reply shorter than a frame: runs dry mid-reply
    await sink.track.recv()
    await sink.track.recv()
    assert sink.underruns == 1 and metrics.counters["underruns"] == 1
    await sink.drain()
    await sink.track.recv()  # idle silence after the reply is not an underrun
    assert sink.underruns == 1
    await sink.close()
    with pytest.raises(MediaStreamError):
        await sink.track.recv()


# -- the page's requests: text to speak, voices ------------------------------------------------------
async def connected(srv: VoiceServer, pcm: np.ndarray | None = None) -> tuple[Client, int]:
    """A client with an open events channel (silent mic unless given audio); returns it and its session."""
    client = Client(np.zeros(16_000, np.int16) if pcm is None else pcm)
    status, answer = await client.connect(srv.url)
    assert status == 200
    await until(lambda: client.channel.readyState == "open" and client.of_type("session"))
    assert client.of_type("session")[0]["session"] == answer["session"]
    return client, answer["session"]


async def test_the_page_makes_the_bot_speak_in_the_voice_it_picked(server):
    srv = await server()
    client, sid = await connected(srv)
    tts = srv.session(sid).tts
    client.send({"type": "voice", "voice": "seed:42"})
    await until(lambda: client.of_type("voice"))
    assert client.of_type("voice")[0]["voice"] == "seed:42"
    assert tts.voice == "seed:42" and tts.session.voice == "seed:42"
    client.send({"type": "say", "text": "Good morning, how can I help?", "voice": "alice"})
    await until(lambda: any(e["type"] == "turn" for e in client.events))
    assert tts.session.voice == "alice"
    assert [e["voice"] for e in client.of_type("voice")] == ["seed:42", "alice"]
    (ack,) = client.of_type("say")
    turn_id = ack["turn_id"]
    assert turn_id > 1_000_000 and ack["text"] == "Good morning, how can I help?"
    pieces = [e["text"] for e in client.of_type("reply_text")]
    assert all(e["turn_id"] == turn_id for e in client.of_type("reply_text"))
    assert " ".join(pieces) == "Good morning, how can I help?"
    turn = client.of_type("turn")[0]
    assert turn["turn_id"] == turn_id and turn["reply"] == "Good morning, how can I help?"
    assert turn["played_known"]  # the sink's send time is stamped: the page's "sent" segment
    durations = turn["durations"]
    assert durations["tts_first_audio"] > 0 and durations["output_buffering"] >= 0
    await until(lambda: client.bot_peak > 1000)  # the typed text was heard
    retired = tts.engine.sessions[:-1]
    assert all(s.closed for s in retired)  # the voices it replaced were released
    await client.close()
    await until(lambda: srv.sessions == 0)


async def test_bad_page_messages_are_answered_with_errors_and_the_session_goes_on(server):
    srv = await server(max_say_chars=20)
    client, sid = await connected(srv)
    bad = [
        b"\x00binary",
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"type": "dance"}),
        json.dumps({"type": "say"}),
        json.dumps({"type": "say", "text": "   "}),
        json.dumps({"type": "say", "text": "x" * 21}),
        json.dumps({"type": "say", "text": "hi", "voice": "/etc/passwd"}),
        json.dumps({"type": "voice"}),
        json.dumps({"type": "voice", "voice": "seed:-1"}),
        json.dumps({"type": "voice", "voice": "seed:abc"}),
        json.dumps({"type": "voice", "voice": "bob"}),
        json.dumps({"type": "voice", "voice": 42}),
        "x" * 9000,
    ]
    for message in bad:
        client.send(message)
    await until(lambda: len(client.of_type("error")) == len(bad))
    errors = [e["error"] for e in client.of_type("error")]
    assert "binary" in errors[0] and "JSON" in errors[1] and "dance" in errors[3]
    assert "20 characters" in errors[6] and "unknown voice" in errors[7] and "bytes" in errors[13]
    assert srv.sessions == 1 and not client.of_type("say") and not client.of_type("voice")
    assert srv.session(sid).tts.voice is None
    client.send({"type": "say", "text": "still here"})
    await until(lambda: client.of_type("turn"))
    assert client.of_type("turn")[0]["reply"] == "still here"
    await client.close()
    await until(lambda: srv.sessions == 0)


async def test_voices_config_and_page_endpoints(server):
    srv = await server(token="s3cret", ice_servers=["stun:stun.example.org:3478"])
    async with aiohttp.ClientSession() as http:
        for path in ("voices", "config"):
            async with http.get(srv.url + path) as response:
                assert response.status == 401
        headers = {"Authorization": "Bearer s3cret"}
        async with http.get(srv.url + "voices", headers=headers) as response:
            assert await response.json() == {"default": None, "seeds": True, "names": ["alice"]}
        async with http.get(srv.url + "config", headers=headers) as response:
            config = await response.json()
        assert config["ice_servers"] == [{"urls": "stun:stun.example.org:3478"}]
        assert config["max_say_chars"] == 500 and config["voices"]["names"] == ["alice"]
        pages = [("", "text/html"), ("app.js", "text/javascript"), ("call.js", "text/javascript")]
        for path, kind in [*pages, ("style.css", "text/css")]:
            async with http.get(srv.url + path) as response:  # the page itself needs no token
                assert response.status == 200 and response.content_type == kind
                assert len(await response.text()) > 500
        async with http.get(srv.url + "../pyproject.toml") as response:
            assert response.status == 404


def test_loopback_candidates_only_keeps_127_0_0_1():
    sdp = "\r\n".join(
        [
            "v=0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=candidate:1 1 udp 2122260223 192.0.2.2 50000 typ host generation 0",
            "a=candidate:2 1 udp 2122262783 fd00::2 50001 typ host generation 0",
            "a=candidate:3 1 udp 2122129151 127.0.0.1 50002 typ host generation 0",
            "a=candidate:4 1 tcp 1518280447 ::1 9 typ host tcptype active generation 0",
            "a=candidate:broken",
            "a=end-of-candidates",
            "",
        ]
    )
    kept = loopback_candidates(sdp)
    assert [line for line in kept.split("\r\n") if line.startswith("a=candidate")] == [
        "a=candidate:3 1 udp 2122129151 127.0.0.1 50002 typ host generation 0"
    ]
    assert kept.endswith("a=end-of-candidates\r\n")


class StallingTrack(PcmTrack):
    """A microphone that sends half a second, then nothing (a peer that vanished without a word)."""

    async def recv(self) -> Any:
        if self._pts >= 8000:
            await asyncio.Event().wait()
        return await super().recv()


async def test_a_peer_whose_audio_stops_is_dropped(server):
    srv = await server(media_timeout_s=1.0)
    client = Client(np.zeros(16_000, np.int16))
    client.pc.getSenders()[0].replaceTrack(StallingTrack(np.zeros(16_000, np.int16)))
    status, _ = await client.connect(srv.url)
    assert status == 200
    await until(lambda: srv.sessions == 1 and srv.session(1).source.received > 0)
    await until(lambda: srv.sessions == 0)
    await until(lambda: not pipeline_tasks())
    assert "no audio" in client.of_type("closing")[0]["reason"]
    await client.close()


async def test_serve_log_tags_every_session_and_writes_all_turns(server):
    events, metrics = io.StringIO(), io.StringIO()
    log = ServeLog("json", stream=events, metrics=metrics)
    metrics.close = lambda: None  # keep the text readable after log.close()
    srv = await server(observer=log)
    clients = [await connected(srv) for _ in range(2)]
    for client, _ in clients:
        client.send({"type": "say", "text": "hello"})
    for client, _ in clients:
        await until(lambda c=client: c.of_type("turn"))
        await client.close()
    await until(lambda: srv.sessions == 0)
    summary = log.close()
    assert summary["turns"] == 2
    lines = [json.loads(line) for line in events.getvalue().splitlines()]
    sids = {sid for _, sid in clients}
    assert {line["session"] for line in lines if line["type"] == "session_started"} == sids
    assert {line["session"] for line in lines if line["type"] == "session_ended"} == sids
    assert {line["session"] for line in lines if line["type"] == "reply_text"} == sids
    assert lines[-1]["type"] == "summary" and lines[-1]["turns"] == 2
    records = [json.loads(line) for line in metrics.getvalue().splitlines()]
    turns = [r for r in records if r["type"] == "turn"]
    assert {t["session"] for t in turns} == sids and all(t["reply"] == "hello" for t in turns)
    assert [r["type"] for r in records].count("session_summary") == 2 and records[-1]["type"] == "summary"


# -- voiceloop serve ------------------------------------------------------------------------------
SERVE = """
import faulthandler, signal, sys
faulthandler.register(signal.SIGUSR1)  # the test asks for every thread's stack if the server hangs
import aioice.ice
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]  # loopback only
from voiceloop.cli import main
sys.exit(main(sys.argv[1:]))
"""


# The hang guard covers the waits inside (a model load of up to 120 s, a turn of up to 60 s, the
# exit of up to 60 s): the module's 90 s cut a loaded machine's run short while it was progressing.
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_serve_cli_json_and_metrics_out_with_tiny_models(chattts_root, tmp_path):
    """The real engines (tiny ASR, 2-layer random ChatTTS) behind ``voiceloop serve --json``."""
    metrics = tmp_path / "turns.jsonl"
    argv = ["serve", "--port", "0", "--json", "--metrics-out", str(metrics), "--asr", TINY_ASR]
    argv += [
        "--tts",
        str(chattts_root),
        "--tts-max-seconds",
        "0.4",
        "--asr-threads",
        "1",
        "--tts-threads",
        "1",
    ]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVE, *argv, cwd=ROOT, stdout=PIPE, stderr=PIPE
    )
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), timeout=120)  # models load first
        listening = json.loads(first or b"{}")
        assert listening.get("type") == "listening", (first, await proc.stderr.read(4000))
        url = listening["url"]
        async with aiohttp.ClientSession() as http, http.get(url + "voices") as response:
            assert (await response.json())["seeds"] is True  # random assets carry spk_stat
        client = Client(np.zeros(16_000, np.int16))
        assert (await client.connect(url))[0] == 200
        await until(lambda: client.channel.readyState == "open" and client.of_type("session"))
        client.send({"type": "say", "text": "你好", "voice": "seed:7"})
        await until(lambda: client.of_type("turn"), timeout=60)
        assert client.of_type("voice")[0]["voice"] == "seed:7"
        assert client.of_type("turn")[0]["reply"] == "你好"
        await client.close()
    finally:
        if proc.returncode is None:
            # SIGTERM, the service manager's stop: a shell's background job has SIGINT ignored (the
            # server then never saw Ctrl-C, which hung this test under a backgrounded CI script)
            proc.send_signal(signal.SIGTERM)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        except TimeoutError:  # a hang: say where every thread of the server is, then end it
            proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(2)
            proc.kill()
            _, err = await proc.communicate()
            stacks = err.decode()[-6000:]
            raise AssertionError("voiceloop serve did not exit on SIGTERM:\n" + stacks) from None
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in out.decode().splitlines()]
    kinds = [line["type"] for line in lines]
    assert kinds[0] == "session_started" and "session_ended" in kinds and kinds[-1] == "summary"
    assert {line.get("session") for line in lines if line["type"] == "reply_text"} == {1}
    assert lines[-1]["sessions"] == 1 and lines[-1]["turns"] == 1
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["type"] for r in records] == ["turn", "session_summary", "summary"]
    assert records[0]["session"] == 1 and records[0]["reply"] == "你好" and records[0]["first_played"]


# -- typed text is a bot turn like any other (virtual clock, scripted engines) ------------------------
def test_said_text_is_a_bot_turn_that_a_barge_in_cuts():
    from test_conversation import build

    from voiceloop.clock import run
    from voiceloop.frames import Interruption, ReplyText, TurnMetrics

    text = "今天天气很好，我们去公园散步吧。明天可能下雨，记得带伞。后天我们再一起去图书馆看书。"
    pipeline, events, _, dialogue = build(lambda t: "好的", [(2.0, 3.0)], 9.0, texts=["你好"])
    said: list[int] = []

    async def main() -> None:
        asyncio.get_running_loop().call_later(0.5, lambda: said.append(dialogue.say(text)))
        await pipeline.run()

    run(main(), clock="virtual")
    (turn_id,) = said
    assert turn_id > 1_000_000
    pieces = [e.text for e in events if isinstance(e, ReplyText) and e.turn_id == turn_id]
    assert "".join(pieces) == text  # bot-text events, piece by piece, as for a handler reply
    (cut,) = [e for e in events if isinstance(e, Interruption)]
    assert cut.turn_id == turn_id and cut.played_text and text.startswith(cut.played_text)
    assert len(cut.played_text) < len(text)
    timelines = {e.timeline.turn_id: e.timeline for e in events if isinstance(e, TurnMetrics)}
    said_turn = timelines[turn_id]
    assert said_turn.interrupted and said_turn.played_text == cut.played_text
    assert said_turn.tts_first_audio - said_turn.handler_first_text == pytest.approx(0.2)  # FakeTts delay
    assert timelines[1].reply == "好的" and not timelines[1].interrupted  # the user's turn goes on
    assert [(m.role, m.text) for m in dialogue.history] == [
        ("assistant", cut.played_text),  # only what was heard
        ("user", "你好"),
        ("assistant", "好的"),
    ]
    with pytest.raises(ValueError):
        dialogue.say("  ")
    with pytest.raises(RuntimeError):
        dialogue.say("the pipeline has ended")
