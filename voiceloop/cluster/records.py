"""What a gateway knows of each worker, and how it reports them (``GET /workers``, ``/metrics``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..serve.metrics import ServeMetrics
from .admission import AdmissionOptions, Load, headroom
from .worker import WorkerFailed

#: a worker's states as the gateway sees them
STATES = ("starting", "ready", "draining", "failed", "dead")


@dataclass
class WorkerRecord:
    name: str
    actor: Any
    state: str = "starting"  # starting | ready | draining | failed | dead
    load: Load | None = None
    misses: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    started: asyncio.Task[None] | None = None


def status_rows(workers: Iterable[WorkerRecord], admission: AdmissionOptions) -> list[dict[str, Any]]:
    """Each worker: name, state, node, calls, headroom, busy."""
    rows = []
    for worker in workers:
        load = worker.load
        rows.append(
            {
                "worker": worker.name,
                "state": worker.state,
                "node_ip": worker.info.get("node_ip"),
                "node": worker.info.get("node"),
                "calls": load.calls if load else 0,
                "headroom": headroom(load, admission) if load else 0,
                "busy": load.busy if load else 0.0,
            }
        )
    return rows


def worker_metrics(
    workers: Iterable[WorkerRecord], admission: AdmissionOptions, metrics: ServeMetrics
) -> None:
    """The per-worker gauges of ``/metrics`` and the count of workers by state."""
    states = dict.fromkeys(STATES, 0)
    for worker in workers:
        states[worker.state] += 1
        if worker.load is not None:
            load = worker.load
            metrics.worker_calls.labels(worker.name).set(load.calls)
            metrics.worker_busy.labels(worker.name).set(load.busy)
            metrics.worker_lag.labels(worker.name).set(load.lag_s)
            metrics.worker_headroom.labels(worker.name).set(headroom(load, admission))
    for state, count in states.items():
        metrics.workers.labels(state).set(count)


def kill(actor: Any) -> None:
    """Kill a Ray actor for good (no restart); quiet when it is gone already."""
    import ray

    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)


def reason(error: BaseException, name: str) -> str:
    """One line for a worker's failure (the worker's own message when it raised one)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, WorkerFailed):
        return str(cause)
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return f"worker {name} did not answer in time"
    text = str(error).strip().splitlines()
    return f"worker {name}: {type(error).__name__}: {text[-1] if text else ''}"
