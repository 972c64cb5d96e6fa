"""What ``voiceloop serve`` refuses before any session exists (docs/serve-security.md says why).

A bot on 127.0.0.1 is still reachable from every web page its user visits: a page may POST a
``text/plain`` body cross-origin without a CORS preflight, and DNS rebinding makes the browser send a
foreign site's requests to our port with that site's name in ``Host``. So every request has its
``Host`` checked against the server's own names and its ``Origin`` (when a browser sends one)
against the page's own origin plus an allow-list; ``/offer`` then needs ``application/json``, a
bounded well-formed body, the bearer token when one is set, and a free slot in its client address's
token bucket. A refusal is a :class:`Refused`, answered as ``{"error": ...}`` with its status.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import UserError
from .history import CALL_ID

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: the methods and headers a cross-origin page on an allowed origin may use (CORS preflight answer)
CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
_JSON_KINDS[type(None)] = "null"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refused(Exception):
    """A request the server will not serve: an HTTP status, a one-line reason, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}

    def response(self) -> web.Response:
        return json_error(self.status, self.message, self.headers)


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


# -- names and origins ------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether a bind address or host name stays on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def split_host(value: str) -> tuple[str, int | None]:
    """A ``Host`` header's name (lowercase, IPv6 unbracketed) and port; ValueError when malformed."""
    parts = urlsplit("//" + value)
    if not value or "@" in value or parts.netloc != value or not parts.hostname:
        raise ValueError(f"malformed host {value!r}")
    return parts.hostname, parts.port  # .port raises ValueError on a bad port


def _netloc(name: str, port: int | None, scheme: str) -> str:
    host = f"[{name}]" if ":" in name else name
    return host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"


def parse_origin(value: str) -> str | None:
    """``scheme://host[:port]`` (lowercase, default port dropped), or None when ``value`` is none."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    extra = parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or extra:
        return None
    return f"{parts.scheme}://{_netloc(parts.hostname, port, parts.scheme)}"


def check_exposure(host: str, token: str | None, insecure_open: bool) -> None:
    """Refuse a server that anyone on the network could use, unless asked for in so many words."""
    if token is None and not insecure_open and not is_loopback(host):
        raise UserError(
            f"refusing to serve {host or 'every interface'} without a token (anyone who reaches it could "
            "use the bot): set VOICELOOP_TOKEN or --token-file, or pass --insecure-open"
        )


def check_options(
    host: str, token: str | None, insecure_open: bool, public_url: str | None, origins: Iterable[str]
) -> tuple[str, ...]:
    """Validate the guard's options (UserError); returns the allowed origins, normalised."""
    check_exposure(host, token, insecure_open)
    parts = urlsplit(public_url or "")
    if public_url is not None and parse_origin(f"{parts.scheme}://{parts.netloc}") is None:
        raise UserError(f"public URL must be http(s)://host[:port]/..., got {public_url!r}")
    normalised = []
    for origin in origins:
        parsed = parse_origin(origin)
        if parsed is None:
            raise UserError(f"allowed origin must be http(s)://host[:port], got {origin!r}")
        normalised.append(parsed)
    return tuple(normalised)


def client_key(address: str | None) -> str:
    """What the rate limit counts by: the IPv4 address, or the IPv6 /64 (one host owns a whole /64)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


# -- rate ------------------------------------------------------------------------------------------
class RateLimiter:
    """A token bucket per client: ``burst`` offers at once, then ``per_minute`` (0: no limit).

    Memory stays bounded: past ``max_clients`` buckets, full ones (equal to no bucket) are dropped,
    then the oldest (a flood from that many addresses resets some of them: the session cap still holds).
    """

    def __init__(
        self,
        per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 4096,
    ) -> None:
        self.rate, self.burst, self.clock, self.max_clients = per_minute / 60.0, burst, clock, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client → (tokens, when)

    def take(self, client: str) -> float:
        """0.0 when ``client`` may go ahead (a token spent), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, when = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_clients:
            self._prune(now)
        return 0.0

    def _prune(self, now: float) -> None:
        kept = {k: (t, w) for k, (t, w) in self._buckets.items() if t + (now - w) * self.rate < self.burst}
        while len(kept) > self.max_clients * 3 // 4:
            del kept[next(iter(kept))]
        self._buckets = kept


# -- the checks ------------------------------------------------------------------------------------
class Guard:
    """The request checks of one server; :meth:`bind` once its port is known."""

    def __init__(
        self,
        host: str,
        token: str | None,
        public_url: str | None,
        origins: Iterable[str],
        offers: RateLimiter,
        max_body_bytes: int,
    ) -> None:
        self.host, self.token, self.public_url = host, token, public_url
        self.origins = set(origins)
        self.offers = offers
        self.max_body_bytes = max_body_bytes
        self.port: int | None = None
        self._hosts: set[tuple[str, int | None]] = set()
        self._any_ip = not is_loopback(host)  # bound beyond loopback: any IP literal is ours
        if public_url is not None:
            parsed = urlsplit(public_url)
            self.origins.add(parse_origin(f"{parsed.scheme}://{parsed.netloc}") or "")

    def bind(self, port: int) -> None:
        """The names a ``Host`` header may carry: loopback names and the bind address with ``port``, and
        the public URL's host with its port. Without a port a Host means the scheme's default."""
        self.port = port
        names = {*LOOPBACK_NAMES, self.host.strip("[]").lower()}
        hosts = {(name, port) for name in names}
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            hosts.add((parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme]))
        self._hosts = hosts | {(name, None) for name, p in hosts if p in DEFAULT_PORTS.values()}

    def check_host(self, request: web.Request) -> None:
        value = request.headers.get("Host", "")
        try:
            name, port = split_host(value)
        except ValueError:
            raise Refused(400, "missing or malformed Host header") from None
        if (name, port) in self._hosts or (self._any_ip and _is_ip(name) and port in (self.port, None)):
            return
        raise Refused(
            403,
            f"Host {value!r} is not a name of this server (DNS rebinding?): open it by "
            f"127.0.0.1:{self.port}, or name its public address with --public-url",
        )

    def check_origin(self, request: web.Request) -> str | None:
        """None for no Origin or the page's own; an allowed other origin (it gets CORS headers)."""
        value = request.headers.get("Origin")
        if value is None:  # not a browser's cross-origin request (curl, aiortc clients, GET /)
            return None
        origin = parse_origin(value)
        if origin is not None:
            scheme = origin.partition(":")[0]
            name, port = split_host(request.headers["Host"])  # checked before
            if origin == f"{scheme}://{_netloc(name, port, scheme)}":
                return None
            if origin in self.origins:
                return origin
        raise Refused(403, f"cross-origin request from {value!r} refused (allow one with --allow-origin)")

    def authorize(self, request: web.Request) -> None:
        """The bearer token, when the server has one, from the Authorization header only."""
        if self.token is None:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return
        hint = " (send it in the Authorization header, not the address)" if "token" in request.query else ""
        raise Refused(401, f"missing or wrong bearer token{hint}", {"WWW-Authenticate": "Bearer"})

    def limit_offers(self, request: web.Request) -> None:
        wait = self.offers.take(client_key(request.remote))
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise Refused(
                429, f"too many offers from your address: retry in {retry} s", {"Retry-After": str(retry)}
            )

    async def _read_body(self, request: web.Request) -> Any:
        """A JSON body of bounded size, parsed (415 / 413 / 400 otherwise)."""
        if request.content_type != "application/json":
            raise Refused(415, f"Content-Type must be application/json, got {request.content_type}")
        too_big = Refused(413, f"request body over {self.max_body_bytes} bytes")
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise too_big
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_big from None
        try:
            return json.loads(body)
        except RecursionError:
            raise Refused(400, "body is not JSON: nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refused(400, f"body is not JSON: {exc}") from None

    async def read_json(self, request: web.Request) -> dict[str, Any]:
        """A JSON object body of bounded size."""
        data = await self._read_body(request)
        if not isinstance(data, dict):
            raise Refused(
                400, f"body must be a JSON object, got {_JSON_KINDS.get(type(data), 'something else')}"
            )
        return data

    async def read_offer(self, request: web.Request) -> tuple[str, str | None]:
        """The offer's SDP and call id, from a JSON body ``{"sdp": "...", "type": "offer"}`` of
        bounded size; ``"call"``: the id an earlier answer gave (the page offers again for a lost
        call), which must look like one (:data:`voiceloop.serve.history.CALL_ID`)."""
        offer = await self._read_body(request)
        shape = 'body must be {"sdp": "<offer SDP>", "type": "offer"}'
        if not isinstance(offer, dict):
            raise Refused(400, f"{shape}, got {_JSON_KINDS.get(type(offer), 'something else')}")
        sdp = offer.get("sdp")
        if not isinstance(sdp, str) or not sdp.strip():
            raise Refused(400, f"{shape}: 'sdp' must be a non-empty string")
        if offer.get("type") != "offer":
            raise Refused(400, f"{shape}: 'type' must be \"offer\"")
        call = offer.get("call")
        if call is not None and not (isinstance(call, str) and CALL_ID.fullmatch(call)):
            raise Refused(400, "'call' must be the call id an earlier answer gave")
        return sdp, call

    def middleware(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        """Host and Origin on every request; CORS answers for allowed other origins."""

        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            origin = None
            try:
                self.check_host(request)
                origin = self.check_origin(request)
                if origin is not None and request.method == "OPTIONS":  # a CORS preflight
                    response: web.StreamResponse = web.Response(status=204, headers=CORS_HEADERS)
                else:
                    response = await handler(request)
            except Refused as exc:
                log.info("refused %s %s from %s: %s", request.method, request.path, request.remote, exc)
                response = exc.response()
            if origin is not None:
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers["Access-Control-Expose-Headers"] = "Retry-After"
                response.headers["Vary"] = "Origin"
            return response

        return guard
