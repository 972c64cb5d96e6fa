"""``voiceloop serve --ray`` on a Ray cluster started by the test: a head and two 1-CPU nodes.

The workers load the bundled tiny ASR and the espeak-ng voice; callers are aiortc peers on loopback
(``tests/helpers/caller.py``) that behave like the page: they keep the call id, watch heartbeats and
offer again when a call goes silent, and wait out a 503. Timings (failover time, capacity) are
measured in ``benchmarks/cluster_bench.py``, not asserted here.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter

import aiohttp
import aioice.ice
import numpy as np
import pytest
from helpers.caller import Caller
from helpers.speech import espeak, require_espeak

from voiceloop.errors import UserError
from voiceloop.loop import LoopOptions
from voiceloop.serve.server import ServerOptions, VoiceServer

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from voiceloop.cluster import AdmissionOptions, ClusterCalls, ClusterOptions, WorkerSpec, connect  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TINY_ASR = "tests/fixtures/tiny-zh-asr"
#: two calls per worker, whatever this machine measures: the tests check placement, not capacity
TWO_PER_WORKER = AdmissionOptions(
    max_calls=2, target_busy=1.0, prior_cost_per_call=0.01, min_cost_per_call=0.01, max_lag_s=60
)


def loopback_hook():
    """Every Ray worker process gathers ICE candidates on 127.0.0.1 only (tests stay on loopback);
    made here so that Ray pickles it by value (workers cannot import this test module)."""

    def hook() -> None:
        import aioice.ice

        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

    return hook


@pytest.fixture(scope="module")
def cluster():
    require_espeak()
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        made.add_node(num_cpus=1)
    ray.init(
        address=made.address,
        namespace="voiceloop",
        log_to_driver=False,
        logging_level="ERROR",
        runtime_env={"worker_process_setup_hook": loopback_hook()},
    )
    # the workers cannot import this test module: its functions (the handler) travel by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield made
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()
    made.shutdown()


@pytest.fixture(autouse=True)
def loopback_peers(monkeypatch):
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def numbered_reply(text: str, ctx) -> str:
    """Says which turn of the conversation this is: a failed-over call must go on counting."""
    return f"第{sum(m.role == 'user' for m in ctx.history) + 1}轮"


def utterance() -> np.ndarray:
    silence = np.zeros(8000, np.int16)
    return np.concatenate([silence, espeak("你好", voice="cmn-latn-pinyin"), silence])


@pytest.fixture
async def gateway(cluster):
    made: list[VoiceServer] = []

    async def make(
        admission: AdmissionOptions = TWO_PER_WORKER, handler=numbered_reply, **server
    ) -> VoiceServer:
        options = ServerOptions(port=0, loopback_candidates_only=True, **server)
        spec = WorkerSpec(LoopOptions(asr=TINY_ASR, tts="espeak"), handler, server=options)
        calls = ClusterCalls(spec, ClusterOptions(workers=2, admission=admission, seed=7))
        await calls.start()
        srv = VoiceServer(None, None, options=options, calls=calls)
        await srv.start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        await srv.stop()
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert not [t for t in leftover if "voiceloop" in repr(t.get_coro())], (
        leftover
    )  # the gateway's tasks ended
    await until(lambda: ray.available_resources().get("CPU", 0) == ray.cluster_resources().get("CPU"))
    assert ray.util.list_named_actors(all_namespaces=True) == []  # no worker or history actor leaked


def ours_running() -> list[asyncio.Task]:
    """Tasks of voiceloop code still running in this process."""

    def ours(task: asyncio.Task) -> bool:
        code = getattr(task.get_coro(), "cr_code", None)
        return code is not None and "/voiceloop/" in code.co_filename

    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done() and ours(t)]


async def until(predicate, timeout: float = 120.0, why: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {why or predicate}"
        await asyncio.sleep(0.1)


async def hang_up(callers: list[Caller]) -> None:
    await asyncio.gather(*(c.close() for c in callers))


async def post_json(url: str, body: dict) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        return response.status, await response.text()


def workers(srv: VoiceServer) -> dict[str, dict]:
    return {row["worker"]: row for row in srv.calls.status()}


async def fresh_calls(srv: VoiceServer) -> int:
    """Live calls as the workers count them now (not the gateway's last poll)."""
    loads = await asyncio.gather(*(w.actor.load.remote() for w in srv.calls.workers.values()))
    return sum(load.calls for load, _, _ in loads)


async def test_calls_spread_and_a_full_cluster_refuses_then_admits(gateway):
    srv = await gateway()
    callers = [Caller(srv.url) for _ in range(4)]
    for caller in callers:
        assert await caller.start() == 200
    placed = Counter(c.answers[0]["worker"] for c in callers)
    assert sorted(placed.values()) == [2, 2], placed  # both workers took calls
    assert await fresh_calls(srv) == 4

    late = Caller(srv.url)
    assert await late.start(retry=False) == 503
    status, retry_after = late.refusals[0]
    assert status == 503 and retry_after is not None and int(retry_after) >= 1
    assert await fresh_calls(srv) == 4  # the refusal created no session anywhere

    async with aiohttp.ClientSession() as http, http.get(srv.url + "metrics") as response:
        text = await response.text()
    assert 'voiceloop_offers_total{result="busy"} 1.0' in text
    assert 'voiceloop_offers_total{result="admitted"} 4.0' in text
    assert 'voiceloop_worker_calls{worker="w1"}' in text and 'voiceloop_workers{state="ready"} 2.0' in text

    leaving = callers.pop(0)
    freed = leaving.answers[0]["worker"]
    await leaving.close()
    await until(lambda: workers(srv)[freed]["calls"] == 1, why="the freed slot in a load report")
    assert await late.start() == 200  # retried after Retry-After until admitted
    assert late.answers[-1]["worker"] == freed
    await hang_up([*callers, late])


async def test_two_gateways_share_the_workers_without_overbooking(gateway):
    """A second gateway attaches to the first one's workers; callers race through both at once, and
    the workers' reservations (reserve-then-accept) let in exactly their capacity."""
    owner = await gateway()
    options = ServerOptions(port=0, loopback_candidates_only=True)
    spec = WorkerSpec(LoopOptions(asr=TINY_ASR, tts="espeak"), numbered_reply, server=options)
    attached = ClusterCalls(spec, ClusterOptions(attach=True, admission=TWO_PER_WORKER, seed=11))
    await attached.start()
    second = VoiceServer(None, None, options=options, calls=attached)
    await second.start()
    try:
        assert set(workers(second)) == set(workers(owner))
        callers = [Caller((owner, second)[n % 2].url) for n in range(6)]
        statuses = await asyncio.gather(*(c.start(retry=False) for c in callers))
        assert sorted(statuses) == [200] * 4 + [503] * 2, statuses
        assert await fresh_calls(owner) == 4  # 2 workers x 2: never a fifth, whichever gateway asked
        status, _ = await post_json(second.url + "drain", {"worker": "w1"})
        assert status == 409  # the owner drains its workers
        await hang_up(callers)
    finally:
        await second.stop()
    assert set(workers(owner)) == {"w1", "w2"}  # the attached gateway left the workers running


async def test_a_call_survives_its_worker_node_with_its_turns(cluster, gateway):
    srv = await gateway()
    caller = Caller(srv.url, failover_after_s=srv.options.failover_after_s)
    assert await caller.start() == 200
    first = caller.answers[0]["worker"]
    caller.say(utterance())
    await until(lambda: caller.of_type("turn"), why="the first turn")
    assert caller.of_type("turn")[0]["reply"] == "第1轮"
    await until(lambda: srv.calls.placed and workers(srv)[first]["calls"] == 1, why="a load report")

    node_id = workers(srv)[first]["node"]
    (node,) = [n for n in cluster.worker_nodes if n.node_id == node_id]
    removed = time.monotonic()
    cluster.remove_node(node)
    await until(lambda: caller.of_type("resumed"), why="the call resumed on another worker")
    second = caller.answers[-1]["worker"]
    assert second != first and caller.answers[-1]["call"] == caller.answers[0]["call"]
    (resumed,) = caller.of_type("resumed")
    assert resumed["turns"] == 1 and resumed["messages"] == 2
    back = [t - removed for t in caller.listening_at if t > removed]
    print(f"listening again {back[0]:.2f} s after the node was removed")

    caller.say(utterance())
    await until(lambda: len(caller.of_type("turn")) == 2, why="a turn on the new worker")
    assert caller.of_type("turn")[1]["reply"] == "第2轮"  # the handler saw the earlier turn

    # the gateway goes on while workers come and go: the lost worker's replacement starts on a new node
    cluster.add_node(num_cpus=1)
    await until(lambda: sum(r["state"] == "ready" for r in workers(srv).values()) == 2, why="a replacement")
    others = [Caller(srv.url) for _ in range(2)]
    for other in others:
        assert await other.start() == 200
    assert {o.answers[0]["worker"] for o in others} - {first, second}, "the new worker takes calls"
    await hang_up([caller, *others])


async def test_a_drained_worker_finishes_its_call_and_leaves(gateway):
    srv = await gateway()
    caller = Caller(srv.url)
    assert await caller.start() == 200
    draining = caller.answers[0]["worker"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(srv.url + "drain", json={"worker": draining, "grace_s": 120}) as response,
    ):
        assert response.status == 202
    await until(lambda: workers(srv)[draining]["state"] == "draining", why="draining")
    newcomers = [Caller(srv.url) for _ in range(2)]
    for newcomer in newcomers:
        assert await newcomer.start() == 200
    assert {n.answers[0]["worker"] for n in newcomers} == set(workers(srv)) - {draining}

    caller.say(utterance())  # the call in progress goes on
    await until(lambda: caller.of_type("turn"), why="a turn while draining")
    assert draining in workers(srv)
    await caller.close()
    await until(lambda: draining not in workers(srv), why="the drained worker to leave")
    assert not caller.lost_at  # it was never cut
    await hang_up(newcomers)


async def test_a_hung_worker_is_found_by_liveness_and_replaced(gateway, tmp_path):
    """An async handler that blocks its event loop hangs the whole worker (alive to Ray, dead to
    callers): the page fails over on the silent heartbeat, the gateway's polls go unanswered and it
    kills and replaces the worker."""
    flag = tmp_path / "hung-once"

    async def blocking_reply(text: str) -> str:
        if not flag.exists():
            flag.touch()
            time.sleep(25)  # the bug: a blocking call on the event loop
        return "好的"

    srv = await gateway(handler=blocking_reply)
    caller = Caller(srv.url, failover_after_s=srv.options.failover_after_s)
    assert await caller.start() == 200
    hung = caller.answers[0]["worker"]
    caller.say(utterance())
    await until(lambda: len(caller.answers) == 2, why="the failover to a live worker")
    assert caller.answers[1]["worker"] != hung and caller.answers[1]["call"] == caller.answers[0]["call"]
    await until(lambda: hung not in workers(srv), why="the hung worker to be replaced")
    assert any(name not in (hung, caller.answers[1]["worker"]) for name in workers(srv))  # its replacement
    caller.say(utterance())
    await until(lambda: caller.of_type("turn"), why="a turn on the live worker")
    assert caller.of_type("turn")[-1]["reply"] == "好的"
    await hang_up([caller])


async def test_a_worker_that_cannot_load_its_models_is_named(gateway):
    spec = WorkerSpec(LoopOptions(asr="/nonexistent/asr-model", tts="espeak"), numbered_reply)
    calls = ClusterCalls(spec, ClusterOptions(workers=1))
    with pytest.raises(UserError) as failed:
        await calls.start()
    message = str(failed.value)
    assert "could not load its models" in message and "/nonexistent/asr-model" in message
    assert "on node" in message and "\n" not in message


def test_no_ray_or_no_cluster_is_one_line(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(UserError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1"):
        connect("127.0.0.1:1")
    with pytest.raises(UserError, match="HOST:PORT"):
        connect("not an address")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install 'voiceloop\[cluster\]'"):
        connect("auto")
