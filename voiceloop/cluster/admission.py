"""Admission by measured capacity: how many more calls a worker can take, and which worker gets the next one.

Pure decision logic, shared by the Ray gateway and workers and by ``benchmarks/cluster_sim.py`` (which runs
these same functions against simulated workers), so what the simulation says about a policy holds for the
code that serves calls.

- A worker measures itself (:class:`Load`): how busy its compute lanes were over the last window, how far
  its calls lag behind real time, and what one call costs (:class:`CostEstimate`). :func:`headroom` turns
  that into a number of calls, not a guess the user makes with ``--max-sessions``.
- A gateway sees loads that are a report interval old. :func:`choose` picks among workers with headroom at
  random, weighted by headroom: picking the most headroom (greedy) sends every call of a burst to the same
  worker until its next report lands (the herd that ``benchmarks/cluster_sim.py`` compares).
- The worker has the final word: its :class:`Ledger` reserves a slot against its current state before the
  gateway sends the offer (reserve-then-accept), so two gateways acting on the same stale report cannot
  overbook one worker. A worker that refuses is excluded and the gateway chooses again.
"""

from __future__ import annotations

import itertools
import math
import random
import secrets
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..errors import UserError

#: slack in the busy comparison, so a prediction that lands exactly on the target still admits
_EPS = 1e-9


@dataclass(frozen=True)
class Load:
    """What a worker reports about itself, from measurements (never from a configured capacity)."""

    worker: str
    calls: int  # live calls
    reserved: int  # reservations not yet turned into calls
    busy: float  # busy fraction of its compute lanes over the last window, 0..1 (max over lanes)
    lag_s: float  # worst lag behind real time among its calls (s); 0 when idle
    cost_per_call: float | None  # busy fraction one call adds (CostEstimate); None: not measured yet
    draining: bool = False
    at: float = 0.0  # monotonic time of the measurement
    #: busy fraction while one reply is being synthesised (its peak, not its mean); None: not measured
    reply_cost: float | None = None
    #: share of a call's time with a reply being synthesised; None: not measured
    reply_share: float | None = None


@dataclass(frozen=True)
class AdmissionOptions:
    """How cautious admission is. The defaults keep headroom for calls that speak at the same moment."""

    #: admit while the predicted busy fraction with one more call stays at or under this; the rest is the
    #: margin for calls whose turns coincide (LiveKit's production load threshold is the same 0.7)
    target_busy: float = 0.7
    #: a worker whose worst call lags real time by more than this admits nothing
    max_lag_s: float = 0.5
    #: cost of one call until the worker has measured its own (conservative: four calls per lane)
    prior_cost_per_call: float = 0.25
    #: a measured cost is never taken below this: a few quiet windows must not open the gates wide
    min_cost_per_call: float = 0.02
    #: hard cap per worker: a safety net, not the capacity
    max_calls: int = 32
    #: a reservation not accepted within this is dropped (the caller's offer never came)
    reservation_ttl_s: float = 10.0
    #: choose() skips a report older than this when it is given ``now`` (the worker is presumed gone)
    report_max_age_s: float = 15.0
    #: also cap the calls so that the chance that more replies are synthesised at once than the worker
    #: computes at full speed (1 ÷ reply_cost) stays under this (e.g. 0.05). The mean cost counts a
    #: call's silences, but overlapping replies slow each other down: on a node where one reply takes
    #: the whole CPU, two calls already stutter (benchmarks/cluster_bench.py --capacity). None: off
    overlap_risk: float | None = None

    def __post_init__(self) -> None:
        checks = (
            (0.0 < self.target_busy <= 1.0, "target_busy must be in (0, 1]"),
            (self.max_lag_s > 0.0, "max_lag_s must be > 0"),
            (0.0 < self.prior_cost_per_call <= 1.0, "prior_cost_per_call must be in (0, 1]"),
            (0.0 < self.min_cost_per_call <= 1.0, "min_cost_per_call must be in (0, 1]"),
            (self.max_calls >= 1, "max_calls must be >= 1"),
            (self.reservation_ttl_s > 0.0, "reservation_ttl_s must be > 0"),
            (self.report_max_age_s > 0.0, "report_max_age_s must be > 0"),
            (self.overlap_risk is None or 0.0 < self.overlap_risk < 1.0, "overlap_risk must be in (0, 1)"),
        )
        for ok, message in checks:
            if not ok:
                raise UserError(f"admission options: {message}")


def cost_of(load: Load, options: AdmissionOptions) -> float:
    """The busy fraction one more call is expected to add on this worker."""
    if load.cost_per_call is None:
        return options.prior_cost_per_call
    return max(load.cost_per_call, options.min_cost_per_call)


def headroom(load: Load, options: AdmissionOptions) -> int:
    """Calls the worker can still take (>= 0), after its live calls and its outstanding reservations.

    The base is the larger of the measured busy fraction and ``calls x cost``: a window in which every call
    happened to be silent must not read as an empty worker. Reserved calls are not in the busy figure yet,
    so they come off the result.

    A worker with no call takes one whatever its cost says: the cost is learned only from calls, so a
    worker that once measured a high cost (a busy spell) would otherwise refuse every caller for good
    (``benchmarks/cluster_bench.py --capacity`` saw it); the lag check still shuts an overloaded node.
    """
    if load.draining or load.lag_s > options.max_lag_s:
        return 0
    cost = cost_of(load, options)
    base = max(load.busy, load.calls * cost)
    by_busy = math.floor((options.target_busy - base) / cost + _EPS)
    if options.overlap_risk is not None and load.reply_cost and load.reply_share is not None:
        fit = calls_within_overlap(load.reply_cost, load.reply_share, options.overlap_risk, options.max_calls)
        by_busy = min(by_busy, fit - load.calls)
    if load.calls == 0:
        by_busy = max(by_busy, 1)
    return max(0, min(by_busy, options.max_calls - load.calls) - load.reserved)


def calls_within_overlap(reply_cost: float, reply_share: float, risk: float, most: int) -> int:
    """The most calls (>= 1) whose replies, each in progress ``reply_share`` of the time independently,
    exceed the ⌊1 ÷ reply_cost⌋ that run at full speed together with probability at most ``risk``."""
    at_once = max(1, math.floor(1.0 / reply_cost + _EPS))
    share = min(max(reply_share, 0.0), 1.0)
    calls = 1
    for n in range(2, most + 1):
        over = sum(math.comb(n, k) * share**k * (1 - share) ** (n - k) for k in range(at_once + 1, n + 1))
        if over > risk:
            break
        calls = n
    return calls


def headroom_array(
    calls: np.ndarray,
    reserved: np.ndarray,
    busy: np.ndarray,
    lag_s: np.ndarray,
    cost_per_call: np.ndarray,
    options: AdmissionOptions,
    draining: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`headroom` for many workers at once (a gateway over hundreds of workers, the simulation).

    ``cost_per_call`` holds NaN where a worker has not measured its cost yet. Same rule, same results as
    :func:`headroom`, element by element, without ``overlap_risk`` (the simulation does not model replies
    overlapping yet).
    """
    cost = np.where(np.isnan(cost_per_call), options.prior_cost_per_call, cost_per_call)
    cost = np.maximum(cost, options.min_cost_per_call)
    base = np.maximum(busy, calls * cost)
    by_busy = np.floor((options.target_busy - base) / cost + _EPS).astype(np.int64)
    by_busy = np.where(calls == 0, np.maximum(by_busy, 1), by_busy)  # an empty worker takes one call
    room = np.maximum(0, np.minimum(by_busy, options.max_calls - calls) - reserved)
    shut = lag_s > options.max_lag_s
    if draining is not None:
        shut = shut | draining
    return np.where(shut, 0, room)


def choose(
    loads: Sequence[Load],
    rng: random.Random,
    options: AdmissionOptions,
    exclude: Collection[str] = (),
    now: float | None = None,
) -> str | None:
    """A worker for the next call: at random, weighted by headroom, among those with headroom > 0.

    ``exclude`` holds workers that already refused this call; with ``now`` given, reports older than
    ``options.report_max_age_s`` are skipped. None: no worker has room (the caller gets 503 + Retry-After).
    """
    candidates: list[tuple[str, int]] = []
    for load in loads:
        if load.worker in exclude:
            continue
        if now is not None and now - load.at > options.report_max_age_s:
            continue
        room = headroom(load, options)
        if room > 0:
            candidates.append((load.worker, room))
    if not candidates:
        return None
    total = sum(room for _, room in candidates)
    pick = rng.random() * total
    for worker, room in candidates:
        pick -= room
        if pick < 0:
            return worker
    return candidates[-1][0]  # float rounding at the very top of the range


class Ledger:
    """A worker's reservations and call slots, checked against its current load (reserve-then-accept).

    It lives in one worker and is used from its single asyncio thread, so each method is atomic. A gateway
    first reserves (a ticket, or None when the worker is full), then sends the offer with the ticket; the
    worker accepts the ticket when the offer arrives, and ends the slot when the call is over. Tickets that
    are never accepted expire after ``reservation_ttl_s``.
    """

    def __init__(self, options: AdmissionOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self._clock = clock
        self._tickets: dict[str, float] = {}  # ticket -> when it expires
        self._calls: set[str] = set()
        self._prefix = secrets.token_hex(4)  # tickets of a restarted worker never match old ones
        self._count = itertools.count(1)

    def _expire(self) -> None:
        now = self._clock()
        for ticket in [t for t, until in self._tickets.items() if until <= now]:
            del self._tickets[ticket]

    def reserve(self, load: Load) -> str | None:
        """A ticket if the worker, counting this ledger's reservations and calls, has headroom; else None.

        ``load.calls`` may come from the worker's own session count: the larger of it and this ledger's
        call slots is used, so a call counted by either is counted.
        """
        self._expire()
        current = replace(load, reserved=len(self._tickets), calls=max(load.calls, len(self._calls)))
        if headroom(current, self.options) <= 0:
            return None
        ticket = f"{self._prefix}-{next(self._count)}"
        self._tickets[ticket] = self._clock() + self.options.reservation_ttl_s
        return ticket

    def accept(self, ticket: str) -> bool:
        """Turn a live ticket into a call slot; False when it expired, was released or never existed."""
        self._expire()
        if self._tickets.pop(ticket, None) is None:
            return False
        self._calls.add(ticket)
        return True

    def release(self, ticket: str) -> None:
        """Give back a ticket that will not be used (the gateway placed the call elsewhere)."""
        self._tickets.pop(ticket, None)

    def end(self, ticket: str) -> None:
        """The call that accepted ``ticket`` is over: its slot is free."""
        self._calls.discard(ticket)

    @property
    def reserved(self) -> int:
        """Live tickets (expired ones are dropped here)."""
        self._expire()
        return len(self._tickets)

    @property
    def calls(self) -> int:
        """Accepted call slots not yet ended."""
        return len(self._calls)


class CostEstimate:
    """The busy fraction one live call adds, smoothed over measurement windows (an exponential average).

    ``busy / calls`` per window includes each call's silent stretches, so it is the average cost of a call,
    not its peak; ``AdmissionOptions.target_busy`` leaves the margin for calls that speak at once. Windows
    with no calls say nothing about a call's cost and are ignored. One window swings with the turns in it
    (a reply running or not), so the default ``alpha`` averages over many turns: with 2.5 s windows, about
    50 s. A short memory lets a few quiet windows admit calls the worker cannot hold
    (``benchmarks/cluster_sim.py --cost-alpha`` compares).
    """

    def __init__(self, alpha: float = 0.05, min_windows: int = 8) -> None:
        if not 0.0 < alpha <= 1.0:
            raise UserError("cost estimate: alpha must be in (0, 1]")
        if min_windows < 1:
            raise UserError("cost estimate: min_windows must be >= 1")
        self.alpha = alpha
        self.min_windows = min_windows
        self._ema = 0.0
        self._windows = 0

    def update(self, busy: float, active_calls: int) -> None:
        """Fold in one window: the lanes' busy fraction and the calls live during it."""
        if active_calls <= 0:
            return
        self._ema += self.alpha * (max(0.0, busy) / active_calls - self._ema)
        self._windows += 1

    @property
    def value(self) -> float | None:
        """The smoothed cost per call; None (use the prior) until ``min_windows`` windows with calls.

        The average starts from zero and is divided by the weight it has gathered, so early on it is the
        plain mean of the windows seen, not a first window that happened to be silent.
        """
        if self._windows < self.min_windows:
            return None
        return self._ema / (1.0 - (1.0 - self.alpha) ** self._windows)
