"""The page's text-to-speech panel on the server side (issue 22 part 2): per-session synthesis settings,
the refined-text event, and ``POST /voice`` with every refusal. Fake engines (``PanelTts``) keep it
fast; the real ChatTTS session's side is in tests/test_tts_panel_chattts.py, the page in
tests/test_tts_panel_browser.py."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp
import numpy as np
import pytest
import soundfile
from helpers.fakes import FakeAsr
from test_webrtc import Client, SineTts, loopback_only, until  # noqa: F401 (fixture)

from voiceloop.dialogue import echo
from voiceloop.io.webrtc import WebRtcSink, WebRtcSource
from voiceloop.loop import Engines, LoopOptions, build_pipeline
from voiceloop.serve.server import ServerOptions, VoiceServer
from voiceloop.serve.session import Session, voice_catalog
from voiceloop.serve.voice_upload import VoiceUploadOptions
from voiceloop.tts.base import SynthesisSettings

pytestmark = pytest.mark.timeout(90)
ALL = frozenset({"temperature", "top_p", "top_k", "refine", "refine_prompt"})


class PanelTts(SineTts):
    """A fake engine with every panel feature: settings (kept per session, refine rewrites the text
    before its audio) and voices from recordings (checked for length, kept in memory)."""

    synthesis_settings = ALL

    def __init__(self, **kwargs) -> None:
        super().__init__(first_delay=0.05, chunk_delay=0.02, voices=["alice"], **kwargs)
        self.saved: dict[str, str] = {}
        self.voice_store = SimpleNamespace(names=lambda: sorted(self.saved), save=self.saved.__setitem__)
        self.cloned: list[str] = []

    def settings_defaults(self) -> dict:
        return {"temperature": 0.3, "top_p": 0.7, "top_k": 20, "refine": False, "refine_prompt": "[oral_2]"}

    def session(self, voice: str | None = None):
        session = super().session(voice)
        inner = session.synthesize

        async def synthesize(text: str) -> AsyncIterator[np.ndarray]:
            if session.settings.refine and session.on_rewrite is not None:
                session.on_rewrite(f"{text} [uv_break]")
            async for chunk in inner(text):
                yield chunk

        session.synthesize = synthesize  # type: ignore[method-assign]
        return session

    def voice_from_audio(self, samples, rate, transcript=None, *, transcribe=None):
        seconds = len(samples) / rate
        if seconds < 1.0:
            raise ValueError(f"the recording is {seconds:.2f} s long; a voice needs at least 1 s")
        source = "given" if transcript else "asr"
        text = transcript or transcribe(samples, rate)
        voice = f"cloned:{len(self.cloned) + 1}:{text}"
        self.cloned.append(voice)
        return SimpleNamespace(
            voice=voice, seconds=seconds, transcript=text, transcript_source=source, warnings=()
        )


def panel_engines(texts: list[str] | None = None, tts=None) -> Engines:
    return Engines(FakeAsr(texts or ["hello"], final_delay=0.05), tts or PanelTts())


def session_on(engines: Engines, sid: int = 1) -> Session:
    """A Session with its pipeline built but not running (messages in, records out via its backlog)."""
    pipeline = build_pipeline(WebRtcSource(), WebRtcSink(), engines, echo, LoopOptions())
    return Session(
        sid, None, WebRtcSource(), WebRtcSink(), pipeline, catalog=voice_catalog(engines.tts, None)
    )


def sent(session: Session, kind: str) -> list[dict]:
    return [r for r in map(json.loads, session.backlog) if r["type"] == kind]


# -- the settings object ------------------------------------------------------------------------
def test_settings_are_validated_and_merged():
    settings = SynthesisSettings(temperature=0.5, refine_prompt="[oral_2][laugh_0][break_6]")
    assert settings.given() == {"temperature", "refine_prompt"}
    assert settings.merged({"temperature": None, "top_k": 5}).given() == {"top_k", "refine_prompt"}
    for bad in (
        {"temperature": 0.0},
        {"temperature": 3},
        {"temperature": True},
        {"top_p": 1.5},
        {"top_k": 0},
        {"top_k": 2.5},
        {"refine": "yes"},
        {"refine_prompt": "[oral_2] say something else"},
        {"refine_prompt": "[speed_5]"},  # a code prompt tag, not a refinement one
        {"refine_prompt": "[oral_1]" * 11},  # 88 characters
    ):
        with pytest.raises(ValueError):
            SynthesisSettings().merged(bad)
    with pytest.raises(ValueError, match="unknown settings"):
        settings.merged({"volume": 3})


# -- a session's messages -----------------------------------------------------------------------
async def test_each_session_keeps_its_own_settings():
    engines = panel_engines()
    one, two = session_on(engines, 1), session_on(engines, 2)
    for session in (one, two):
        await session.tts.start()
    one.on_message(json.dumps({"type": "tts", "temperature": 0.9, "refine": True}))
    two.on_message(json.dumps({"type": "tts", "top_k": 3, "refine_prompt": "[laugh_2]"}))
    assert one.tts.settings == SynthesisSettings(temperature=0.9, refine=True)
    assert two.tts.settings == SynthesisSettings(top_k=3, refine_prompt="[laugh_2]")
    assert one.tts.session.settings == one.tts.settings  # the engine session acts on them
    assert two.tts.session.settings == two.tts.settings
    assert sent(one, "tts")[-1]["settings"]["temperature"] == 0.9
    assert sent(two, "tts")[-1]["settings"]["temperature"] is None

    one.set_voice("seed:7")  # a voice change keeps the settings (a new engine session)
    assert one.tts.session.voice == "seed:7" and one.tts.session.settings.refine is True
    one.on_message(json.dumps({"type": "tts", "temperature": None}))  # back to the default
    assert one.tts.settings == SynthesisSettings(refine=True)
    assert two.tts.settings.top_k == 3


async def test_bad_settings_are_an_error_event_and_change_nothing():
    engines = panel_engines()
    session = session_on(engines)
    await session.tts.start()
    session.on_message(json.dumps({"type": "tts", "top_p": 0.5}))
    for bad in (
        {"type": "tts"},
        {"type": "tts", "temperature": "hot"},
        {"type": "tts", "refine_prompt": "[oral_2]<script>"},
        {"type": "tts", "seed": 4},
    ):
        session.on_message(json.dumps(bad))
    errors = sent(session, "error")
    assert len(errors) == 4 and all(e["request"] == "tts" for e in errors)
    assert "refine_prompt" in errors[2]["error"] and "unknown settings" in errors[3]["error"]
    assert session.tts.settings == SynthesisSettings(top_p=0.5)


async def test_an_engine_without_settings_refuses_them():
    engines = panel_engines(tts=SineTts(voices=["alice"]))
    session = session_on(engines)
    await session.tts.start()
    assert session.catalog["tts"] == {"settings": [], "defaults": {}, "clone": False}
    session.on_message(json.dumps({"type": "tts", "temperature": 0.5}))
    assert "no setting temperature" in sent(session, "error")[0]["error"]
    assert session.tts.settings == SynthesisSettings()


async def test_the_refined_text_is_sent_before_its_audio():
    engines = panel_engines()
    session = session_on(engines)
    stage = session.tts
    await stage.start()
    order: list[str] = []
    stage.emit = lambda frame: order.append("audio") or _done()  # type: ignore[method-assign]
    original = session.send
    session.send = lambda record: (order.append(record["type"]), original(record))  # type: ignore[method-assign]
    session.on_message(json.dumps({"type": "tts", "refine": True}))
    from voiceloop.frames import ReplyText

    await stage.process(ReplyText(3, "hello there"))
    refined = sent(session, "refined")
    assert refined == [
        {
            "type": "refined",
            "turn_id": 3,
            "text": "hello there",
            "refined": "hello there [uv_break]",
            "time": refined[0]["time"],
        }
    ]
    assert order.index("refined") < order.index("audio")


async def _done() -> None:
    return None


# -- POST /voice -------------------------------------------------------------------------------
def wav(seconds: float, rate: int = 16_000, channels: int = 1) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    tone = (np.sin(2 * np.pi * 220 * t) * 0.3).astype(np.float32)
    out = io.BytesIO()
    soundfile.write(out, np.stack([tone] * channels, axis=1), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


async def post_voice(
    srv: VoiceServer, body: dict | bytes, token: str | None = "s3cret", **headers
) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **headers}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as http, http.post(srv.url + "voice", data=data, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def get_config(srv: VoiceServer) -> dict:
    headers = {"Authorization": "Bearer s3cret"}
    async with aiohttp.ClientSession() as http, http.get(srv.url + "config", headers=headers) as r:
        return await r.json()


def upload(call: str, audio: bytes, **fields) -> dict:
    return {"call": call, "audio": base64.b64encode(audio).decode(), **fields}


@pytest.fixture
async def voice_server():
    made: list[VoiceServer] = []

    async def make(tts=None, **upload_options) -> VoiceServer:
        options = ServerOptions(port=0, token="s3cret", voice_upload=VoiceUploadOptions(**upload_options))
        srv = VoiceServer(panel_engines(["hello", "你好世界"], tts), echo, LoopOptions(), options)
        await srv.start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        await srv.stop()


async def connected(srv: VoiceServer) -> tuple[Client, dict]:
    client = Client(np.zeros(16_000, np.int16))
    status, answer = await client.connect(srv.url, "s3cret")
    assert status == 200
    await until(lambda: client.bot_frames > 2)
    return client, answer


async def test_a_recording_becomes_that_calls_voice_only(voice_server):
    srv = await voice_server()
    config = await get_config(srv)
    assert config["voice_upload"] == {"max_bytes": 2_000_000, "max_seconds": 30.0, "save": False}
    assert config["tts"]["settings"] == sorted(ALL) and config["tts"]["clone"] is True
    one, first = await connected(srv)
    two, second = await connected(srv)
    try:
        status, info = await post_voice(srv, upload(first["call"], wav(2.0, 48_000, 2), transcript="你好"))
        assert status == 200, info
        assert info["voice"] == "recording" and info["transcript"] == "你好" and info["seconds"] == 2.0
        assert info["transcript_from"] == "given" and info["saved"] is None
        mine, other = srv.session(first["session"]), srv.session(second["session"])
        assert mine.tts.voice == "cloned:1:你好" and other.tts.voice is None
        await until(lambda: any(e["type"] == "voice" for e in one.events))
        assert not any(e["type"] == "voice" for e in two.events)
        # without a transcript, the loop's ASR hears one (the fake ASR's next final)
        status, info = await post_voice(srv, upload(second["call"], wav(1.5)))
        assert status == 200 and info["transcript_from"] == "asr" and info["transcript"]
        assert other.tts.voice == f"cloned:2:{info['transcript']}" and mine.tts.voice == "cloned:1:你好"
    finally:
        await one.close()
        await two.close()


async def test_every_refusal(voice_server):
    srv = await voice_server(max_bytes=200_000, max_seconds=5.0, per_minute=0)
    client, answer = await connected(srv)
    call = answer["call"]
    try:
        cases = [
            (upload(call, wav(1.0)), None, {}, 401, "token"),
            (upload(call, wav(1.0)), "s3cret", {"Origin": "http://evil.example"}, 403, "cross-origin"),
            (upload(call, wav(4.0, 48_000)), "s3cret", {}, 413, "bytes"),  # 384 kB of audio
            (upload(call, wav(6.0, 8_000)), "s3cret", {}, 413, "6.0 s long"),
            (upload(call, b"RIFF not a wave file at all" * 10), "s3cret", {}, 415, "not a sound file"),
            (upload("A" * 22, wav(1.5)), "s3cret", {}, 404, "no live call"),
            (upload("7", wav(1.5)), "s3cret", {}, 400, "call id"),  # a session number is no call id
            (upload(call, wav(0.5)), "s3cret", {}, 422, "at least 1 s"),
            (upload(call, wav(1.5), save="mine"), "s3cret", {}, 403, "does not save"),
            ({"call": call, "audio": "%%%"}, "s3cret", {}, 400, "base64"),
            ({"call": call, "audio": "AAAA", "path": "/etc/passwd"}, "s3cret", {}, 400, "unknown fields"),
        ]
        for body, token, headers, status, words in cases:
            got, reply = await post_voice(srv, body, token, **headers)
            assert (got, words in reply.get("error", "")) == (status, True), (status, words, reply)
        got, reply = await post_voice(srv, b"x" * 300_000)  # cut off while read, whatever it is
        assert got == 413
        assert srv.session(answer["session"]).tts.voice is None  # nothing got through
    finally:
        await client.close()


async def test_uploads_are_rate_limited_per_address(voice_server):
    srv = await voice_server(per_minute=1, burst=2)
    for expected in (404, 404, 429):
        status, reply = await post_voice(srv, upload("B" * 22, wav(1.0)))
        assert status == expected, reply


async def test_saving_needs_the_operator_flag_and_a_new_name(voice_server):
    tts = PanelTts()
    srv = await voice_server(tts=tts, allow_saving=True)
    client, answer = await connected(srv)
    try:
        status, info = await post_voice(srv, upload(answer["call"], wav(1.5), transcript="hi", save="mine"))
        assert status == 200 and info["saved"] == "mine" and info["voice"] == "mine"
        assert tts.saved == {"mine": "cloned:1:hi"}
        session = srv.session(answer["session"])
        assert session.tts.voice == "mine" and "mine" in session.catalog["names"]
        status, reply = await post_voice(srv, upload(answer["call"], wav(1.5), transcript="x", save="mine"))
        assert status == 409 and "exists" in reply["error"]
        status, reply = await post_voice(srv, upload(answer["call"], wav(1.5), transcript="x", save="../up"))
        assert status == 400 and tts.saved.keys() == {"mine"}
    finally:
        await client.close()


async def test_an_engine_that_cannot_clone_says_so(voice_server):
    srv = await voice_server(tts=SineTts(voices=["alice"]))
    client, answer = await connected(srv)
    try:
        assert (await get_config(srv))["voice_upload"] is None
        status, reply = await post_voice(srv, upload(answer["call"], wav(1.5), transcript="hi"))
        assert status == 501 and "cannot make a voice" in reply["error"]
    finally:
        await client.close()


# -- cluster mode: the gateway hands the recording to the worker holding the call ---------------
class FakeActorMethod:
    def __init__(self, reply) -> None:
        self.reply, self.calls = reply, []

    def remote(self, *args):
        self.calls.append(args)

        async def answer():
            return self.reply

        return answer()


async def test_the_gateway_routes_a_recording_to_the_calls_worker():
    from voiceloop.cluster.gateway import ClusterCalls
    from voiceloop.cluster.records import WorkerRecord
    from voiceloop.cluster.worker import WorkerSpec
    from voiceloop.serve.guard import Refused
    from voiceloop.serve.tts_panel import Recording

    calls = ClusterCalls(WorkerSpec(LoopOptions()))
    ok = FakeActorMethod({"voice": "recording", "seconds": 2.0})
    refusing = FakeActorMethod({"status": 422, "error": "cannot make a voice of this recording: silent"})
    calls.workers = {
        "w1": WorkerRecord("w1", SimpleNamespace(use_voice=ok), state="ready"),
        "w2": WorkerRecord("w2", SimpleNamespace(use_voice=refusing), state="ready"),
    }
    calls.placed.update({"A" * 22: "w1", "B" * 22: "w2", "C" * 22: "gone"})
    recording = Recording(np.zeros(24_000, np.float32), 24_000, "hi")
    assert await calls.use_voice("A" * 22, recording) == {"voice": "recording", "seconds": 2.0}
    assert ok.calls == [("A" * 22, recording)] and not refusing.calls
    for call, status in (("B" * 22, 422), ("C" * 22, 404), ("D" * 22, 404)):
        with pytest.raises(Refused) as refused:
            await calls.use_voice(call, recording)
        assert refused.value.status == status


async def test_a_worker_answers_for_its_own_calls_only():
    from voiceloop.cluster.worker import VoiceWorker, WorkerSpec
    from voiceloop.serve.tts_panel import Recording

    worker = VoiceWorker("w1", WorkerSpec(LoopOptions()))
    recording = Recording(np.zeros(24_000, np.float32), 24_000, "hi")
    assert (await worker.use_voice("A" * 22, recording))["status"] == 404  # not started: no calls
    worker.peers = SimpleNamespace(call_session=lambda call: None, engines=panel_engines())
    reply = await worker.use_voice("A" * 22, recording)
    assert reply["status"] == 404 and "no live call" in reply["error"]
