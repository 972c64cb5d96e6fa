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
from ..loop import Engines, LoopOptions
from .guard import Guard, RateLimiter, Refused, check_options, is_loopback
from .history import new_call_id
from .metrics import ServeMetrics
from .peers import BadOffer, Peers, SessionObserver, loopback_candidates
from .tts_panel import Recording, apply_recording
from .voice_upload import VoiceUploadOptions, VoiceUploads

__all__ = ["Calls", "LocalCalls", "ServerOptions", "SessionObserver", "VoiceServer", "loopback_candidates"]

log = logging.getLogger(__name__)

#: the page's files (package data), served by name only: GET / and GET /<name>
WEB_FILES = {
    "index.html": "text/html",
    "call.js": "text/javascript",
    "app.js": "text/javascript",
    "panel.js": "text/javascript",
    "style.css": "text/css",
}
#: the page loads only its own files, is never framed (clickjacking the mic), and sends no Referer
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def web_file(name: str) -> str:
    """A file of the bundled page (``voiceloop/serve/web/``)."""
    return (resources.files("voiceloop.serve") / "web" / name).read_text(encoding="utf-8")


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
    #: every session sends {"type": "alive"} this often on its data channel (0: never) ...
    heartbeat_s: float = 0.5
    #: ... and the page offers again (same call, earlier turns kept) after this long without one
    failover_after_s: float = 2.0
    retry_after_s: int = 2  # what a 503 (no room for the call now) tells the page to wait
    #: POST /voice: a recording from the page as its call's voice (limits; saving off by default)
    voice_upload: VoiceUploadOptions = field(default_factory=VoiceUploadOptions)

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
        if self.heartbeat_s < 0 or (self.heartbeat_s and not self.failover_after_s > self.heartbeat_s):
            raise UserError("heartbeat must be >= 0 s and the failover wait longer than the heartbeat")
        if self.retry_after_s < 1:
            raise UserError(f"retry-after must be >= 1 s, got {self.retry_after_s}")
        if self.token is not None and not self.token.strip():
            raise UserError("the bearer token must not be empty")
        if self.offer_rate_per_min < 0 or self.offer_burst < 1:
            raise UserError("offer rate must be >= 0 per minute and the burst >= 1")
        self.allow_origins = check_options(
            self.host, self.token, self.insecure_open, self.public_url, self.allow_origins
        )


class Calls(Protocol):
    """Where the server's calls run: in this process (:class:`LocalCalls`) or on cluster workers
    (:class:`voiceloop.cluster.ClusterCalls`). The HTTP front is the same for both."""

    @property
    def sessions(self) -> int: ...

    def voices(self) -> dict[str, Any]: ...

    async def offer(self, sdp: str, call: str | None) -> dict[str, Any]:
        """The answer (``sdp``, ``type``, ``session``, ``call``); :class:`Refused` when it cannot be
        placed (503 + Retry-After: no room now) or the offer is bad (400)."""
        ...

    def collect(self, metrics: ServeMetrics) -> None:
        """Refresh the gauges that describe the moment (just before a scrape)."""
        ...

    async def stop(self) -> None: ...

    async def use_voice(self, call: str, recording: Recording) -> dict[str, Any]:
        """Make ``recording`` the voice of ``call`` (POST /voice); Refused 404 when no such call."""
        ...


class LocalCalls:
    """Calls in this process, at most ``max_sessions`` at once (503 beyond)."""

    def __init__(self, peers: Peers, options: ServerOptions, metrics: ServeMetrics) -> None:
        self.peers = peers
        self.options = options
        self._pending = 0  # offers being negotiated (count toward the cap)
        self._observe = metrics.observe_turn

    @property
    def sessions(self) -> int:
        return self.peers.sessions

    def voices(self) -> dict[str, Any]:
        return self.peers.voices()

    async def offer(self, sdp: str, call: str | None) -> dict[str, Any]:
        if call is not None:  # the page lost this call and offers again: the old session goes first
            await self.peers.close_call(call, "the call continues on a new connection")
        if self.peers.sessions + self._pending >= self.options.max_sessions:
            retry = {"Retry-After": str(self.options.retry_after_s)}
            raise Refused(503, f"server busy: {self.options.max_sessions} sessions already", retry)
        self._pending += 1
        try:
            answer = await self.peers.open(sdp, call or new_call_id())
        except BadOffer as exc:
            raise Refused(400, str(exc)) from None
        finally:
            self._pending -= 1
        session = self.peers.session(answer["session"])
        if session is not None:
            session.pipeline.add_observer(self._observe)
        return answer

    def collect(self, metrics: ServeMetrics) -> None:
        pass

    async def stop(self) -> None:
        await self.peers.close_all()

    async def use_voice(self, call: str, recording: Recording) -> dict[str, Any]:
        return await apply_recording(self.peers, call, recording, self.options.voice_upload.allow_saving)


class VoiceServer:
    """HTTP signalling in front of calls. ``await start()``, then ``await stop()``.

    ``calls``: where calls run (default: :class:`LocalCalls` on ``engines`` in this process)."""

    def __init__(
        self,
        engines: Engines | None,
        handler: Callable[..., Any] | None,
        loop_options: LoopOptions | None = None,
        options: ServerOptions | None = None,
        observer: SessionObserver | None = None,
        clock: Callable[[], float] | None = None,  # the offer rate limit's (tests); time.monotonic
        calls: Calls | None = None,
    ) -> None:
        self.loop_options = loop_options if loop_options is not None else LoopOptions()
        self.options = options if options is not None else ServerOptions()
        opts = self.options
        self.metrics = ServeMetrics()
        self.peers: Peers | None = None
        if calls is None:
            if engines is None or handler is None:
                raise TypeError("VoiceServer needs engines and a handler, or calls")
            self.peers = Peers(engines, handler, self.loop_options, opts, observer)
            calls = LocalCalls(self.peers, opts, self.metrics)
        self.calls = calls
        if opts.token is None and not is_loopback(opts.host):
            log.warning("serving %s with no token: anyone who reaches it can use the bot", opts.host)
        limiter = RateLimiter(opts.offer_rate_per_min, opts.offer_burst, clock or time.monotonic)
        self.guard = Guard(
            opts.host, opts.token, opts.public_url, opts.allow_origins, limiter, opts.max_body_bytes
        )
        self.uploads = VoiceUploads(self.guard, calls.use_voice, opts.voice_upload, clock)
        self._files = {name: web_file(name) for name in WEB_FILES}
        if self.options.page is not None:
            self._files["index.html"] = self.options.page
        self._runner: web.AppRunner | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.port: int | None = None
        self.app = web.Application(
            client_max_size=self.options.max_body_bytes, middlewares=[self.guard.middleware()]
        )
        self.app.router.add_get("/", self._page)
        for name in WEB_FILES:
            self.app.router.add_get(f"/{name}", self._page)
        self.app.router.add_get("/voices", self._voices)
        self.app.router.add_get("/config", self._config)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_post("/offer", self._offer)
        self.app.router.add_post("/voice", self.uploads.handle)
        if hasattr(calls, "drain"):  # calls on cluster workers: an operator may drain one
            self.app.router.add_get("/workers", self._workers)
            self.app.router.add_post("/drain", self._drain)

    @property
    def sessions(self) -> int:
        """Live calls."""
        return self.calls.sessions

    def session(self, sid: int) -> Any:
        """The live session with this id (the ``session`` field of the offer's answer; local calls)."""
        return self.peers.session(sid) if self.peers is not None else None

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
        await self.calls.stop()
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
        return self.calls.voices()

    async def _voices(self, request: web.Request) -> web.Response:
        self.guard.authorize(request)
        return web.json_response({k: v for k, v in self.voices().items() if k != "tts"})

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
        opts, voices = self.options, self.voices()
        body = {
            "ice_servers": ice,
            "max_say_chars": opts.max_say_chars,
            "voices": {k: v for k, v in voices.items() if k != "tts"},
            "tts": voices.get("tts"),  # the panel's knobs (voiceloop.serve.tts_panel)
            "voice_upload": self.uploads.config(voices.get("tts") or {}),
            "heartbeat_s": opts.heartbeat_s,
            "failover_after_s": opts.failover_after_s if opts.heartbeat_s else None,
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})  # TURN credentials

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus text format (:mod:`voiceloop.serve.metrics`); needs the token when there is one."""
        self.guard.authorize(request)
        self.metrics.sessions.set(self.calls.sessions)
        self.calls.collect(self.metrics)
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    async def _workers(self, request: web.Request) -> web.Response:
        """Each cluster worker: name, state, node, calls, headroom."""
        self.guard.authorize(request)
        return web.json_response(self.calls.status(), headers={"Cache-Control": "no-store"})  # type: ignore[attr-defined]

    async def _drain(self, request: web.Request) -> web.Response:
        """``{"worker": NAME, "grace_s": S}``: that worker takes no new calls and leaves once its calls
        end (or after S s). Answers at once (202); the drain goes on in the background."""
        self.guard.authorize(request)
        body = await self.guard.read_json(request)
        name, grace = body.get("worker"), body.get("grace_s")
        if not isinstance(name, str) or not (
            grace is None or (isinstance(grace, int | float) and grace >= 0)
        ):
            raise Refused(400, 'body must be {"worker": "<name>", "grace_s": <seconds, optional>}')
        if getattr(getattr(self.calls, "options", None), "attach", False):
            raise Refused(409, "drain workers on the gateway that started them")
        if name not in {row["worker"] for row in self.calls.status()}:  # type: ignore[attr-defined]
            raise Refused(404, f"no worker {name!r}")
        task = asyncio.get_running_loop().create_task(self.calls.drain(name, grace))  # type: ignore[attr-defined]
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return web.json_response({"worker": name, "draining": True}, status=202)

    async def _offer(self, request: web.Request) -> web.Response:
        """Checks first (:class:`Guard`: rate, token, body; Refused → its status), then a call."""
        self.guard.limit_offers(request)
        self.guard.authorize(request)
        sdp, call = await self.guard.read_offer(request)
        try:
            answer = await self.calls.offer(sdp, call)
        except Refused as refused:
            self.metrics.offers.labels("busy" if refused.status == 503 else "bad").inc()
            raise
        self.metrics.offers.labels("admitted").inc()
        return web.json_response(answer)
