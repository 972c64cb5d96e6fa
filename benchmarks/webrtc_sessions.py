"""Concurrent WebRTC sessions: voice-to-voice latency at 1, 4 and 8 loopback peers, batching on and off.

The server (``VoiceServer``, one pipeline per peer, one loaded model per engine) runs in this
process; the peers run in a child process (``--clients``), so the CPU and RSS measured here are the
server's alone. Each peer plays an espeak-ng conversation into its microphone track at real-time
pace (peers start up to ``--stagger-s`` apart, seeded) and records when bot audio arrives.

* **v2v (peer)**: end of an utterance as sent → first non-silent bot frame received, at the peer —
  what a user hears, including both Opus legs and aiortc's 80 ms jitter buffer.
* **v2v (server)**: the pipeline's own timeline (end of speech → first bot sample sent), from the
  ``turn`` events on the data channel.
* **CPU / session**: server process CPU seconds per wall second, divided by the sessions.
* **RSS / session**: the server's peak RSS growth over its idle RSS (models loaded), per session.
* **batch sizes**: how many sessions' ASR windows / GPT steps ran per model call.

Models: ``tiny`` (the bundled tiny ASR + a 2-layer random ChatTTS) and ``full`` (random XLSR-53-large
and the official-size 20-layer ChatTTS: the real compute), int8 on the CPU. The handler echoes the
a fixed short sentence (see ``handler``); replies are capped at ``--reply-max-s`` of audio.

    python benchmarks/webrtc_sessions.py [--models tiny,full] [--sessions 1,4,8] [--turns 3]

Prints a table and writes ``benchmarks/results/webrtc_sessions.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.speech import espeak  # noqa: E402
from machine import finish, machine_info, print_table  # noqa: E402
from voice_to_voice import FALLBACK_REPLY, UTTERANCES, random_asr, random_tts  # noqa: E402

STAGES = ["endpointing", "asr_finalisation", "handler_first_text", "tts_first_audio", "output_queue"]
SILENT_PEAK = 300  # int16 peak below which a received frame counts as silence (Opus noise floor)


def handler(text: str) -> str:
    """One fixed short reply: random-weight ASR hears long gibberish, and echoing it would make
    reply length (prompt prefill, sentence count) vary with noise instead of with load."""
    return FALLBACK_REPLY


def conversation(turns: int, gap_s: float) -> tuple[np.ndarray, list[int]]:
    """16 kHz speech with ``gap_s`` silences; and the sample index where each utterance ends."""
    silence = np.zeros(int(gap_s * 16_000), np.int16)
    parts, ends, at = [silence[:8000]], [], 8000
    for i in range(turns):
        speech = espeak(UTTERANCES[i % len(UTTERANCES)], voice="cmn-latn-pinyin")
        nonzero = np.flatnonzero(np.abs(speech) > 100)
        ends.append(at + (int(nonzero[-1]) + 1 if len(nonzero) else len(speech)))
        parts += [speech, silence]
        at += len(speech) + len(silence)
    return np.concatenate(parts), ends


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the peers (child process) -----------------------------------------------------------------


def _paced_mic(audio: np.ndarray) -> Any:
    """A mic track: ``audio`` (16 kHz int16) in real-time-paced 20 ms frames, then silence."""
    from fractions import Fraction

    import av
    from aiortc.mediastreams import MediaStreamTrack

    class Mic(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.t0: float | None = None
            self.pts = 0

        async def recv(self) -> Any:
            loop = asyncio.get_running_loop()
            if self.t0 is None:
                self.t0 = loop.time()
            else:
                await asyncio.sleep(max(0.0, self.t0 + self.pts / 16_000 - loop.time()))
            chunk = np.zeros(320, np.int16)
            piece = audio[self.pts : self.pts + 320]
            chunk[: len(piece)] = piece
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16_000, self.pts, Fraction(1, 16_000)
            self.pts += 320
            return frame

    return Mic()


async def talk(
    url: str, audio: np.ndarray, ends: list[int], http: Any, tail_s: float, wait_s: float = 0.0, seed: int = 0
) -> dict[str, Any]:
    """One loopback peer: offer, play ``audio``, stay ``tail_s`` longer, then hang up.

    A 503/429 is retried after its Retry-After (plus up to 0.5 s of seeded jitter, as the page does)
    for up to ``wait_s``; 0: the first refusal is the peer's error. Returns the peer-side voice to voice
    of each utterance (None: no bot audio before the next utterance ended), the ``turn`` events, the
    offer → answer time, the refusals and the wait before admission."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    loop = asyncio.get_running_loop()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    mic = _paced_mic(audio)
    heard: list[float] = []
    events: list[dict] = []
    channel = pc.createDataChannel("events")
    channel.on("message", lambda m: events.append(json.loads(m)) if isinstance(m, str) else None)
    drains: list[asyncio.Task] = []

    @pc.on("track")
    def on_track(track: Any) -> None:
        async def drain() -> None:
            try:
                while True:
                    frame = await track.recv()
                    if np.abs(frame.to_ndarray()).max() > SILENT_PEAK:
                        heard.append(loop.time())
            except MediaStreamError:
                pass

        drains.append(asyncio.ensure_future(drain()))

    pc.addTrack(mic)
    await pc.setLocalDescription(await pc.createOffer())
    offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
    arrived, refusals, jitter = loop.time(), 0, random.Random(seed)
    while True:
        sent = loop.time()
        async with http.post(url + "offer", json=offer) as response:
            offer_s = round(loop.time() - sent, 4)
            if response.status == 200:
                answer = await response.json()
                break
            retry_after = response.headers.get("Retry-After")
            error = f"offer: HTTP {response.status} {await response.text()}"
        refusals += 1
        pause = float(retry_after or 1) + jitter.uniform(0, 0.5)
        if response.status not in (429, 503) or loop.time() + pause > arrived + wait_s:
            await pc.close()
            return {"error": error, "refusals": refusals}
        await asyncio.sleep(pause)
    admitted = loop.time()
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    await asyncio.sleep(len(audio) / 16_000 + tail_s)  # the conversation plays out, replies finish
    t0 = mic.t0 if mic.t0 is not None else loop.time()
    v2v: list[float | None] = []
    for i, end in enumerate(ends):
        spoken = t0 + end / 16_000
        until = t0 + ends[i + 1] / 16_000 if i + 1 < len(ends) else float("inf")
        first = next((t for t in heard if spoken < t < until), None)
        v2v.append(None if first is None else round(first - spoken, 3))
    for task in drains:
        task.cancel()
    await pc.close()
    turns_seen = [e for e in events if e.get("type") == "turn"]
    waited = round(admitted - arrived, 3)
    return {"v2v": v2v, "turns": turns_seen, "offer_s": offer_s, "refusals": refusals, "waited_s": waited}


async def run_peers(
    url: str, count: int, turns: int, gap_s: float, stagger_s: float, tail_s: float, seed: int
) -> dict:
    import aiohttp
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    audio, ends = conversation(turns, gap_s)

    async def peer(index: int, delay: float, session: aiohttp.ClientSession) -> dict:
        await asyncio.sleep(delay)
        return {"peer": index, **await talk(url, audio, ends, session, tail_s)}

    rng = random.Random(seed)
    delays = [0.0] + [rng.uniform(0, stagger_s) for _ in range(count - 1)]
    async with aiohttp.ClientSession() as session:
        peers = await asyncio.gather(*(peer(i, d, session) for i, d in enumerate(delays)))
    return {"peers": peers}


def peers_main(args: argparse.Namespace) -> None:
    result = asyncio.run(
        run_peers(args.url, args.clients, args.turns, args.gap_s, args.stagger_s, args.tail_s, args.seed)
    )
    Path(args.result).write_text(json.dumps(result))


# -- the server (this process) -----------------------------------------------------------------


async def measure(engines: Any, loop_options: Any, count: int, args: argparse.Namespace) -> dict[str, Any]:
    import aioice.ice

    from voiceloop.serve.server import ServerOptions, VoiceServer

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    options = ServerOptions(port=0, max_sessions=count, loopback_candidates_only=True, media_timeout_s=60)
    server = VoiceServer(engines, handler, loop_options, options)
    await server.start()
    for lane in (engines.asr.lane, engines.tts.lane):
        lane.batch_sizes.clear()
    shed = engines.asr.shed_steps
    result_file = args.cache / f"peers-{count}.json"
    rss0, cpu0, wall0 = rss_mb(), cpu_s(), time.perf_counter()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--clients",
        str(count),
        "--url",
        server.url,
        "--turns",
        str(args.turns),
        "--gap-s",
        str(args.gap_s),
        "--stagger-s",
        str(args.stagger_s),
        "--tail-s",
        str(args.tail_s),
        "--result",
        str(result_file),
    )
    peak = rss0
    while child.returncode is None:
        peak = max(peak, rss_mb())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(child.wait(), 0.5)
    cpu, wall = cpu_s() - cpu0, time.perf_counter() - wall0
    await server.stop()
    peers = json.loads(result_file.read_text())["peers"]
    errors = [p["error"] for p in peers if "error" in p]
    peer_v2v = [v for p in peers if "v2v" in p for v in p["v2v"]]
    heard = [v for v in peer_v2v if v is not None]
    answered = [t for p in peers for t in p.get("turns", []) if not t.get("discarded")]
    stages = {}
    for name in STAGES:
        values = [t["durations"][name] for t in answered if t.get("durations", {}).get(name) is not None]
        stages[name] = {"p50": pct(values, 50), "p95": pct(values, 95)}
    server_v2v = [t["durations"]["voice_to_voice"] for t in answered if t["durations"].get("voice_to_voice")]
    return {
        "sessions": count,
        "turns": len(peer_v2v),
        "answered": len(heard),
        "errors": errors,
        "v2v_peer": {"p50": pct(heard, 50), "p95": pct(heard, 95)},
        "v2v_server": {"p50": pct(server_v2v, 50), "p95": pct(server_v2v, 95)},
        "server_stages": stages,
        "cpu_per_session": round(cpu / wall / count, 3),
        "rss_idle_mb": round(rss0, 1),
        "rss_per_session_mb": round((peak - rss0) / count, 1),
        "asr_batch_sizes": dict(sorted(engines.asr.lane.batch_sizes.items())),
        "asr_steps_shed": engines.asr.shed_steps - shed,
        "tts_batch_sizes": dict(sorted(engines.tts.lane.batch_sizes.items())),
    }


def model_paths(kind: str, cache: Path) -> tuple[Path, Path]:
    """The ASR and TTS of ``tiny`` or ``full`` (random weights, written to ``cache`` once)."""
    if kind == "full":
        return random_asr(cache), random_tts(cache)
    from helpers.chattts_fixtures import write_random_assets

    tts = cache / "chattts-random-tiny"
    if not (tts / "asset" / "Vocos.safetensors").is_file():
        write_random_assets(tts, gpt_layers=2, seed=0, official_tokenizer=None)
    return ROOT / "tests" / "fixtures" / "tiny-zh-asr", tts


def load(kind: str, args: argparse.Namespace) -> tuple[Any, Any]:
    from voiceloop.loop import LoopOptions, load_engines

    asr, tts = model_paths(kind, args.cache)
    options = LoopOptions(asr=str(asr), tts=str(tts), precision="int8")
    engines = load_engines(options)
    steps = max(1, round(args.reply_max_s * 46.875))
    engines.tts.options.sampling = replace(engines.tts.options.sampling, max_new_tokens=steps)
    engines.warm_up()
    return engines, options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,full")
    parser.add_argument("--sessions", default="1,4,8")
    parser.add_argument("--batching", default="on,off")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--gap-s", type=float, default=7.0, help="silence after each utterance")
    parser.add_argument("--stagger-s", type=float, default=1.0, help="peers start up to this far apart")
    parser.add_argument("--tail-s", type=float, default=8.0, help="peers stay this long after speaking")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reply-max-s", type=float, default=1.0, help="cap on each reply sentence's audio")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "webrtc_sessions.json")
    # child-process mode (the peers)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients:
        peers_main(args)
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    rows = []
    for kind in args.models.split(","):
        started = time.perf_counter()
        engines, options = load(kind, args)
        print(f"{kind}: models loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        for count in (int(n) for n in args.sessions.split(",")):
            for batching in args.batching.split(","):
                for lane in (engines.asr.lane, engines.tts.lane):
                    lane.batching = batching == "on"
                row = {"models": kind, "batching": batching}
                row.update(asyncio.run(measure(engines, options, count, args)))
                print(row, file=sys.stderr)
                rows.append(row)
        engines.close()
    print_rows(rows)
    result = {
        "machine": finish(machine),
        "turns_per_session": args.turns,
        "gap_s": args.gap_s,
        "stagger_s": args.stagger_s,
        "reply_max_s": args.reply_max_s,
        "precision": "int8",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


def print_rows(rows: list[dict[str, Any]]) -> None:
    columns = ["models", "sessions", "batching", "answered", "v2v peer", "v2v server", "CPU/sess"]
    columns += ["RSS/sess MB", "ASR batches", "TTS batches"]

    def pair(d: dict) -> str:
        return "-" if d["p50"] is None else f"{d['p50']:.2f} / {d['p95']:.2f}"

    def sizes(d: dict) -> str:
        total = sum(d.values())
        if not total:
            return "-"
        mean = sum(int(k) * v for k, v in d.items()) / total
        return f"mean {mean:.2f}, max {max(int(k) for k in d)}"

    table = [
        [
            row["models"],
            row["sessions"],
            row["batching"],
            f"{row['answered']}/{row['turns']}",
            pair(row["v2v_peer"]),
            pair(row["v2v_server"]),
            f"{row['cpu_per_session']:.2f}",
            f"{row['rss_per_session_mb']:.0f}",
            sizes(row["asr_batch_sizes"]),
            sizes(row["tts_batch_sizes"]),
        ]
        for row in rows
    ]
    print_table("WebRTC sessions: voice-to-voice seconds p50 / p95 (loopback, int8 CPU)", columns, table)


if __name__ == "__main__":
    main()
