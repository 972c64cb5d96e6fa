"""The gateway: ``voiceloop serve --ray`` places each call on a worker of a Ray cluster.

The HTTP front (page, ``/config``, ``/offer``, ``/metrics``, the checks of
:mod:`voiceloop.serve.guard`) is the single-machine server's; :class:`ClusterCalls` is what it puts
calls on. For each offer it picks a worker with measured headroom at random, weighted by headroom
(:func:`voiceloop.cluster.admission.choose`), reserves a slot there (the worker may still say no:
another gateway was faster, or its load rose), then relays the offer and returns the worker's answer.
Media then flows browser ↔ worker; the gateway never sees it. No room anywhere: 503 + Retry-After.

Ray owns membership, placement (``SPREAD``, ``num_cpus``/``num_gpus`` per worker), processes and the
object store; the gateway owns call placement, admission and failover:

* every ``report_s`` it polls each worker's load; a worker that misses ``dead_after`` polls in a row
  (dead, or alive to Ray but hung) is killed and replaced by a fresh actor, which Ray places wherever
  resources exist (it waits, pending, while there are none);
* a page whose call went silent offers again with its call id: the call is placed elsewhere, and the
  new worker starts it with the turns checkpointed so far (:mod:`voiceloop.cluster.history`);
* :meth:`ClusterCalls.drain` stops a worker taking calls, waits for its calls to end, and removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from ..serve.guard import Refused
from ..serve.history import new_call_id
from ..serve.metrics import ServeMetrics
from .admission import AdmissionOptions, choose
from .history import start_history
from .records import WorkerRecord, kill, reason, status_rows, worker_metrics
from .worker import VoiceWorker, WorkerSpec

log = logging.getLogger(__name__)

#: workers are named actors of the cluster namespace: WORKER_PREFIX + "w1", ... (attach finds them)
WORKER_PREFIX = "voiceloop-worker-"


@dataclass
class ClusterOptions:
    """How many workers, how big, and how the gateway watches them."""

    workers: int | None = None  # None: as many as the cluster's CPUs hold at start (CPUs // worker_cpus)
    worker_cpus: float = 1.0  # Ray num_cpus per worker (its torch/onnxruntime threads too)
    worker_gpus: float = 0.0  # Ray num_gpus per worker (1: each worker computes on its own GPU)
    namespace: str = "voiceloop"
    report_s: float = 1.0  # how often each worker's load is polled
    call_timeout_s: float = 2.0  # a poll or reservation not answered within this is a miss
    dead_after: int = 2  # misses in a row before a worker is presumed dead or hung: killed and replaced
    offer_timeout_s: float = 15.0  # longest wait for a worker's answer to an offer
    start_timeout_s: float = 600.0  # longest wait for a worker to load its models
    drain_grace_s: float = 3600.0  # how long a draining worker's calls may go on
    keep_history: bool = False  # leave the checkpoint actor running when the gateway stops
    #: use the workers another gateway of this namespace started (its owner): launch, replace and
    #: kill none; the workers' reservations keep the two from overbooking one
    attach: bool = False
    admission: AdmissionOptions = field(default_factory=AdmissionOptions)
    seed: int | None = None  # of the weighted random choice (tests)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not self.worker_cpus > 0 or self.worker_gpus < 0:
            raise ValueError("worker CPUs must be > 0 and GPUs >= 0")
        if not self.report_s > 0 or not self.call_timeout_s > 0 or self.dead_after < 1:
            raise ValueError("report and call timeouts must be > 0 and dead_after >= 1")


class ClusterCalls:
    """Calls placed on Ray workers (the :class:`voiceloop.serve.server.Calls` of a gateway)."""

    def __init__(self, spec: WorkerSpec, options: ClusterOptions | None = None) -> None:
        self.spec = replace(spec, admission=(options or ClusterOptions()).admission)
        self.options = options or ClusterOptions()
        self.spec.namespace = self.options.namespace
        self.spec.cpus = self.options.worker_cpus
        self.workers: dict[str, WorkerRecord] = {}
        self.placed: OrderedDict[str, str] = OrderedDict()  # call → worker (the latest 100,000 calls)
        self.failovers = 0
        self._failovers_seen = 0
        self._rng = random.Random(self.options.seed)
        self._count = 0
        self._voices: dict[str, Any] = {"default": None, "seeds": False, "names": []}
        self._history: Any = None
        self._poller: asyncio.Task[None] | None = None
        self._stopping = False
        self._v2v: list[float] = []
        self._turns = 0

    # -- life ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the checkpoint actor and the workers; returns once at least one is ready.

        Raises :class:`voiceloop.errors.UserError` naming each worker's node and error when none
        could load its models."""
        import ray

        from ..errors import UserError

        self._history = start_history(self.options.namespace)
        await self._history.size.remote()
        if self.options.attach:
            await self._discover()
            if not any(w.state == "ready" for w in self.workers.values()):
                raise UserError(
                    f"no workers to attach to in namespace {self.options.namespace!r}: "
                    "start a gateway without attach first"
                )
            self._poller = asyncio.get_running_loop().create_task(self._poll())
            return
        count = self.options.workers
        if count is None:
            cpus = ray.cluster_resources().get("CPU", 0)
            count = max(1, int(cpus // self.options.worker_cpus))
        for _ in range(count):
            self._launch()
        await asyncio.gather(*(w.started for w in self.workers.values() if w.started is not None))
        if not any(w.state == "ready" for w in self.workers.values()):
            errors = "; ".join(w.error or f"{w.name}: {w.state}" for w in self.workers.values())
            await self.stop()
            raise UserError(f"no worker could start: {errors}")
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    def _launch(self) -> WorkerRecord:
        import ray

        self._count += 1
        name = f"w{self._count}"
        actor = (
            ray.remote(VoiceWorker)
            .options(
                num_cpus=self.options.worker_cpus,
                num_gpus=self.options.worker_gpus,
                max_restarts=0,  # a lost worker is replaced by a fresh one (the gateway decides)
                scheduling_strategy="SPREAD",
                namespace=self.options.namespace,
                name=WORKER_PREFIX + name,  # other gateways find it (attach)
            )
            .remote(name, self.spec)
        )
        worker = WorkerRecord(name, actor)
        self.workers[name] = worker
        worker.started = asyncio.get_running_loop().create_task(self._start(worker))
        return worker

    async def _discover(self) -> None:
        """Attach: take up the namespace's named workers this gateway does not know yet."""
        import ray

        names = {
            entry["name"]
            for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry["namespace"] == self.options.namespace and entry["name"].startswith(WORKER_PREFIX)
        }
        found = []
        for full in names:
            name = full[len(WORKER_PREFIX) :]
            if name in self.workers:
                continue
            try:
                actor = ray.get_actor(full, namespace=self.options.namespace)
            except ValueError:  # gone between the listing and the lookup
                continue
            worker = self.workers[name] = WorkerRecord(name, actor)
            worker.started = asyncio.get_running_loop().create_task(self._join(worker))
            found.append(worker.started)
        await asyncio.gather(*found)

    async def _join(self, worker: WorkerRecord) -> None:
        """Attach to a worker another gateway started (ready once it has loaded its models)."""
        try:
            info = await asyncio.wait_for(worker.actor.info.remote(), self.options.call_timeout_s)
        except Exception:
            info = None
        if info is None:  # not started yet, or gone: the next discovery looks again
            self.workers.pop(worker.name, None)
            return
        await self._ready(worker, info)

    async def _start(self, worker: WorkerRecord) -> None:
        try:
            info = await asyncio.wait_for(worker.actor.start.remote(), self.options.start_timeout_s)
        except Exception as exc:
            worker.state, worker.error = "failed", reason(exc, worker.name)
            log.error("%s", worker.error)
            kill(worker.actor)
            return
        await self._ready(worker, info)

    async def _ready(self, worker: WorkerRecord, info: dict[str, Any]) -> None:
        try:  # a first load report, so the worker can be chosen before the next poll
            load, _, _ = await asyncio.wait_for(worker.actor.load.remote(), self.options.call_timeout_s)
            worker.load = replace(load, at=time.monotonic())
        except Exception as exc:
            self._missed(worker, exc)
        worker.info, worker.state = info, "ready"
        if not self._voices["names"] and not self._voices["seeds"]:
            self._voices = info["voices"]
        log.info("worker %s ready on %s (%s)", worker.name, info["node_ip"], info["host"])

    async def stop(self) -> None:
        self._stopping = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for worker in list(self.workers.values()):
            if worker.started is not None and not worker.started.done():
                worker.started.cancel()
            if self.options.attach:  # its owner's to stop
                continue
            if worker.state in ("ready", "draining"):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(worker.actor.stop.remote(), 10)
            kill(worker.actor)
        self.workers.clear()
        if self._history is not None and not (self.options.keep_history or self.options.attach):
            kill(self._history)
            self._history = None

    # -- watching the workers ---------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.options.report_s)
            if self.options.attach:
                await self._discover()
            ready = [w for w in self.workers.values() if w.state in ("ready", "draining")]
            replies = await asyncio.gather(
                *(asyncio.wait_for(w.actor.load.remote(), self.options.call_timeout_s) for w in ready),
                return_exceptions=True,
            )
            for worker, reply in zip(ready, replies, strict=True):
                if isinstance(reply, BaseException):
                    self._missed(worker, reply)
                    continue
                load, v2v, turns = reply
                worker.misses, worker.load = 0, replace(load, at=time.monotonic())
                self._v2v += v2v
                self._turns += turns
            del self._v2v[:-10_000]

    def _missed(self, worker: WorkerRecord, error: BaseException) -> None:
        worker.misses += 1
        if worker.misses < self.options.dead_after or worker.state == "dead":
            return
        log.warning("worker %s lost (%s)", worker.name, reason(error, worker.name))
        worker.state = "dead"
        self.workers.pop(worker.name, None)
        if self.options.attach:  # its owner kills and replaces it
            return
        kill(worker.actor)
        if not self._stopping:
            self._launch()  # Ray places it where resources exist (pending until there are some)

    # -- calls ----------------------------------------------------------------------------------
    @property
    def sessions(self) -> int:
        return sum(w.load.calls for w in self.workers.values() if w.load is not None and w.state != "dead")

    def voices(self) -> dict[str, Any]:
        return self._voices

    async def offer(self, sdp: str, call: str | None) -> dict[str, Any]:
        tried: set[str] = set()
        previous = self.placed.get(call) if call is not None else None
        if previous is not None:  # the page lost this call: place it elsewhere if anywhere else has room
            self.failovers += 1
            old = self.workers.get(previous)
            if old is not None and old.state == "ready" and not old.misses:
                old.actor.close_call.remote(call)  # the connection died, maybe not the worker: end it there
        call = call or new_call_id()
        while True:
            worker = self._choose(tried | ({previous} if previous else set()))
            if worker is None and previous is not None and previous not in tried:
                worker = self._choose(tried)  # nowhere else: the worker it was on, if it is alive
            if worker is None:
                retry = {"Retry-After": str(self.spec.server.retry_after_s)}
                raise Refused(503, "no worker has room for a call now: retry shortly", retry)
            tried.add(worker.name)
            answer = await self._place(worker, sdp, call)
            if answer is not None:
                return answer

    async def use_voice(self, call: str, recording: Any) -> dict[str, Any]:
        """POST /voice: on the worker holding ``call`` (Refused 404 when none does)."""
        worker = self.workers.get(self.placed.get(call, ""))
        if worker is None or worker.state not in ("ready", "draining"):
            raise Refused(404, "no live call with this id (the call id comes from the offer's answer)")
        try:
            reply = await asyncio.wait_for(
                worker.actor.use_voice.remote(call, recording), self.options.offer_timeout_s
            )
        except Exception as exc:
            raise Refused(503, reason(exc, worker.name), {"Retry-After": "2"}) from None
        if "status" in reply:
            raise Refused(reply["status"], reply["error"])
        return reply

    def _choose(self, exclude: set[str]) -> WorkerRecord | None:
        ready = [w.load for w in self.workers.values() if w.state == "ready" and w.load is not None]
        name = choose(ready, self._rng, self.options.admission, exclude=exclude, now=time.monotonic())
        return self.workers.get(name) if name is not None else None

    async def _place(self, worker: WorkerRecord, sdp: str, call: str) -> dict[str, Any] | None:
        """Reserve, then offer; None when this worker cannot take the call (try another)."""
        timeout = self.options.call_timeout_s
        try:
            ticket = await asyncio.wait_for(worker.actor.reserve.remote(), timeout)
        except Exception as exc:
            self._missed(worker, exc)
            return None
        if ticket is None:
            return None
        try:
            answer = await asyncio.wait_for(
                worker.actor.offer.remote(ticket, sdp, call), self.options.offer_timeout_s
            )
        except Exception as exc:
            worker.actor.release.remote(ticket)
            self._missed(worker, exc)
            return None
        if answer.get("status") == 400:
            raise Refused(400, answer["error"])
        if "status" in answer:
            return None
        self.placed[call] = worker.name
        self.placed.move_to_end(call)
        while len(self.placed) > 100_000:
            self.placed.popitem(last=False)
        if worker.load is not None:  # until its next report: this call counts (a burst must not herd)
            worker.load = replace(worker.load, calls=worker.load.calls + 1)
        return answer

    # -- draining -------------------------------------------------------------------------------
    async def drain(self, name: str, grace_s: float | None = None) -> int:
        """Stop ``name`` taking calls, wait for its calls to end (``grace_s``, default the options'),
        then remove it (not replaced: a drained worker is going away). Returns the calls cut."""
        if self.options.attach:
            raise Refused(409, "drain workers on the gateway that started them")
        worker = self.workers.get(name)
        if worker is None or worker.state not in ("ready", "draining"):
            raise KeyError(f"no worker {name!r} to drain")
        worker.state = "draining"
        grace = self.options.drain_grace_s if grace_s is None else grace_s
        try:
            cut = await worker.actor.drain.remote(grace)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.actor.stop.remote(), 10)
            kill(worker.actor)
            self.workers.pop(name, None)
        log.info("worker %s drained (%d call(s) cut at the end of the grace period)", name, cut)
        return cut

    async def drain_all(self, grace_s: float | None = None) -> int:
        names = [w.name for w in self.workers.values() if w.state in ("ready", "draining")]
        cuts = await asyncio.gather(*(self.drain(name, grace_s) for name in names), return_exceptions=True)
        return sum(c for c in cuts if isinstance(c, int))

    # -- metrics --------------------------------------------------------------------------------
    def collect(self, metrics: ServeMetrics) -> None:
        v2v, self._v2v = self._v2v, []
        turns, self._turns = self._turns, 0
        metrics.observe_v2v(v2v, turns)
        metrics.failovers.inc(self.failovers - self._failovers_seen)
        self._failovers_seen = self.failovers
        worker_metrics(self.workers.values(), self.options.admission, metrics)

    def status(self) -> list[dict[str, Any]]:
        """Each worker: name, state, node, calls, headroom (``GET /workers``; tests)."""
        return status_rows(self.workers.values(), self.options.admission)
