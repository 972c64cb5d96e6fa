"""``voiceloop serve`` against hostile requests (issue 19): a real server on 127.0.0.1, raw HTTP.

Every hostile request gets its 4xx with a JSON ``{"error": ...}`` body and creates no session (the
observer never hears of one, no pipeline task runs). Then what legitimate clients still get, the
refusal to serve a network without a token, the token's sources, the offer rate limit on an injected
clock, and two attacks played by a real browser (a foreign page's text/plain POST, DNS rebinding).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from test_webrtc import Client, engines, loopback_only, pipeline_tasks, until  # noqa: F401 (fixture)

from voiceloop.cli import build_parser, main
from voiceloop.cli.serve import access_options
from voiceloop.dialogue import echo
from voiceloop.errors import UserError
from voiceloop.loop import LoopOptions
from voiceloop.serve.guard import RateLimiter, client_key, is_loopback
from voiceloop.serve.server import ServerOptions, VoiceServer

pytestmark = pytest.mark.timeout(90)
TOKEN = "s3cret"


class Recorder:
    """A SessionObserver that remembers every session the server started."""

    def __init__(self) -> None:
        self.started: list[int] = []

    def session_started(self, sid: int, pipeline: Any) -> None:
        self.started.append(sid)

    def session_ended(self, sid: int, pipeline: Any) -> None:
        pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Served:
    server: VoiceServer
    sessions: Recorder
    clock: FakeClock

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port


@pytest.fixture
async def serve():
    made: list[VoiceServer] = []

    async def make(**options: Any) -> Served:
        recorder, clock = Recorder(), FakeClock()
        server = VoiceServer(
            engines(), echo, LoopOptions(), ServerOptions(port=0, **options), recorder, clock=clock
        )
        await server.start()
        made.append(server)
        return Served(server, recorder, clock)

    yield make
    for server in made:
        await server.stop()


_OFFER: list[str] = []


async def offer_sdp() -> str:
    """A real aiortc offer (audio + the events channel), made once."""
    if not _OFFER:
        client = Client(np.zeros(320, np.int16))
        _OFFER.append((await client.offer())["sdp"])
        await client.close()
    return _OFFER[0]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw(port: int, head: list[str], body: bytes = b"", chunked: bool = False) -> Reply:
    """One HTTP request written byte for byte (any Host, or none), read to the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framing = ["Transfer-Encoding: chunked"] if chunked else [f"Content-Length: {len(body)}"]
    data = "\r\n".join([*head, *framing, "Connection: close", "", ""]).encode()
    if chunked:
        for i in range(0, len(body), 4096):
            piece = body[i : i + 4096]
            data += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        data += b"0\r\n\r\n"
    else:
        data += body
    writer.write(data)
    with contextlib.suppress(ConnectionError):  # refused before the body was read: the answer is there
        await writer.drain()
    answer = await reader.read()
    writer.close()
    head_bytes, _, content = answer.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return Reply(int(status_line.split()[1]), headers, content)


# -- the table ---------------------------------------------------------------------------------------
@dataclass
class Case:
    """A request against a fresh server: ``{port}`` in headers/path is the server's, ``OFFER`` in the
    body the real offer SDP; default headers make it a good offer unless overridden (None: left out)."""

    name: str
    status: int
    error: str  # a piece of the JSON error message
    body: str | bytes = '{"sdp": "OFFER", "type": "offer"}'
    headers: dict[str, str | None] = field(default_factory=dict)
    method: str = "POST"
    path: str = "/offer"
    options: dict[str, Any] = field(default_factory=dict)
    chunked: bool = False


def offer_json(**fields: Any) -> str:
    return json.dumps({"sdp": "OFFER", "type": "offer", **fields})


GOOD = offer_json()
EVIL = {"Origin": "http://evil.example"}
REBIND = {"Host": "evil.example:{port}"}
NO_AUTH: dict[str, str | None] = {"Authorization": None}
TOKEN_ON = {"token": TOKEN}
BIG = '{"sdp": "' + "a" * 70_000 + '", "type": "offer"}'  # over the 64 KiB default cap
# fmt: off
CASES = [
    # who is asking: Origin (a foreign page) and Host (DNS rebinding)
    Case("evil origin, text/plain", 403, "cross-origin", GOOD, {**EVIL, "Content-Type": "text/plain"}),
    Case("evil origin, json", 403, "cross-origin", GOOD, EVIL),
    Case("null origin (sandboxed page)", 403, "cross-origin", GOOD, {"Origin": "null"}),
    Case("malformed origin", 403, "cross-origin", GOOD, {"Origin": "not an origin"}),
    Case("origin with a path", 403, "cross-origin", GOOD, {"Origin": "http://127.0.0.1:{port}/x"}),
    Case("same host, other port", 403, "cross-origin", GOOD, {"Origin": "http://127.0.0.1:1"}),
    Case("evil preflight", 403, "cross-origin", b"", {**EVIL, "Access-Control-Request-Method": "POST"},
         "OPTIONS"),
    Case("rebinding: /offer", 403, "not a name", GOOD, REBIND),
    Case("rebinding: /config (TURN credentials)", 403, "not a name", b"", REBIND, "GET", "/config"),
    Case("rebinding: the page", 403, "not a name", b"", REBIND, "GET", "/"),
    Case("loopback Host, other port", 403, "not a name", GOOD, {"Host": "127.0.0.1:1"}),
    Case("Host without a port", 403, "not a name", GOOD, {"Host": "localhost"}),
    Case("malformed Host", 400, "Host", GOOD, {"Host": "127.0.0.1:port"}),
    Case("Host with credentials", 400, "Host", GOOD, {"Host": "user@127.0.0.1:{port}"}),
    # what is sent: content type, size, shape
    Case("text/plain (no preflight)", 415, "application/json", GOOD, {"Content-Type": "text/plain"}),
    Case("form content type", 415, "application/json", "sdp=x&type=offer",
         {"Content-Type": "application/x-www-form-urlencoded"}),
    Case("multipart", 415, "application/json", GOOD, {"Content-Type": "multipart/form-data; boundary=x"}),
    Case("no content type", 415, "application/json", GOOD, {"Content-Type": None}),
    Case("body over the cap", 413, "bytes", BIG),
    Case("chunked body over the cap", 413, "bytes", BIG, chunked=True),
    Case("60 KB of [", 400, "nested too deeply", "[" * 60_000),
    Case("deep objects", 400, "nested too deeply", '{"a":' * 12_000),
    Case("deep but parseable, no sdp", 400, "'sdp'", json.dumps({"x": [[[[[[1]]]]]], "type": "offer"})),
    Case("not JSON", 400, "not JSON", "{not json"),
    Case("not UTF-8", 400, "not JSON", b"\xff\xfe\xfa{"),
    Case("empty body", 400, "not JSON", b""),
    Case("JSON array", 400, "got an array", "[]"),
    Case("JSON string", 400, "got a string", '"offer"'),
    Case("JSON null", 400, "got null", "null"),
    Case("sdp a number", 400, "'sdp'", json.dumps({"sdp": 1, "type": "offer"})),
    Case("sdp a list", 400, "'sdp'", json.dumps({"sdp": ["v=0"], "type": "offer"})),
    Case("sdp blank", 400, "'sdp'", json.dumps({"sdp": "  ", "type": "offer"})),
    Case("sdp missing", 400, "'sdp'", json.dumps({"type": "offer"})),
    Case("type missing", 400, "'type'", json.dumps({"sdp": "OFFER"})),
    Case("type answer", 400, "'type'", offer_json(type="answer")),
    Case("type not a string", 400, "'type'", offer_json(type=["offer"])),
    Case("sdp garbage", 400, "SDP", json.dumps({"sdp": "v=0\r\n", "type": "offer"})),
    # the token
    Case("no token", 401, "bearer token", GOOD, NO_AUTH, options=TOKEN_ON),
    Case("wrong token", 401, "bearer token", GOOD, {"Authorization": "Bearer nope"}, options=TOKEN_ON),
    Case("token, wrong scheme", 401, "bearer token", GOOD, {"Authorization": f"Basic {TOKEN}"},
         options=TOKEN_ON),
    Case("token in the query only", 401, "not the address", GOOD, NO_AUTH, path=f"/offer?token={TOKEN}",
         options=TOKEN_ON),
    Case("/config without token", 401, "bearer token", b"", NO_AUTH, "GET", "/config", TOKEN_ON),
    Case("/voices, wrong token", 401, "bearer token", b"", {"Authorization": "Bearer x"}, "GET", "/voices",
         TOKEN_ON),
]
# fmt: on


async def send(served: Served, case: Case) -> Reply:
    port, sdp = served.port, await offer_sdp()
    headers: dict[str, str | None] = {"Host": "127.0.0.1:{port}", "Content-Type": "application/json"}
    if served.server.options.token is not None:
        headers["Authorization"] = f"Bearer {TOKEN}"
    headers.update(case.headers)
    lines = [f"{case.method} {case.path} HTTP/1.1"]
    lines += [f"{k}: {v.format(port=port)}" for k, v in headers.items() if v is not None]
    body = case.body if isinstance(case.body, bytes) else case.body.replace("OFFER", json.dumps(sdp)[1:-1])
    return await raw(port, lines, body.encode() if isinstance(body, str) else body, case.chunked)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_a_hostile_request_is_refused_and_opens_no_session(serve, case: Case) -> None:
    served = await serve(**case.options)
    reply = await send(served, case)
    assert reply.status == case.status, reply.body[:300]
    assert reply.headers["content-type"].startswith("application/json")
    assert case.error in reply.json()["error"]
    assert served.sessions.started == [] and served.server.sessions == 0 and not pipeline_tasks()
    assert "access-control-allow-origin" not in reply.headers
    if case.status == 401:
        assert reply.headers["www-authenticate"] == "Bearer"


async def test_the_same_requests_done_right_open_a_session(serve) -> None:
    """The table's baseline is a good offer: without the hostile part, it opens a session."""
    for options, headers in (
        ({}, {}),
        ({}, {"Origin": "http://127.0.0.1:{port}"}),  # the page itself
        ({}, {"Host": "localhost:{port}", "Origin": "http://localhost:{port}"}),
        ({}, {"Content-Type": "application/json; charset=utf-8"}),
        ({"token": TOKEN}, {}),
        ({"public_url": "https://bot.example/"}, {"Host": "bot.example", "Origin": "https://bot.example"}),
    ):
        served = await serve(**options)
        reply = await send(served, Case("good", 200, "", headers=headers))
        assert reply.status == 200, (options, headers, reply.body[:300])
        assert reply.json()["type"] == "answer" and served.sessions.started == [1]


async def test_ipv6_loopback_host_is_one_of_ours(serve) -> None:
    served = await serve()
    for host in ("[::1]:{port}", "localhost:{port}", "127.0.0.1:{port}"):
        reply = await send(served, Case("", 200, "", b"", {"Host": host}, "GET", "/voices"))
        assert reply.status == 200, host


async def test_an_allowed_origin_gets_cors_answers(serve) -> None:
    served = await serve(allow_origins=("https://app.example:8443",))
    origin = {"Origin": "https://app.example:8443"}
    preflight = await send(
        served, Case("", 204, "", b"", {**origin, "Access-Control-Request-Method": "POST"}, "OPTIONS")
    )
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example:8443"
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    reply = await send(served, Case("", 200, "", headers=origin))
    assert reply.status == 200 and reply.headers["access-control-allow-origin"] == "https://app.example:8443"
    assert served.sessions.started == [1]
    refused = await send(served, Case("", 415, "", headers={**origin, "Content-Type": "text/plain"}))
    assert refused.status == 415 and refused.headers["access-control-allow-origin"]  # the page may read why
    other = await send(served, Case("", 403, "", headers={"Origin": "https://app.example"}))  # other port
    assert other.status == 403 and served.sessions.started == [1]


async def test_page_and_config_headers(serve) -> None:
    served = await serve()
    page = await send(served, Case("", 200, "", b"", {}, "GET", "/"))
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    config = await send(served, Case("", 200, "", b"", {}, "GET", "/config"))
    assert config.headers["cache-control"] == "no-store"


# -- the offer rate --------------------------------------------------------------------------------
async def test_offers_per_address_are_rate_limited_on_the_servers_clock(serve) -> None:
    served = await serve(token=TOKEN, offer_burst=3, offer_rate_per_min=7.5)  # then one per 8 s
    wrong = Case("", 401, "", headers={"Authorization": "Bearer guess"})
    for _ in range(3):  # token guesses spend the bucket too
        assert (await send(served, wrong)).status == 401
    limited = await send(served, Case("", 429, ""))  # now even the right token waits
    assert limited.status == 429 and limited.headers["retry-after"] == "8"
    assert "too many offers" in limited.json()["error"] and served.sessions.started == []
    served.clock.now += 2.0
    limited = await send(served, Case("", 429, ""))
    assert limited.status == 429 and limited.headers["retry-after"] == "6"
    served.clock.now += 6.0
    assert (await send(served, Case("", 200, ""))).status == 200
    assert served.sessions.started == [1]
    assert (await send(served, Case("", 429, ""))).status == 429


def test_rate_limiter_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=60, burst=2, clock=clock, max_clients=8)
    assert [limiter.take("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("a") == pytest.approx(1.0)
    assert limiter.take("b") == 0.0  # another address has its own bucket
    clock.now += 0.5
    assert limiter.take("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    clock.now += 100.0  # a bucket refills to the burst, not beyond
    assert [limiter.take("a") for _ in range(3)][-1] > 0
    unlimited = RateLimiter(per_minute=0, burst=1, clock=clock)
    assert all(unlimited.take("a") == 0.0 for _ in range(100))


def test_rate_limiter_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=60, burst=2, clock=clock, max_clients=100)
    for i in range(1000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
        assert len(limiter._buckets) <= 101


def test_client_keys() -> None:
    assert client_key("127.0.0.1") == "127.0.0.1"
    assert client_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") != client_key("2001:db8::1")
    assert client_key(None) == "unknown"


# -- exposure ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.10", "bot.example"])
def test_a_network_address_needs_a_token_or_insecure_open(host: str, caplog) -> None:
    with pytest.raises(UserError, match=r"without a token.*--insecure-open"):
        ServerOptions(host=host)
    ServerOptions(host=host, token=TOKEN)
    options = ServerOptions(host=host, insecure_open=True)
    with caplog.at_level(logging.WARNING, logger="voiceloop.serve.server"):
        VoiceServer(engines(), echo, LoopOptions(), options)  # not started: nothing listens
    assert any("no token" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_needs_no_token(host: str) -> None:
    assert is_loopback(host)
    ServerOptions(host=host)


def test_serve_refuses_0_0_0_0_without_a_token_before_loading_models(capsys, monkeypatch) -> None:
    monkeypatch.delenv("VOICELOOP_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0", "--asr", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "without a token" in err and "--insecure-open" in err


@pytest.mark.parametrize(
    ("option", "value"),
    [("allow_origins", ("*",)), ("allow_origins", ("evil.example",)), ("allow_origins", ("http://a/b",)),
     ("public_url", "bot.example"), ("public_url", "ftp://bot.example"), ("public_url", "https://u:p@bot.example"),
     ("offer_burst", 0), ("offer_rate_per_min", -1)],
)  # fmt: skip
def test_bad_access_options(option: str, value: Any) -> None:
    with pytest.raises(UserError):
        ServerOptions(**{option: value})


# -- the token's sources -------------------------------------------------------------------------------
def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


async def test_token_from_the_environment_or_a_file(serve, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VOICELOOP_TOKEN", "from-env")
    assert access_options(serve_args())["token"] == "from-env"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert access_options(serve_args("--token-file", str(token_file)))["token"] == "from-file"
    assert access_options(serve_args("--token", "from-argv"))["token"] == "from-argv"
    monkeypatch.delenv("VOICELOOP_TOKEN")
    assert access_options(serve_args())["token"] is None
    # what the server then requires
    for argv, token in (((), "from-env"), (("--token-file", str(token_file)), "from-file")):
        monkeypatch.setenv("VOICELOOP_TOKEN", "from-env")
        served = await serve(**access_options(serve_args(*argv)))
        ok = await send(
            served, Case("", 200, "", b"", {"Authorization": f"Bearer {token}"}, "GET", "/voices")
        )
        refused = await send(
            served, Case("", 401, "", b"", {"Authorization": "Bearer other"}, "GET", "/voices")
        )
        assert (ok.status, refused.status) == (200, 401)


def test_token_source_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("VOICELOOP_TOKEN", raising=False)
    with pytest.raises(UserError, match="cannot read --token-file"):
        access_options(serve_args("--token-file", str(tmp_path / "missing")))
    for content in ("", "\n", "two\nlines", "has space"):
        (tmp_path / "t").write_text(content)
        with pytest.raises(UserError, match="alone on one line"):
            access_options(serve_args("--token-file", str(tmp_path / "t")))
    monkeypatch.setenv("VOICELOOP_TOKEN", " ")
    with pytest.raises(UserError, match="VOICELOOP_TOKEN is set but empty"):
        access_options(serve_args())
    with pytest.raises(SystemExit):
        serve_args("--token", "a", "--token-file", str(tmp_path / "t"))


# -- a real browser ------------------------------------------------------------------------------------
EVIL_PAGE = """<!doctype html><script>
fetch("http://127.0.0.1:%d/offer", {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
  body: JSON.stringify({sdp: %s, type: "offer"})})
  .then(() => { document.title = "sent"; }, (e) => { document.title = "failed " + e; });
</script>"""


async def test_a_foreign_page_and_dns_rebinding_in_chromium(serve, caplog) -> None:
    """What the issue found, played by Chromium: a page on another origin POSTs a real offer as
    text/plain (no preflight needed), and a name that resolves to 127.0.0.1 (DNS rebinding, mapped
    with --host-resolver-rules) asks for the page and /config. No session, every request refused."""
    from test_webrtc_browser import CHROMIUM, FLAGS, require_browser

    async_playwright = require_browser()
    served = await serve()
    evil = web.Application()
    html = EVIL_PAGE % (served.port, json.dumps(await offer_sdp()))

    async def evil_page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    evil.router.add_get("/", evil_page)
    runner = web.AppRunner(evil, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    evil_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rules = "--host-resolver-rules=MAP rebind.test 127.0.0.1"
    try:
        with caplog.at_level(logging.INFO, logger="voiceloop.serve.guard"):
            async with async_playwright() as p:
                browser = await p.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=[*FLAGS, rules]
                )
                try:
                    page = await browser.new_page()
                    await page.goto(f"http://127.0.0.1:{evil_port}/")
                    await page.wait_for_function("document.title !== ''")
                    assert await page.title() == "sent"  # the browser did send it (opaque answer)
                    await until(lambda: any("/offer" in r.getMessage() for r in caplog.records))
                    for path in ("/", "/config"):
                        response = await page.goto(f"http://rebind.test:{served.port}{path}")
                        assert response is not None and response.status == 403
                        assert "not a name of this server" in await response.text()
                finally:
                    await browser.close()
    finally:
        await runner.cleanup()
    refusals = [r.getMessage() for r in caplog.records if r.name == "voiceloop.serve.guard"]
    assert any("POST /offer" in m and f"'http://127.0.0.1:{evil_port}'" in m for m in refusals)
    assert served.sessions.started == [] and served.server.sessions == 0
