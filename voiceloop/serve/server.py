"""``voiceloop serve``'s core: an aiohttp signalling server, one conversation pipeline per WebRTC peer.

The browser POSTs its complete offer (aiortc has no trickle ICE) to ``/offer`` and gets the complete
answer back. Each peer gets its own pipeline (``WebRtcSource → vad → asr → dialogue → tts →
WebRtcSink``) built by :func:`voiceloop.loop.build_pipeline`, all sharing one :class:`Engines` (models
load once per process). Pipeline events go to the client's ``events`` data channel, one JSON object
per message (:func:`voiceloop.io.events.event_record`); the page sends typed text to speak and voice
changes back on the same channel (:mod:`voiceloop.serve.session` has the message formats).
``GET /`` is the page (``voiceloop/serve/web/``: plain HTML + JS, no build step), ``GET /voices`` what the
TTS engine offers.

Defaults are for a machine you trust: bind 127.0.0.1, no STUN/TURN (``iceServers=[]``; aiortc would
otherwise contact Google's STUN server). :mod:`voiceloop.serve.guard` checks every request first
(Host, Origin, bearer token, offers per client address, the offer's body; docs/serve-security.md);
exposing the server needs a token or ``insecure_open``, and sessions are bounded (503). A peer is dropped
when its connection fails or closes, its data channel closes (tab closed), it never connects, or its
microphone sends nothing for ``media_timeout_s`` (a vanished peer, long before ICE consent gives up).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from ..errors import UserError
from ..io.webrtc import WebRtcSink, WebRtcSource
from ..loop import Engines, LoopOptions, build_pipeline
from ..pipeline import Pipeline
from .guard import Guard, RateLimiter, Refused, check_options, is_loopback
from .session import Session, voice_catalog

log = logging.getLogger(__name__)

#: the page's files (package data), served by name only: GET / and GET /<name>
WEB_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
#: the page loads only its own files, is never framed (clickjacking the mic), and sends no Referer
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def web_file(name: str) -> str:
    """A file of the bundled page (``voiceloop/serve/web/``)."""
    return (resources.files("voiceloop.serve") / "web" / name).read_text(encoding="utf-8")


class SessionObserver(Protocol):
    """Told when a peer's pipeline is built and when it is gone (``voiceloop serve``'s log)."""

    def session_started(self, sid: int, pipeline: Pipeline) -> None: ...

    def session_ended(self, sid: int, pipeline: Pipeline) -> None: ...


def loopback_candidates(sdp: str) -> str:
    """The SDP without ICE candidates that are not on 127.0.0.1 (tests and single-machine demos)."""
    lines = sdp.split("\r\n") if "\r\n" in sdp else sdp.split("\n")
    kept = []
    for line in lines:
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) < 5 or fields[4] != "127.0.0.1":
                continue
        kept.append(line)
    return ("\r\n" if "\r\n" in sdp else "\n").join(kept)


@dataclass
class ServerOptions:
    """Where and for whom the server listens."""

    host: str = "127.0.0.1"  # beyond loopback: needs a token or insecure_open (UserError otherwise)
    port: int = 8080  # 0: any free port (see VoiceServer.port after start)
    token: str | None = None  # bearer token required on /offer, /voices, /config; None: open
    insecure_open: bool = False  # serve a non-loopback address without a token (logged as a warning)
    public_url: str | None = None  # the address users open (proxy, DNS name): its Host/Origin allowed
    allow_origins: tuple[str, ...] = ()  # other origins whose pages may call the API (CORS)
    offer_rate_per_min: float = 12.0  # offers per client address after a burst (429 beyond); 0: no limit
    offer_burst: int = 10
    max_sessions: int = 4
    max_body_bytes: int = 64 * 1024  # an SDP offer is a few KiB
    #: STUN/TURN servers for the peer connections: urls ("stun:host:port") or aiortc RTCIceServer
    ice_servers: list[Any] = field(default_factory=list)
    page: str | None = None  # what GET / returns; None: the bundled page (voiceloop/serve/web/index.html)
    #: a peer that is not connected this long after its offer is dropped (it vanished mid-handshake)
    connect_timeout_s: float = 20.0
    #: a connected peer whose microphone sends nothing this long is dropped (tab crashed, network
    #: gone: ICE consent would take ~30 s to notice); browsers send frames even when muted
    media_timeout_s: float = 10.0
    #: drop every ICE candidate of the offer that is not on 127.0.0.1 (loopback-only tests and demos;
    #: with aioice still gathering other interfaces, see tests/test_webrtc.py)
    loopback_candidates_only: bool = False
    max_say_chars: int = 500  # longest text the page may ask the bot to speak

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UserError(f"port must be in [0, 65535], got {self.port}")
        if self.max_sessions < 1:
            raise UserError(f"max sessions must be >= 1, got {self.max_sessions}")
        if self.max_body_bytes < 1024:
            raise UserError(f"max body size must be >= 1024 bytes, got {self.max_body_bytes}")
        if self.connect_timeout_s <= 0:
            raise UserError(f"connect timeout must be > 0 s, got {self.connect_timeout_s}")
        if self.media_timeout_s <= 0:
            raise UserError(f"media timeout must be > 0 s, got {self.media_timeout_s}")
        if not 1 <= self.max_say_chars <= 5000:
            raise UserError(f"max say chars must be in [1, 5000], got {self.max_say_chars}")
        if self.token is not None and not self.token.strip():
            raise UserError("the bearer token must not be empty")
        if self.offer_rate_per_min < 0 or self.offer_burst < 1:
            raise UserError("offer rate must be >= 0 per minute and the burst >= 1")
        self.allow_origins = check_options(
            self.host, self.token, self.insecure_open, self.public_url, self.allow_origins
        )


class VoiceServer:
    """HTTP signalling + per-peer pipelines. ``await start()``, then ``await stop()``."""

    def __init__(
        self,
        engines: Engines,
        handler: Callable[..., Any],
        loop_options: LoopOptions | None = None,
        options: ServerOptions | None = None,
        observer: SessionObserver | None = None,
        clock: Callable[[], float] | None = None,  # the offer rate limit's (tests); time.monotonic
    ) -> None:
        self.engines = engines
        self.handler = handler
        self.loop_options = loop_options if loop_options is not None else LoopOptions()
        self.options = options if options is not None else ServerOptions()
        self.observer = observer
        opts = self.options
        if opts.token is None and not is_loopback(opts.host):
            log.warning("serving %s with no token: anyone who reaches it can use the bot", opts.host)
        limiter = RateLimiter(opts.offer_rate_per_min, opts.offer_burst, clock or time.monotonic)
        self.guard = Guard(
            opts.host, opts.token, opts.public_url, opts.allow_origins, limiter, opts.max_body_bytes
        )
        self._files = {name: web_file(name) for name in WEB_FILES}
        if self.options.page is not None:
            self._files["index.html"] = self.options.page
        self._sessions: dict[int, Session] = {}
        self._pending = 0  # offers being negotiated (count toward the cap)
        self._next_id = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.app = web.Application(
            client_max_size=self.options.max_body_bytes, middlewares=[self.guard.middleware()]
        )
        self.app.router.add_get("/", self._page)
        for name in WEB_FILES:
            self.app.router.add_get(f"/{name}", self._page)
        self.app.router.add_get("/voices", self._voices)
        self.app.router.add_get("/config", self._config)
        self.app.router.add_post("/offer", self._offer)

    @property
    def sessions(self) -> int:
        """Live peer sessions."""
        return len(self._sessions)

    def session(self, sid: int) -> Session | None:
        """The live session with this id (the ``session`` field of the offer's answer)."""
        return self._sessions.get(sid)

    @property
    def url(self) -> str:
        host = self.options.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.options.host, self.options.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise UserError(f"cannot listen on {self.options.host}:{self.options.port}: {exc}") from exc
        self._runner = runner
        server = site._server  # aiohttp exposes the bound port only here
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.options.port
        self.guard.bind(self.port)

    async def stop(self) -> None:
        await asyncio.gather(*(self._close(s) for s in list(self._sessions.values())))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- HTTP ------------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> web.Response:
        name = request.path.lstrip("/") or "index.html"
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", **PAGE_HEADERS}
        return web.Response(text=self._files[name], content_type=WEB_FILES[name], headers=headers)

    def voices(self) -> dict[str, Any]:
        """What the TTS engine offers (``GET /voices``): default, ``seeds`` (``seed:N`` works), names."""
        return voice_catalog(self.engines.tts, self.loop_options.voice)

    async def _voices(self, request: web.Request) -> web.Response:
        self.guard.authorize(request)
        return web.json_response(self.voices())

    async def _config(self, request: web.Request) -> web.Response:
        """What the page needs before connecting: ICE servers (the browser needs them too), limits, voices."""
        self.guard.authorize(request)
        ice = []
        for server in self.options.ice_servers:
            if isinstance(server, str):
                ice.append({"urls": server})
            else:  # an RTCIceServer: TURN needs its credentials on the browser side as well
                entry = {"urls": server.urls, "username": server.username, "credential": server.credential}
                ice.append({k: v for k, v in entry.items() if v is not None})
        body = {"ice_servers": ice, "max_say_chars": self.options.max_say_chars, "voices": self.voices()}
        return web.json_response(body, headers={"Cache-Control": "no-store"})  # TURN credentials

    async def _offer(self, request: web.Request) -> web.Response:
        """Checks first (:class:`Guard`: rate, token, body; Refused → its status), then a session."""
        self.guard.limit_offers(request)
        self.guard.authorize(request)
        sdp = await self.guard.read_offer(request)
        if len(self._sessions) + self._pending >= self.options.max_sessions:
            raise Refused(503, f"server busy: {self.options.max_sessions} sessions already")
        self._pending += 1
        try:
            answer = await self._negotiate(sdp)
        except _BadOffer as exc:
            raise Refused(400, str(exc)) from None
        finally:
            self._pending -= 1
        return web.json_response(answer)

    # -- peers -----------------------------------------------------------------------------
    async def _negotiate(self, sdp: str) -> dict[str, Any]:
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

        servers = [
            s if isinstance(s, RTCIceServer) else RTCIceServer(urls=s) for s in self.options.ice_servers
        ]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        source, sink = WebRtcSource(), WebRtcSink()
        pipeline = build_pipeline(source, sink, self.engines, self.handler, self.loop_options)
        self._next_id += 1
        session = Session(
            self._next_id,
            pc,
            source,
            sink,
            pipeline,
            catalog=self.voices(),
            max_say_chars=self.options.max_say_chars,
        )
        pipeline.add_observer(session.send_event)
        self._wire(session)
        if self.options.loopback_candidates_only:
            sdp = loopback_candidates(sdp)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if not any(t.kind == "audio" for t in pc.getTransceivers()):
                raise _BadOffer("the offer SDP has no audio track (m=audio line)")
            pc.addTrack(sink.track)
            await pc.setLocalDescription(await pc.createAnswer())
        except _BadOffer:
            await pc.close()
            raise
        except Exception as exc:  # aiortc raises ValueError, AttributeError, ... on bad SDP
            await pc.close()
            raise _BadOffer(f"cannot use the offer SDP: {type(exc).__name__}: {exc}") from exc
        self._sessions[session.id] = session
        if self.observer is not None:
            self.observer.session_started(session.id, pipeline)
        session.task = asyncio.get_running_loop().create_task(
            self._run(session), name=f"voiceloop:peer{session.id}"
        )
        session.watchdog = asyncio.get_running_loop().call_later(
            self.options.connect_timeout_s, self._check_connected, session
        )
        local = pc.localDescription
        return {"sdp": local.sdp, "type": local.type, "session": session.id}

    def _wire(self, session: Session) -> None:
        pc = session.pc

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio" and session.source.track is None:
                session.source.attach(track)
            else:  # not ours to play: still drain it (its queue is unbounded)
                self._spawn(_drain(track))

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label != "events":
                return
            session.open_channel(channel)
            channel.on("open", session.flush_backlog)
            channel.on("close", lambda: self._spawn(self._close(session)))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state in ("failed", "closed"):
                self._spawn(self._close(session))
            elif state == "connected" and not session.closing:  # from now on, watch the audio
                if session.watchdog is not None:
                    session.watchdog.cancel()
                session.watchdog = asyncio.get_running_loop().call_later(
                    self.options.media_timeout_s, self._check_media, session, session.source.received
                )

    def _check_connected(self, session: Session) -> None:
        if session.closing:
            return
        if session.pc.connectionState != "connected":
            log.info("session %s: not connected after %.0f s", session.id, self.options.connect_timeout_s)
            self._spawn(self._close(session))

    def _check_media(self, session: Session, seen: int) -> None:
        """Every ``media_timeout_s``: has the peer's microphone sent anything since the last look?"""
        if session.closing:
            return
        received = session.source.received
        if received == seen:
            reason = f"no audio from the peer for {self.options.media_timeout_s:g} s"
            log.info("session %s: %s", session.id, reason)
            session.send({"type": "closing", "reason": reason})
            self._spawn(self._close(session))
            return
        session.watchdog = asyncio.get_running_loop().call_later(
            self.options.media_timeout_s, self._check_media, session, received
        )

    async def _run(self, session: Session) -> None:
        try:
            await session.pipeline.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: pipeline failed", session.id)
        finally:
            if not session.closing:
                self._spawn(self._close(session))

    async def _close(self, session: Session) -> None:
        """Tear a session down once: cancel its pipeline, close the connection, forget it."""
        if session.closing:
            return
        session.closing = True
        if session.watchdog is not None:
            session.watchdog.cancel()
        task = session.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await session.pc.close()  # the pipeline's stages closed their engine sessions as it ended
        if self._sessions.pop(session.id, None) is not None and self.observer is not None:
            try:
                self.observer.session_ended(session.id, session.pipeline)
            except Exception:
                log.exception("session %s: the session observer failed", session.id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _BadOffer(Exception):
    pass


async def _drain(track: Any) -> None:
    from aiortc.mediastreams import MediaStreamError

    try:
        while True:
            await track.recv()
    except MediaStreamError:
        pass
