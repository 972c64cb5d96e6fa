"""Cluster benchmarks (``voiceloop serve --ray``): a node's capacity, the Ray path's overhead, failover time.

* ``--capacity``: one 2-CPU Ray head (started here) holding a gateway's one worker (``worker_cpus=2``,
  full-size int8 models), against a plain ``VoiceServer`` with today's fixed ``max_sessions=4`` on the same
  models, the two alternating per offered load. Callers arrive one every 1-2 s (seeded) and speak
  ``--turns`` utterances; a refused one (503) waits Retry-After and offers again for up to ``--wait-s``.
  Goal: admitted callers' p95 within 1.5x the lone caller's, no more underruns per reply.
* ``--overhead``: one caller through gateway + worker vs a ``VoiceServer`` in this process (tiny models),
  alternating calls of 2 turns: voice to voice p50 and offer → answer.
* ``--failover``: a head and two 1-CPU nodes (tiny models); the caller's worker's node is removed mid-call
  ``--kills`` times, a node added back each time: kill → re-offer, → listening, → next bot audio.

    python benchmarks/cluster_bench.py --capacity [--loads 1,2,4,8,12,16] [--target-busy 0.7] [--modes ...]
    python benchmarks/cluster_bench.py --overhead [--rounds 5] | --failover [--kills 10]

Writes ``benchmarks/results/cluster_{capacity,overhead,failover}.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import finish, machine_info, print_table
from voice_to_voice import FALLBACK_REPLY, UTTERANCES
from webrtc_sessions import SILENT_PEAK, conversation, model_paths, pct, talk

HERE = Path(__file__).resolve().parent
GOAL = {True: "pass", False: "fail", None: "-"}
RESULTS = HERE / "results"


def handler(text: str) -> str:
    """webrtc_sessions.py's fixed short reply (defined in ``__main__``: Ray pickles it by value)."""
    return FALLBACK_REPLY


def loopback() -> None:
    """ICE candidates on 127.0.0.1 only: the callers, this process and (the setup hook) Ray's workers."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


def ray_init(address: str | None = None, cpus: int | None = None) -> Any:
    import ray

    loopback()
    extra = {} if address else {"num_cpus": cpus, "include_dashboard": False}  # "local": never someone's
    ray.init(address=address or "local", namespace="voiceloop", log_to_driver=False, logging_level="ERROR",
             runtime_env={"worker_process_setup_hook": loopback}, **extra)  # fmt: skip
    return ray


def loop_options(kind: str, args: argparse.Namespace, threads: int) -> Any:
    from voiceloop.loop import LoopOptions

    asr, tts = model_paths(kind, args.cache)
    return LoopOptions(asr=str(asr), tts=str(tts), precision="int8", tts_max_seconds=args.reply_max_s,
                       asr_threads=threads, tts_threads=threads)  # fmt: skip


def server_options(**extra: Any) -> Any:
    from voiceloop.serve.server import ServerOptions

    return ServerOptions(
        port=0, loopback_candidates_only=True, media_timeout_s=60, offer_rate_per_min=0, **extra
    )


async def gateway(
    options: Any,
    server: Any,
    workers: int,
    cpus: float,
    target_busy: float | None,
    overlap: float | None = None,
) -> Any:
    """A VoiceServer whose calls go to Ray workers (their models loaded when this returns)."""
    from voiceloop.cluster import AdmissionOptions, ClusterCalls, ClusterOptions, WorkerSpec
    from voiceloop.serve.server import VoiceServer

    admission = AdmissionOptions(
        target_busy=target_busy or AdmissionOptions().target_busy, overlap_risk=overlap
    )
    spec = WorkerSpec(options, handler, server=server)
    calls = ClusterCalls(spec, ClusterOptions(workers=workers, worker_cpus=cpus, admission=admission, seed=0))
    await calls.start()
    srv = VoiceServer(None, None, options=server, calls=calls)
    await srv.start()
    return srv


# -- callers (a child process) -------------------------------------------------------------------------


async def callers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    import aiohttp

    loopback()
    audio, ends = conversation(spec["turns"], spec["gap_s"])

    async def one(i: int, delay: float, http: aiohttp.ClientSession) -> dict[str, Any]:
        await asyncio.sleep(delay)
        return await talk(spec["url"], audio, ends, http, spec["tail_s"], spec["wait_s"], spec["seed"] + i)

    async with aiohttp.ClientSession() as http:
        return await asyncio.gather(*(one(i, d, http) for i, d in enumerate(spec["delays"])))


async def run_callers(url: str, delays: list[float], turns: int, args: argparse.Namespace) -> list:
    """The callers' results (each: v2v, turn events, offer_s, refusals, waited_s; or error)."""
    spec = {"url": url, "delays": delays, "turns": turns, "gap_s": args.gap_s, "tail_s": args.tail_s}
    spec |= {"wait_s": args.wait_s if len(delays) > 1 else 0.0, "seed": args.seed}
    path = args.cache / "cluster-callers.json"
    path.write_text(json.dumps(spec))
    child = await asyncio.create_subprocess_exec(sys.executable, __file__, "--callers", str(path))
    if await child.wait():
        raise RuntimeError(f"the callers' process failed ({child.returncode})")
    return json.loads(path.read_text())


def summary(peers: list[dict[str, Any]]) -> dict[str, Any]:
    """Admitted / refused callers and the admitted callers' voice to voice and underruns."""
    admitted = [p for p in peers if "error" not in p]
    heard = [v for p in admitted for v in p["v2v"] if v is not None]
    turns = [t for p in admitted for t in p["turns"] if not t.get("discarded")]
    server = [t["durations"]["voice_to_voice"] for t in turns if t["durations"].get("voice_to_voice")]
    offers = [p["offer_s"] for p in admitted]
    counts = [[(t.get("counters") or {}).get("underruns", 0) for t in p["turns"]] for p in admitted]
    underruns = sum(max(c, default=0) for c in counts)
    return {
        "offered": len(peers),
        "admitted": len(admitted),
        "refused": sum(bool(p.get("refusals")) for p in peers),
        "admitted_after_waiting": sum(bool(p.get("refusals")) for p in admitted),
        "never_admitted": len(peers) - len(admitted),
        "turns": sum(len(p["v2v"]) for p in admitted),
        "answered": len(heard),
        "v2v_peer": {"p50": pct(heard, 50), "p95": pct(heard, 95)},
        "v2v_server": {"p50": pct(server, 50), "p95": pct(server, 95)},
        "offer_s": {"p50": pct(offers, 50), "p95": pct(offers, 95)},
        "underruns_per_reply": round(underruns / len(turns), 3) if turns else None,
    }


# -- capacity ------------------------------------------------------------------------------------------


async def watch(srv: Any, meter: Any, samples: list[dict[str, Any]]) -> None:
    """Every second: live calls and the load (the worker's report for a gateway; the lanes for a server)."""
    from voiceloop.cluster.admission import headroom

    while True:
        await asyncio.sleep(1.0)
        if meter is not None:
            busy, wait = meter.sample()
            samples.append({"calls": srv.sessions, "busy": round(busy, 3), "lag_s": round(wait, 3)})
            continue
        for w in srv.calls.workers.values():
            if (load := w.load) is not None:
                room = headroom(load, srv.calls.options.admission)
                sample = {"calls": load.calls, "busy": round(load.busy, 3), "lag_s": round(load.lag_s, 3)}
                samples.append({**sample, "cost_per_call": load.cost_per_call, "headroom": room})


async def one_load(srv: Any, mode: str, count: int, args: argparse.Namespace, meter: Any) -> dict[str, Any]:
    rng = random.Random(args.seed * 1000 + count)
    delays = [0.0, *itertools.accumulate(rng.uniform(1.0, 2.0) for _ in range(count - 1))]
    samples: list[dict[str, Any]] = []
    watcher = asyncio.get_running_loop().create_task(watch(srv, meter, samples))
    turns = args.lone_turns if count == 1 else args.turns
    try:
        peers = await run_callers(srv.url, delays, turns, args)
    finally:
        watcher.cancel()
    await wait_for(lambda: not srv.sessions, 60)  # a worker's count comes with its load reports
    live = [s for s in samples if s["calls"]]
    costs = [s["cost_per_call"] for s in samples if s.get("cost_per_call") is not None]
    row = {"mode": mode, **summary(peers), "peak_calls": max((s["calls"] for s in samples), default=0)}
    row["busy_mean"] = round(float(np.mean([s["busy"] for s in live])), 3) if live else None
    if meter is None:  # the headroom the gateway saw once the calls ended (the last window's busy in it)
        row["headroom_idle"] = sum(w["headroom"] for w in srv.calls.status())
    row["lag_max_s"] = max((s["lag_s"] for s in samples), default=None)
    row["cost_per_call"] = round(costs[-1], 3) if costs else None
    row["busy_per_call"] = round(float(np.mean([s["busy"] / s["calls"] for s in live])), 3) if live else None
    row["samples"] = samples
    print({k: v for k, v in row.items() if k != "samples"}, file=sys.stderr)
    return row


def judge(rows: list[dict[str, Any]]) -> None:
    """Each row against its mode's lone caller: p95 (peer and server) within 1.5x, underruns no more."""
    lone = {r["mode"]: r for r in rows if r["offered"] == 1}
    for row in rows:
        base = lone.get(row["mode"])
        row["goal"], row["p95_vs_lone"] = None, {"v2v_peer": None, "v2v_server": None}
        if base is None or base is row or not row["admitted"]:
            continue
        ratios = {}
        for side in ("v2v_peer", "v2v_server"):
            mine, theirs = row[side]["p95"], base[side]["p95"]
            ratios[side] = round(mine / theirs, 2) if mine is not None and theirs else None
        row["p95_vs_lone"] = ratios
        under = (row["underruns_per_reply"] or 0) <= (base["underruns_per_reply"] or 0) + 1e-9
        fast = all(r is not None and r <= 1.5 for r in ratios.values())
        row["goal"] = bool(fast and under and row["answered"] == row["turns"])


async def capacity(args: argparse.Namespace) -> dict[str, Any]:
    from voiceloop.cluster import AdmissionOptions
    from voiceloop.compute import LaneMeter
    from voiceloop.loop import load_engines
    from voiceloop.serve.server import VoiceServer

    ray_init(cpus=2)
    options = loop_options("full", args, threads=2)
    target = args.target_busy or AdmissionOptions().target_busy
    overlap = args.overlap_risk
    srv = (
        await gateway(options, server_options(), 1, 2.0, target, overlap)
        if "measured" in args.modes
        else None
    )
    engines = await asyncio.to_thread(load_engines, options) if "fixed" in args.modes else None
    rows: list[dict[str, Any]] = []
    for count in args.loads:  # the modes alternate, so both see the same background load
        if srv is not None:
            mode = f"measured, target_busy {target}" + (f", overlap_risk {overlap}" if overlap else "")
            rows.append(await one_load(srv, mode, count, args, None))
        if engines is not None:
            plain = VoiceServer(engines, handler, options, server_options(max_sessions=4))
            await plain.start()
            meter = LaneMeter([*engines.asr.lanes, *engines.tts.lanes])
            rows.append(await one_load(plain, "fixed max_sessions=4", count, args, meter))
            await plain.stop()
    if srv is not None:
        await srv.stop()
    if engines is not None:
        engines.close()
    judge(rows)
    columns = ["mode", "offered", "admitted", "refused", "never in", "answered", "v2v peer", "v2v server"]
    columns += ["p95 / lone's", "underruns/reply", "busy/call", "cost/call", "goal"]
    table = [[r["mode"], r["offered"], r["admitted"], r["refused"], r["never_admitted"],
              f"{r['answered']}/{r['turns']}", pair(r["v2v_peer"]), pair(r["v2v_server"]),
              "{v2v_peer} / {v2v_server}".format(**r["p95_vs_lone"]), r["underruns_per_reply"],
              r["busy_per_call"], r["cost_per_call"], GOAL[r["goal"]]] for r in rows]  # fmt: skip
    print_table("Capacity of one 2-CPU node (full-size int8 models): v2v s p50 / p95", columns, table)
    keys = ("loads", "turns", "lone_turns", "gap_s", "tail_s", "wait_s", "reply_max_s", "seed")
    params = {k: getattr(args, k) for k in keys}
    params = {**params, "target_busy": target, "overlap_risk": overlap, "arrivals_every_s": [1, 2]}
    return {"params": params, "rows": rows}


def pair(d: dict[str, Any]) -> str:
    return "-" if d["p50"] is None else f"{d['p50']:.2f} / {d['p95']:.2f}"


# -- overhead ------------------------------------------------------------------------------------------


async def overhead(args: argparse.Namespace) -> dict[str, Any]:
    from voiceloop.loop import load_engines
    from voiceloop.serve.server import VoiceServer

    ray_init(cpus=2)
    options = loop_options("tiny", args, threads=2)
    engines = await asyncio.to_thread(load_engines, options)
    servers = {"ray": await gateway(options, server_options(), 1, 2.0, None)}
    servers["direct"] = VoiceServer(engines, handler, options, server_options())
    await servers["direct"].start()
    runs: dict[str, list[dict[str, Any]]] = {"ray": [], "direct": []}
    for r in range(args.rounds):
        for mode in ("ray", "direct") if r % 2 == 0 else ("direct", "ray"):
            runs[mode] += await run_callers(servers[mode].url, [0.0], 2, args)
            await wait_for(lambda m=mode: not servers[m].sessions, 60)
    for srv in servers.values():
        await srv.stop()
    engines.close()
    rows = [{"mode": mode, **summary(peers)} for mode, peers in runs.items()]
    ray_row, direct = rows
    diff = {k: round(ray_row[k]["p50"] - direct[k]["p50"], 3) for k in ("v2v_peer", "v2v_server", "offer_s")}
    columns = ["path", "answered", "v2v peer p50 / p95", "v2v server p50 / p95", "offer → answer p50 / p95"]
    table = [[r["mode"], f"{r['answered']}/{r['turns']}", pair(r["v2v_peer"]), pair(r["v2v_server"]),
              pair(r["offer_s"])] for r in rows]  # fmt: skip
    table.append(["ray − direct (p50)", "", diff["v2v_peer"], diff["v2v_server"], diff["offer_s"]])
    print_table("Ray path vs direct VoiceServer (tiny models, one caller): seconds", columns, table)
    goal = abs(diff["v2v_peer"]) <= 0.02 and abs(diff["v2v_server"]) <= 0.02
    params = {"rounds": args.rounds, "turns_per_call": 2, "gap_s": args.gap_s, "models": "tiny"}
    return {"params": params, "rows": rows, "p50_difference_s": diff, "goal_within_20ms": goal}


# -- failover ------------------------------------------------------------------------------------------


def timed_caller(url: str, failover_after_s: float) -> Any:
    """The page-like caller of tests/helpers, also noting when each non-silent bot frame arrived."""
    from aiortc.mediastreams import MediaStreamError
    from helpers.caller import Caller

    class TimedCaller(Caller):
        def __init__(self) -> None:
            super().__init__(url, failover_after_s=failover_after_s)
            self.heard: list[float] = []

        async def _listen(self, track: Any) -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    frame = await track.recv()
                    if np.abs(frame.to_ndarray()).max() > SILENT_PEAK:
                        self.heard.append(time.monotonic())

    return TimedCaller()


async def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def failover(args: argparse.Namespace) -> dict[str, Any]:
    from helpers.speech import espeak
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray_init(address=cluster.address)
    opts = server_options()
    srv = await gateway(loop_options("tiny", args, threads=1), opts, 2, 1.0, None)
    speech = espeak(UTTERANCES[0], voice="cmn-latn-pinyin")
    voiced = np.flatnonzero(np.abs(speech) > 100)
    pcm = np.concatenate([np.zeros(8000, np.int16), speech, np.zeros(8000, np.int16)])
    speech_s = (8000 + int(voiced[-1]) + 1) / 16_000

    async def speak() -> tuple[float, float | None]:
        """Say the utterance: when its speech ended, and when bot audio came after (None: not in 30 s)."""
        caller.say(pcm)
        end = time.monotonic() + speech_s
        await wait_for(lambda: any(t > end for t in caller.heard), 30)
        return end, next((t for t in caller.heard if t > end), None)

    caller = timed_caller(srv.url, opts.failover_after_s)
    assert await caller.start() == 200
    await wait_for(lambda: caller.listening_at, 10)
    rng, kills = random.Random(args.seed), []
    for k in range(args.kills):
        await speak()
        await asyncio.sleep(rng.uniform(0.0, 1.5))  # mid-call: during or just after the reply
        worker = srv.calls.workers[srv.calls.placed[caller.call]]
        (node,) = [n for n in cluster.worker_nodes if n.node_id == worker.info["node"]]
        lost, listening, refused = len(caller.lost_at), len(caller.listening_at), len(caller.refusals)
        killed = time.monotonic()
        await asyncio.to_thread(cluster.remove_node, node)
        back = await wait_for(
            lambda n=listening, m=lost: len(caller.listening_at) > n and len(caller.lost_at) > m, 60
        )
        row: dict[str, Any] = {"kill": k, "from": worker.name, "refusals": len(caller.refusals) - refused}
        if back:
            row["reoffer_s"] = round(caller.lost_at[lost] - killed, 3)
            row["listening_s"] = round(caller.listening_at[listening] - killed, 3)
            end, first = await speak()
            row["bot_audio_s"] = None if first is None else round(first - killed, 3)
            row["v2v_after_s"] = None if first is None else round(first - end, 3)
            row["to"] = srv.calls.placed.get(caller.call)
        print(row, file=sys.stderr)
        kills.append(row)
        cluster.add_node(num_cpus=1)  # main thread only (it sets a signal handler); between kills
        ready = lambda: sum(w.state == "ready" for w in srv.calls.workers.values()) == 2  # noqa: E731
        await wait_for(ready, 300)
    await caller.close()
    await srv.stop()
    import ray

    ray.shutdown()
    cluster.shutdown()
    stats = {}
    for key in ("reoffer_s", "listening_s", "bot_audio_s", "v2v_after_s"):
        values = [r[key] for r in kills if r.get(key) is not None]
        stats[key] = {"p50": pct(values, 50), "p95": pct(values, 95), "max": max(values, default=None)}
    params = {"failover_after_s": opts.failover_after_s, "heartbeat_s": opts.heartbeat_s, "kills": args.kills,
              "report_s": srv.calls.options.report_s, "dead_after": srv.calls.options.dead_after}  # fmt: skip
    goal = stats["listening_s"]["p95"] is not None and stats["listening_s"]["p95"] <= 3.0
    failed = sum(r.get("listening_s") is None for r in kills)
    columns = ["kill → re-offer", "kill → listening", "kill → next bot audio", "v2v after resume"]
    table = [[pair(stats[k]) for k in ("reoffer_s", "listening_s", "bot_audio_s", "v2v_after_s")]]
    print_table(f"Failover, {args.kills} node kills (tiny models): seconds p50 / p95", columns, table)
    return {
        "params": params,
        "kills": kills,
        "stats": stats,
        "not_resumed": failed,
        "goal_listening_3s": goal,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("capacity", "overhead", "failover"):
        parser.add_argument(f"--{flag}", action="store_true")
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--loads", type=ints, default=ints("1,2,4,8,12,16"), help="offered callers")
    parser.add_argument("--modes", default="measured,fixed", help="measured: gateway + worker; fixed: 4 max")
    parser.add_argument("--target-busy", type=float, help="admission's (default: AdmissionOptions')")
    parser.add_argument("--overlap-risk", type=float, help="admission's overlap bound (default: off)")
    parser.add_argument("--turns", type=int, default=3, help="utterances per caller")
    parser.add_argument("--lone-turns", type=int, default=6, help="utterances of the lone caller")
    parser.add_argument("--gap-s", type=float, default=6.0, help="silence after each utterance")
    parser.add_argument("--tail-s", type=float, default=6.0, help="callers stay this long after speaking")
    parser.add_argument("--wait-s", type=float, default=10.0, help="a refused caller retries this long")
    parser.add_argument("--rounds", type=int, default=5, help="overhead: calls per path")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--reply-max-s", type=float, default=1.0, help="cap on each reply sentence's audio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--tag", default="", help="suffix of the result files' names")
    parser.add_argument("--callers", help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args()
    if args.callers:
        path = Path(args.callers)
        path.write_text(json.dumps(asyncio.run(callers(json.loads(path.read_text())))))
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    for name, bench in (("capacity", capacity), ("overhead", overhead), ("failover", failover)):
        if getattr(args, name):
            machine = machine_info()
            result = asyncio.run(bench(args))
            out = RESULTS / f"cluster_{name}{args.tag}.json"
            out.write_text(json.dumps({"machine": finish(machine), **result}, indent=2) + "\n")
            print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
