"""A cluster worker: a Ray actor holding what one ``voiceloop serve`` process holds.

The models load once per worker, its compute lanes batch across its calls, and its calls' media
terminate here (browser ↔ worker over ICE): Ray carries only control — an offer in, an answer out,
load reports, reservations, a drain. No audio and no per-step model call crosses Ray.

Admission is the worker's own word (:class:`voiceloop.cluster.admission.Ledger`): the gateway
reserves a slot against the worker's measured load, then sends the offer with the ticket. The load
comes from measurements (:class:`voiceloop.compute.LaneMeter` every ``report_s``: the compute thread's
busy fraction and the longest wait for it; the cost of one call from those over time), never from a
configured session count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..compute import LaneMeter
from ..frames import TurnMetrics
from ..loop import LoopOptions, load_engines, load_handler
from ..serve.guard import Refused
from ..serve.peers import BadOffer, Peers
from ..serve.server import ServerOptions
from ..serve.tts_panel import Recording, apply_recording
from .admission import AdmissionOptions, CostEstimate, Ledger, Load
from .history import RayHistory

log = logging.getLogger(__name__)


@dataclass
class WorkerSpec:
    """What every worker is built from (pickled by Ray to each one)."""

    loop_options: LoopOptions
    #: the dialogue handler: a function (Ray pickles it by value when its module is not importable
    #: on the workers) or a ``"module:function"`` spec loaded on each worker
    handler: Callable[..., Any] | str | None = None
    #: the per-call settings of the server (ICE servers, timeouts, heartbeat, say limit)
    server: ServerOptions = field(default_factory=ServerOptions)
    admission: AdmissionOptions = field(default_factory=AdmissionOptions)
    namespace: str = "voiceloop"  # where the checkpoint actor is (voiceloop.cluster.history)
    cpus: float = 1.0  # the worker's Ray num_cpus: its torch/onnxruntime threads when not set
    report_s: float = 1.0  # how often the worker measures its load


class WorkerFailed(Exception):
    """A worker could not start (its node, and why): the gateway reports it in one line."""


class VoiceWorker:
    """The actor's class (``ray.remote(VoiceWorker)`` in :mod:`voiceloop.cluster.gateway`)."""

    def __init__(self, name: str, spec: WorkerSpec) -> None:
        self.name = name
        self.spec = spec
        self.peers: Peers | None = None
        self.ledger = Ledger(spec.admission)
        self.cost = CostEstimate()
        self.reply_cost = CostEstimate()  # busy fraction per reply in progress
        self.reply_share = CostEstimate()  # replies in progress per call: the share of time replying
        self.draining = False
        self._busy, self._lag = 0.0, 0.0
        self._tickets: dict[str, str] = {}  # call → the ticket its slot was accepted with
        self._v2v: list[float] = []
        self._turns = 0
        self._meter: LaneMeter | None = None
        self._sampler: asyncio.Task[None] | None = None

    # -- life --------------------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        """Load the models (on a thread: the actor keeps answering pings) and report where it runs."""
        where = self.where()
        try:
            options = self._options()
            engines = await asyncio.to_thread(load_engines, options)
            handler = self.spec.handler
            handler = handler if callable(handler) else load_handler(handler)
        except Exception as exc:
            raise WorkerFailed(
                f"worker {self.name} on node {where['node_ip']} ({where['host']}) could not load its models: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        server = self.spec.server
        history = RayHistory.find(self.spec.namespace)
        self.peers = Peers(engines, handler, options, server, history=history)
        self.peers.on_ended = self._ended
        self._meter = LaneMeter([*engines.asr.lanes, *engines.tts.lanes])
        self._sampler = asyncio.get_running_loop().create_task(self._sample())
        return {**where, "voices": self.peers.voices()}

    def _options(self) -> LoopOptions:
        """Ray sets OMP_NUM_THREADS from num_cpus; set the engines' threads to match, explicitly."""
        options = self.spec.loop_options
        threads = max(1, int(self.spec.cpus))
        return replace(
            options,
            asr_threads=options.asr_threads or threads,
            tts_threads=options.tts_threads or threads,
        )

    def where(self) -> dict[str, Any]:
        import ray

        context = ray.get_runtime_context()
        return {
            "worker": self.name,
            "node": context.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    async def info(self) -> dict[str, Any] | None:
        """Where it runs and its voices once its models are loaded (None before): another gateway
        attaching to this worker reads it."""
        if self.peers is None:
            return None
        return {**self.where(), "voices": self.peers.voices()}

    async def ping(self) -> float:
        """Answered by the event loop that runs the calls: a hung loop does not answer."""
        return time.monotonic()

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self.peers is not None:
            await self.peers.close_all()
            self.peers.engines.close()

    # -- load ---------------------------------------------------------------------------------
    async def _sample(self) -> None:
        """Every ``report_s``: how busy the worker was, how far behind it fell, how much replying.

        Busy is the larger of the compute lanes' busy fraction and the process's CPU time over its
        ``cpus`` (the event loop's Opus, resampling and VAD are a call's cost too); the lag is the
        larger of the longest wait for a lane and how late the event loop woke up. Ten times a window
        it counts the calls whose bot is replying: the share of time a call replies, and the busy
        fraction one reply takes (``AdmissionOptions.overlap_risk`` uses both)."""
        assert self._meter is not None
        loop = asyncio.get_running_loop()
        cpu, wall = time.process_time(), time.monotonic()
        ticks = 10
        while True:
            late, replying = 0.0, 0
            for _ in range(ticks):
                planned = loop.time() + self.spec.report_s / ticks
                await asyncio.sleep(self.spec.report_s / ticks)
                late = max(late, loop.time() - planned)
                live = self.peers.live() if self.peers is not None else []
                replying += sum(session.pipeline.bot_active() for session in live)
            cpu_now, wall_now = time.process_time(), time.monotonic()
            process = (cpu_now - cpu) / max(1e-6, wall_now - wall) / max(1.0, self.spec.cpus)
            cpu, wall = cpu_now, wall_now
            lanes, wait = self._meter.sample()
            calls = self.peers.sessions if self.peers is not None else 0
            self._busy, self._lag = min(1.0, max(lanes, process)), max(wait, late)
            self.cost.update(self._busy, calls)
            replies = replying / ticks  # replies in progress, on average over the window
            self.reply_share.update(replies, calls)
            if replies >= 0.5:  # a window mostly spent replying says what a reply costs
                self.reply_cost.update(self._busy, replies)

    def _load(self) -> Load:
        calls = self.peers.sessions if self.peers is not None else 0
        return Load(
            worker=self.name,
            calls=calls,
            reserved=self.ledger.reserved,
            busy=self._busy,
            lag_s=self._lag,
            cost_per_call=self.cost.value,
            draining=self.draining,
            at=time.monotonic(),
            reply_cost=self.reply_cost.value,
            reply_share=self.reply_share.value,
        )

    async def load(self) -> tuple[Load, list[float], int]:
        """The current load, and the voice-to-voice of the turns finished since the last report."""
        v2v, self._v2v = self._v2v, []
        turns, self._turns = self._turns, 0
        return self._load(), v2v, turns

    # -- calls --------------------------------------------------------------------------------
    async def reserve(self) -> str | None:
        """A ticket for one call if there is room now (the worker's word, not the gateway's guess)."""
        if self.draining or self.peers is None:
            return None
        return self.ledger.reserve(self._load())

    async def release(self, ticket: str) -> None:
        self.ledger.release(ticket)

    async def offer(self, ticket: str, sdp: str, call: str) -> dict[str, Any]:
        """Answer the offer in the reserved slot: the answer, or ``{"status": 503|400, "error": ...}``."""
        if self.peers is None or self.draining or not self.ledger.accept(ticket):
            return {"status": 503, "error": f"worker {self.name} has no reserved slot for this call"}
        await self.peers.close_call(call, "the call continues on a new connection")
        try:
            answer = await self.peers.open(sdp, call)
        except BadOffer as exc:
            self.ledger.end(ticket)
            return {"status": 400, "error": str(exc)}
        self._tickets[call] = ticket
        session = self.peers.session(answer["session"])
        if session is not None:
            session.pipeline.add_observer(self._observe)
        return {**answer, "worker": self.name}

    def _observe(self, frame: Any) -> None:
        if isinstance(frame, TurnMetrics):
            self._turns += 1
            v2v = frame.timeline.durations().get("voice_to_voice")
            if v2v is not None:
                self._v2v.append(v2v)
                del self._v2v[:-1000]

    def _ended(self, call: str) -> None:
        ticket = self._tickets.pop(call, None)
        if ticket is not None:
            self.ledger.end(ticket)

    async def use_voice(self, call: str, recording: Recording) -> dict[str, Any]:
        """A recording from the call's page as its voice: the voice's info, or ``{"status", "error"}``."""
        if self.peers is None:
            return {"status": 404, "error": f"worker {self.name} holds no calls"}
        try:
            return await apply_recording(
                self.peers, call, recording, self.spec.server.voice_upload.allow_saving
            )
        except Refused as refused:
            return {"status": refused.status, "error": refused.message}

    async def close_call(self, call: str) -> bool:
        """The call moved to another worker (its page offered again): end it here."""
        if self.peers is None:
            return False
        return await self.peers.close_call(call, "the call moved to another worker")

    async def drain(self, grace_s: float) -> int:
        """Admit nothing new; return once the calls ended (or ``grace_s`` passed: those left are
        closed, each told why). Returns how many calls were cut at the end of the grace period."""
        self.draining = True
        deadline = time.monotonic() + grace_s
        while self.peers is not None and self.peers.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        cut = self.peers.sessions if self.peers is not None else 0
        if self.peers is not None:
            for session in self.peers.live():
                await self.peers.close(session, reason="the worker is shutting down")
        return cut
