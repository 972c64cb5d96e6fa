"""Calls that outlive connections, /metrics, and the cluster routes' refusals (no Ray needed here).

A call re-offered with its id resumes its turns; a malformed call id is refused; ``/metrics`` needs the
token; ``/drain`` and ``/workers`` (only with calls on a cluster) check token, content type, body and
worker name before anything drains.
"""

from __future__ import annotations

import asyncio
import threading
import time

import aiohttp
import aioice.ice
import pytest
from helpers.caller import Caller
from helpers.fakes import FakeAsr, FakeTts

from voiceloop.cli.serve import ice_server
from voiceloop.compute import ComputeLane, LaneMeter
from voiceloop.dialogue import echo
from voiceloop.errors import UserError
from voiceloop.loop import Engines, LoopOptions
from voiceloop.serve.guard import Refused
from voiceloop.serve.history import CallBook
from voiceloop.serve.server import ServerOptions, VoiceServer

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def engines() -> Engines:
    return Engines(FakeAsr(["hello"], final_delay=0.05), FakeTts(first_delay=0.05, chunk_delay=0.02))


@pytest.fixture
async def server():
    made: list[VoiceServer] = []

    async def make(calls=None, **options) -> VoiceServer:
        opts = ServerOptions(port=0, **options)
        srv = VoiceServer(engines() if calls is None else None, echo, LoopOptions(), opts, calls=calls)
        await srv.start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        await srv.stop()


async def until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


async def request(method: str, url: str, **kwargs) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.request(method, url, **kwargs) as response:
        return response.status, await response.text()


async def test_a_lost_connection_resumes_its_call_with_the_turns_done(server):
    srv = await server()
    caller = Caller(srv.url, failover_after_s=1.0)
    assert await caller.start() == 200
    await until(lambda: caller.pc.sctp is not None and caller.of_type("session"))
    await until(lambda: srv.peers.live() and srv.peers.live()[0].channel is not None)
    srv.peers.live()[0].dialogue.say("first reply")  # a bot turn: checkpointed when it ends
    await until(lambda: caller.of_type("turn"))
    first_call = caller.answers[0]["call"]

    (session,) = srv.peers.live()
    await srv.peers.close(session)  # the connection dies without a word (as when a process dies)
    await until(lambda: caller.of_type("resumed"))
    (resumed,) = caller.of_type("resumed")
    assert resumed["call"] == first_call and resumed["turns"] == 1
    (now,) = srv.peers.live()
    assert [m.text for m in now.dialogue.history] == ["first reply"]
    assert caller.answers[-1]["call"] == first_call and len(caller.answers) == 2

    await caller.close()  # a hang-up (data channel closed): the checkpoint goes too
    await until(lambda: srv.sessions == 0)
    assert await srv.peers.history.get(first_call) == []


async def test_a_malformed_call_id_is_refused_and_opens_nothing(server):
    srv = await server()
    for call in ("short", "x" * 65, "bad id with spaces!!", 42, ["a"]):
        body = {"sdp": "v=0\r\n", "type": "offer", "call": call}
        status, text = await request("POST", srv.url + "offer", json=body)
        assert status == 400 and "call" in text, (call, status, text)
    assert srv.sessions == 0


async def test_metrics_need_the_token_and_count_offers(server):
    srv = await server(token="s3cret")
    status, _ = await request("GET", srv.url + "metrics")
    assert status == 401
    bad = {"sdp": "v=0\r\n", "type": "offer"}
    headers = {"Authorization": "Bearer s3cret"}
    status, _ = await request("POST", srv.url + "offer", json=bad, headers=headers)
    assert status == 400
    status, text = await request("GET", srv.url + "metrics", headers=headers)
    assert status == 200
    assert "voiceloop_sessions 0.0" in text and 'voiceloop_offers_total{result="bad"} 1.0' in text
    assert "voiceloop_voice_to_voice_seconds_bucket" in text


class FakeCluster:
    """The cluster-only surface of a Calls backend: status and drain."""

    def __init__(self) -> None:
        self.drained: list[tuple[str, float | None]] = []

    sessions = 0

    def voices(self) -> dict:
        return {"default": None, "seeds": False, "names": []}

    async def offer(self, sdp: str, call: str | None) -> dict:
        raise Refused(503, "no worker has room", {"Retry-After": "2"})

    def collect(self, metrics) -> None:
        pass

    async def stop(self) -> None:
        pass

    def status(self) -> list[dict]:
        return [{"worker": "w1", "state": "ready", "calls": 0}]

    async def drain(self, name: str, grace_s: float | None = None) -> int:
        self.drained.append((name, grace_s))
        return 0

    async def use_voice(self, call: str, recording) -> dict:
        raise Refused(404, "no such call")


async def test_drain_and_workers_refuse_what_they_must(server):
    cluster = FakeCluster()
    srv = await server(calls=cluster, token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    assert (await request("GET", srv.url + "workers"))[0] == 401
    assert (await request("POST", srv.url + "drain", json={"worker": "w1"}))[0] == 401
    cases = [
        ({"data": "worker=w1", "headers": {**auth, "Content-Type": "text/plain"}}, 415),
        ({"data": "[" * 5000, "headers": {**auth, "Content-Type": "application/json"}}, 400),
        ({"json": ["w1"], "headers": auth}, 400),
        ({"json": {"worker": 1}, "headers": auth}, 400),
        ({"json": {"worker": "w1", "grace_s": -5}, "headers": auth}, 400),
        ({"json": {"worker": "w9"}, "headers": auth}, 404),
    ]
    for kwargs, expected in cases:
        status, text = await request("POST", srv.url + "drain", **kwargs)
        assert status == expected, (kwargs, status, text)
    assert cluster.drained == []  # nothing drained by a refused request
    status, text = await request("GET", srv.url + "workers", headers=auth)
    assert status == 200 and '"w1"' in text
    status, _ = await request("POST", srv.url + "drain", json={"worker": "w1", "grace_s": 30}, headers=auth)
    assert status == 202
    await until(lambda: cluster.drained == [("w1", 30)])
    offer = {"sdp": "v=0\r\n", "type": "offer"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(srv.url + "offer", json=offer, headers=auth) as response,
    ):
        assert response.status == 503 and response.headers["Retry-After"] == "2"


async def test_a_single_server_has_no_cluster_routes(server):
    srv = await server()
    assert (await request("GET", srv.url + "workers"))[0] == 404  # GET /<name> serves only the page's files
    assert (await request("POST", srv.url + "drain", json={"worker": "w1"}))[0] in (404, 405)


def test_turn_servers_take_their_credentials_apart():
    assert ice_server("stun:stun.example.org:3478") == "stun:stun.example.org:3478"
    turn = ice_server("turn:bob:pa:ss@turn.example.org:3478")
    assert (turn.urls, turn.username, turn.credential) == ("turn:turn.example.org:3478", "bob", "pa:ss")
    with pytest.raises(UserError):
        ice_server("turn:bob@turn.example.org:3478")


def test_call_book_forgets_by_age_and_by_count():
    now = [0.0]
    book = CallBook(max_calls=2, ttl_s=10.0, clock=lambda: now[0])
    book.put("a" * 16, [("user", "hi", 1)])
    book.put("b" * 16, [("user", "yo", 2)])
    book.put("c" * 16, [("user", "hey", 3)])
    assert book.get("a" * 16) == [] and book.get("c" * 16) == [("user", "hey", 3)]  # over the count
    now[0] = 11.0
    assert book.get("c" * 16) == [] and len(book) == 0  # over the age


def test_lane_meter_reports_busy_fraction_and_wait():
    lane = ComputeLane("meter")
    now = [0.0]
    meter = LaneMeter([lane], clock=lambda: now[0])
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait()

    blocker = lane._submit(block)
    started.wait()
    waited = lane._submit(lambda: None)  # queued behind the blocker
    time.sleep(0.05)  # the blocker runs, the second job waits: both at least this long
    release.set()
    waited.result()
    blocker.result()
    now[0] = 0.1  # the meter's window: 0.1 s on its clock
    busy, wait = meter.sample()
    assert 0.5 <= busy <= 1.0 and wait >= 0.05
    now[0] = 0.2
    assert meter.sample() == (0.0, 0.0)  # nothing ran since
    lane.close()
