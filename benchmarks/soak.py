"""Soak: ``voiceloop serve`` with 4 loopback WebRTC peers talking for 10 minutes. Does anything grow?

The server is ``voiceloop serve --json --stats-s S`` in a child process (the bundled tiny ASR, random
2-layer ChatTTS assets, this file's fixed two-sentence ``handler``), so its resources are read from
outside, in /proc/PID: RSS, open file descriptors, OS threads; its asyncio task count comes from the
``stats`` lines ``--stats-s`` prints, and each sample is taken when one arrives. The peers
(``soak_peers.py``: aiortc on 127.0.0.1, no STUN) run in this process and keep talking: espeak-ng
Mandarin utterances, a barge-in every ``--barge-every`` turns (the next utterance starts while the bot
replies) and a new session every ``--reconnect-every`` turns. Offers refused with 429 (rate limit) or
503 (busy) are retried after a back-off and counted.

* **flat**: the median of the last window against the median of the first window after warm-up
  (windows of up to 60 s, warm-up up to 60 s), each within the bound in ``BOUNDS`` (written in the
  result); plus the slope over everything after warm-up.
* **idle**: after every peer left, fds and tasks must be back to the idle baseline, taken after one
  priming session (so one-time lazily created resources are not counted as growth).
* **sessions lost**: a session that ended without its peer closing it (connection failed or closed,
  data channel closed, or a ``closing`` event from the server); must be 0.
* **voice-to-voice** p50/p95 in the first and last window: at the peers (end of the utterance as
  sent → first non-silent bot frame received: both Opus legs and the jitter buffer included) and from
  the server's per-turn timelines (its ``turn`` lines).

    python benchmarks/soak.py [--seconds 600] [--peers 4] [--reconnect-every 5] [--barge-every 3]

Prints tables (markdown when stdout is not a terminal) and writes ``benchmarks/results/soak.json``.
Only stdlib imports at the top: the server loads this file for ``handler``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TINY_ASR = ROOT / "tests" / "fixtures" / "tiny-zh-asr"
REPLY = "好的，我知道了。我们明天再说吧。"
#: growth allowed from the first window's median to the last window's, after warm-up
BOUNDS = {"rss_mb": 32.0, "fds": 8, "tasks": 10, "threads": 2}


def handler(text: str) -> str:
    """The server's handler: one fixed two-sentence reply, long enough to barge into, and the same
    every turn so reply length does not vary with what the tiny ASR heard."""
    return REPLY


def proc_sample(pid: int) -> dict[str, float]:
    """RSS (MiB), OS threads and open file descriptors of a process, from /proc."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {
        "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
        "threads": int(status["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


class Server:
    """``voiceloop serve --json --stats-s`` in a child process; its JSON lines read as they come."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.url: str | None = None
        self.samples: list[dict[str, Any]] = []  # "at": loop time (CLOCK_MONOTONIC, as the server's)
        self.metrics: Path | None = None  # --metrics-out: every session's turns, summaries
        self.ended: list[int] = []
        self.stderr: collections.deque[str] = collections.deque(maxlen=200)
        self.tracebacks = 0
        self._listening = asyncio.Event()
        self._readers: list[asyncio.Task] = []

    async def start(self, tts: Path, args: argparse.Namespace, metrics: Path) -> None:
        from asyncio.subprocess import PIPE

        from test_webrtc import SERVE  # voiceloop's CLI, with aioice gathering 127.0.0.1 only

        self.metrics = metrics
        argv = [
            "serve",
            "--port",
            "0",
            "--json",
            "--stats-s",
            str(args.sample_s),
            "--metrics-out",
            str(metrics),
        ]
        argv += ["--max-sessions", str(args.peers), "--handler", f"{Path(__file__).resolve()}:handler"]
        argv += ["--asr", str(TINY_ASR), "--tts", str(tts), "--tts-max-seconds", str(args.reply_max_s)]
        argv += ["--asr-threads", "1", "--tts-threads", "1"]  # tiny models: more only add contention
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SERVE, *argv, cwd=ROOT, stdout=PIPE, stderr=PIPE, limit=2**20
        )
        self._readers = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._errors())]
        waiter = asyncio.ensure_future(self._listening.wait())
        await asyncio.wait([waiter, self._readers[0]], timeout=300, return_when=asyncio.FIRST_COMPLETED)
        if self.url is None:
            waiter.cancel()
            await self.stop()
            raise RuntimeError("voiceloop serve did not start:\n" + "\n".join(self.stderr))

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        async for line in self.proc.stdout:
            record = json.loads(line)
            kind = record.get("type")
            if kind == "listening":
                self.url = record["url"]
                self._listening.set()
            elif kind == "stats":
                with contextlib.suppress(OSError):
                    sample = {"at": loop.time(), **proc_sample(self.proc.pid)}
                    self.samples.append({**sample, "tasks": record["tasks"], "sessions": record["sessions"]})
            elif kind == "session_ended":
                self.ended.append(record["session"])

    def records(self) -> list[dict[str, Any]]:
        """The --metrics-out lines: a ``turn`` per finished turn, ``session_summary``, ``summary``."""
        if self.metrics is None or not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    async def _errors(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            text = line.decode(errors="replace").rstrip()
            self.stderr.append(text)
            self.tracebacks += text.startswith("Traceback")

    async def next_sample(self, timeout: float = 30.0) -> dict[str, Any]:
        """The first stats sample taken after now."""
        seen = len(self.samples)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.samples) == seen:
            if loop.time() > deadline or self._readers[0].done():
                raise RuntimeError("voiceloop serve stopped sending stats:\n" + "\n".join(self.stderr))
            await asyncio.sleep(0.1)
        return self.samples[-1]

    async def stop(self) -> int | None:
        """SIGTERM (the server's clean stop: sessions closed, summary printed), then its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)
        return proc.returncode


@contextlib.contextmanager
def loopback_ice():
    """aioice gathers 127.0.0.1 only while the peers run (no other interface, no STUN)."""
    import aioice.ice

    saved = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = saved


def clips() -> list[tuple[Any, int]]:
    """The peers' utterances (espeak-ng Mandarin, the tiny ASR's voice) and where each one's speech ends."""
    import numpy as np
    from helpers.speech import espeak
    from voice_to_voice import UTTERANCES

    out = []
    for text in UTTERANCES:
        clip = espeak(text, voice="cmn-latn-pinyin")
        loud = np.flatnonzero(np.abs(clip.astype(np.int32)) > 100)
        out.append((clip, int(loud[-1]) + 1 if len(loud) else len(clip)))
    return out


def tiny_tts(cache: Path) -> Path:
    """Random ChatTTS assets with a 2-layer GPT (written once; webrtc_sessions.py shares them)."""
    from helpers.chattts_fixtures import write_random_assets

    root = cache / "chattts-random-tiny"
    if not (root / "asset" / "Vocos.safetensors").is_file():
        write_random_assets(root, gpt_layers=2, seed=0, official_tokenizer=None)
    return root


async def soak(args: argparse.Namespace, tts: Path) -> dict[str, Any]:
    """Run the server and the peers; everything measured, timed in seconds from the soak's start
    (the priming session before it; see soak_report.analyse for the verdicts)."""
    import tempfile

    from soak_peers import PeerRecord, Plan, one_turn, open_session, talk

    loop = asyncio.get_running_loop()
    server = Server()
    with tempfile.TemporaryDirectory(prefix="voiceloop-soak-") as tmp:
        await server.start(tts, args, Path(tmp) / "turns.jsonl")
        assert server.url is not None
        plan = Plan(server.url, clips(), args.reconnect_every, args.barge_every, seed=args.seed)
        try:
            with loopback_ice():
                # Priming: a session and a turn, so lazily made one-time resources predate the baseline.
                prime = PeerRecord(-1)
                peer = await open_session(plan, prime, loop.time() + 60)
                if peer is None:
                    raise RuntimeError(f"the priming session could not connect: {prime}")
                await one_turn(peer, 0, plan, prime, loop.time())
                await peer.leave()
                baseline = await settled(server, None)
                t0 = loop.time()
                talkers = (talk(i, plan, t0 + args.seconds, t0) for i in range(args.peers))
                records = await asyncio.gather(*talkers)
                duration = loop.time() - t0
                after = await settled(server, baseline)
        finally:
            code = await server.stop()
        lines = server.records()
    turns = [r for r in lines if r.get("type") == "turn"]
    summary = next((r for r in lines if r.get("type") == "summary"), {})

    def since(at: float | None) -> float | None:
        return None if at is None else round(at - t0, 2)

    def timed(sample: dict[str, Any]) -> dict[str, Any]:
        return {"t": since(sample["at"]), **{k: v for k, v in sample.items() if k != "at"}}

    return {
        "duration_s": round(duration, 1),
        "baseline": timed(baseline),
        "after": timed(after),
        "peers": [vars(r) for r in records],
        "priming_answered": prime.answered,
        "server": {
            "exit_code": code,
            "samples": [timed(sample) for sample in server.samples],
            "turns": [
                {
                    "t": since(t["speech_end"]),
                    "session": t["session"],
                    "v2v": t["durations"]["voice_to_voice"],
                }
                for t in turns
                if t.get("speech_end") is not None
            ],
            "turn_errors": sum(t.get("error") is not None for t in turns),
            "interrupted": sum(bool(t.get("interrupted")) for t in turns),
            "sessions_ended": len(server.ended),
            "counters": summary.get("counters", {}),
            "tracebacks": server.tracebacks,
            "stderr_tail": list(server.stderr)[-20:],
        },
    }


async def settled(server: Server, baseline: dict[str, Any] | None, timeout: float = 60.0) -> dict[str, Any]:
    """An idle sample: no session left and, with a ``baseline``, fds and tasks back to it (closing
    tasks finish asynchronously; after ``timeout`` the last sample, so a leak shows). Without one:
    two samples in a row with no session and the same fds and tasks (the baseline itself)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    previous, sample = None, await server.next_sample()
    while loop.time() < deadline:
        if sample["sessions"] == 0:
            if baseline is not None and all(sample[k] <= baseline[k] for k in ("fds", "tasks")):
                break
            if baseline is None and previous and all(sample[k] == previous[k] for k in ("fds", "tasks")):
                break
        previous, sample = sample, await server.next_sample()
    return sample


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long the peers keep talking")
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--reconnect-every", type=int, default=5, help="turns per session")
    parser.add_argument("--barge-every", type=int, default=3, help="every Nth turn is barged into")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between resource samples")
    parser.add_argument("--reply-max-s", type=float, default=1.5, help="cap on each reply sentence's audio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tts", type=Path, help="ChatTTS assets (default: random 2-layer ones in --cache)")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "soak.json")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.peers < 1 or args.reconnect_every < 1 or args.barge_every < 1:
        parser.error("--seconds, --peers, --reconnect-every and --barge-every must be positive")
    return args


def import_paths() -> None:
    """benchmarks/ and tests/ on sys.path (speech.py, test_webrtc.py, machine.py, ...)."""
    for path in (str(ROOT / "tests"), str(HERE)):
        if path not in sys.path:
            sys.path.insert(0, path)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole soak: machine info, the run, the verdicts (see soak_report.analyse); writes nothing."""
    import_paths()
    from machine import finish, machine_info
    from soak_report import analyse

    info = machine_info(peers=args.peers)
    if args.tts is None:
        args.cache.mkdir(parents=True, exist_ok=True)
        args.tts = tiny_tts(args.cache)
    raw = await soak(args, args.tts)
    return {"machine": finish(info), **analyse(raw, args)}


def main() -> None:
    args = options()
    result = asyncio.run(run(args))
    from soak_report import print_tables

    print_tables(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
