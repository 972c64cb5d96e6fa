"""Admission by measured capacity: headroom, the weighted choice, reserve-then-accept, the cost estimate."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from voiceloop.cluster.admission import (
    AdmissionOptions,
    CostEstimate,
    Ledger,
    Load,
    choose,
    headroom,
    headroom_array,
)
from voiceloop.errors import UserError

OPTIONS = AdmissionOptions()


def load(worker: str = "w", **fields: object) -> Load:
    base: dict[str, object] = {
        "worker": worker,
        "calls": 0,
        "reserved": 0,
        "busy": 0.0,
        "lag_s": 0.0,
        "cost_per_call": 0.1,
    }
    base.update(fields)
    return Load(**base)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- headroom ---------------------------------------------------------------------------------------------


def test_headroom_counts_calls_that_fit_under_the_target() -> None:
    assert headroom(load(busy=0.0, cost_per_call=0.1), OPTIONS) == 7  # 0.7 / 0.1
    assert headroom(load(busy=0.3, calls=3, cost_per_call=0.1), OPTIONS) == 4
    assert headroom(load(busy=0.65, calls=3, cost_per_call=0.1), OPTIONS) == 0  # 0.75 > 0.7
    assert headroom(load(busy=0.6, calls=6, cost_per_call=0.1), OPTIONS) == 1  # lands exactly on 0.7


def test_reserved_calls_come_off_the_headroom() -> None:
    assert headroom(load(busy=0.2, calls=2, reserved=3, cost_per_call=0.1), OPTIONS) == 2
    assert headroom(load(busy=0.2, calls=2, reserved=9, cost_per_call=0.1), OPTIONS) == 0


def test_a_quiet_window_does_not_read_as_an_empty_worker() -> None:
    # five calls all silent in the last window: busy 0, but five calls at 0.1 each are still there
    assert headroom(load(busy=0.0, calls=5, cost_per_call=0.1), OPTIONS) == 2


def test_unmeasured_cost_uses_the_prior_and_tiny_costs_the_floor() -> None:
    assert headroom(load(cost_per_call=None), OPTIONS) == 2  # 0.7 / 0.25
    capped = AdmissionOptions(max_calls=1000)
    assert headroom(load(cost_per_call=0.0), capped) == 35  # 0.7 / 0.02 floor


def test_max_calls_is_a_hard_cap() -> None:
    options = AdmissionOptions(max_calls=4)
    assert headroom(load(cost_per_call=0.01), options) == 4
    assert headroom(load(calls=3, reserved=1, cost_per_call=0.01), options) == 0


def test_draining_or_lagging_workers_take_nothing() -> None:
    assert headroom(load(draining=True), OPTIONS) == 0
    assert headroom(load(lag_s=0.51), OPTIONS) == 0
    assert headroom(load(lag_s=0.5), OPTIONS) > 0


def test_an_overloaded_worker_reports_zero_not_negative() -> None:
    assert headroom(load(busy=1.0, calls=20, reserved=5), OPTIONS) == 0


def test_headroom_array_agrees_with_headroom_worker_by_worker() -> None:
    rng = random.Random(3)
    options = AdmissionOptions(max_calls=12)
    loads = [
        load(
            f"w{i}",
            calls=rng.randrange(15),
            reserved=rng.randrange(4),
            busy=rng.random(),
            lag_s=rng.choice([0.0, 0.3, 0.6]),
            cost_per_call=rng.choice([None, 0.0, 0.05, 0.1, 0.3]),
            draining=rng.random() < 0.1,
        )
        for i in range(2000)
    ]
    rooms = headroom_array(
        np.array([x.calls for x in loads]),
        np.array([x.reserved for x in loads]),
        np.array([x.busy for x in loads]),
        np.array([x.lag_s for x in loads]),
        np.array([np.nan if x.cost_per_call is None else x.cost_per_call for x in loads]),
        options,
        draining=np.array([x.draining for x in loads]),
    )
    expected = [headroom(x, options) for x in loads]
    assert rooms.tolist() == expected
    assert sum(expected) > 0 and expected.count(0) < len(expected)


@pytest.mark.parametrize(
    "fields",
    [
        {"target_busy": 0.0},
        {"target_busy": 1.5},
        {"max_lag_s": 0.0},
        {"prior_cost_per_call": 0.0},
        {"min_cost_per_call": 2.0},
        {"max_calls": 0},
        {"reservation_ttl_s": -1.0},
        {"report_max_age_s": 0.0},
    ],
)
def test_bad_options_are_a_user_error(fields: dict[str, float]) -> None:
    with pytest.raises(UserError, match="admission options"):
        AdmissionOptions(**fields)  # type: ignore[arg-type]


# -- choose -----------------------------------------------------------------------------------------------


def test_choose_never_picks_a_full_draining_lagging_or_excluded_worker() -> None:
    loads = [
        load("full", busy=0.7, calls=7),
        load("draining", draining=True),
        load("lagging", lag_s=2.0),
        load("excluded"),
        load("a", busy=0.5, calls=5),
        load("b"),
    ]
    rng = random.Random(1)
    picks = Counter(choose(loads, rng, OPTIONS, exclude={"excluded"}) for _ in range(1000))
    assert set(picks) == {"a", "b"}


def test_choose_returns_none_when_nobody_has_room() -> None:
    loads = [load("a", busy=0.9, calls=9), load("b", draining=True)]
    assert choose(loads, random.Random(0), OPTIONS) is None
    assert choose([], random.Random(0), OPTIONS) is None
    assert choose([load("a")], random.Random(0), OPTIONS, exclude=["a"]) is None


def test_choose_spreads_in_proportion_to_headroom() -> None:
    # headrooms 6, 2, 2, 1: every one is picked, and 3x the headroom is picked more often than 1x
    loads = [
        load("big", busy=0.1, calls=1),
        load("mid1", busy=0.5, calls=5),
        load("mid2", busy=0.5, calls=5),
        load("small", busy=0.6, calls=6),
    ]
    assert [headroom(x, OPTIONS) for x in loads] == [6, 2, 2, 1]
    for seed in range(5):
        rng = random.Random(seed)
        picks = Counter(choose(loads, rng, OPTIONS) for _ in range(1000))
        assert set(picks) == {"big", "mid1", "mid2", "small"}
        assert picks["big"] > picks["mid1"] > picks["small"]
        assert picks["big"] > picks["mid2"] > picks["small"]


def test_choose_skips_stale_reports_only_when_given_now() -> None:
    loads = [load("old", at=0.0), load("fresh", at=20.0)]
    picks = {choose(loads, random.Random(s), OPTIONS, now=20.0) for s in range(50)}
    assert picks == {"fresh"}
    picks = {choose(loads, random.Random(s), OPTIONS) for s in range(50)}
    assert picks == {"old", "fresh"}


def test_choose_is_reproducible_from_the_seed() -> None:
    loads = [load(f"w{i}", busy=0.1 * i, calls=i) for i in range(6)]
    first = [choose(loads, random.Random(7), OPTIONS) for _ in range(3)]
    again = [choose(loads, random.Random(7), OPTIONS) for _ in range(3)]
    assert first == again


# -- ledger -----------------------------------------------------------------------------------------------


def test_reservations_count_until_accepted_released_or_expired() -> None:
    clock = Clock()
    ledger = Ledger(AdmissionOptions(reservation_ttl_s=10.0), clock)
    idle = load(cost_per_call=0.25)  # room for 2
    first, second = ledger.reserve(idle), ledger.reserve(idle)
    assert first and second and first != second
    assert ledger.reserve(idle) is None
    assert ledger.reserved == 2
    ledger.release(second)
    assert ledger.reserved == 1
    clock.now = 9.9
    assert ledger.accept(first)
    assert (ledger.reserved, ledger.calls) == (0, 1)
    assert not ledger.accept(first)  # a ticket works once
    assert not ledger.accept(second)  # released
    assert not ledger.accept("nonsense")


def test_an_expired_ticket_is_dropped_and_cannot_be_accepted() -> None:
    clock = Clock()
    ledger = Ledger(AdmissionOptions(reservation_ttl_s=10.0), clock)
    idle = load(cost_per_call=0.25)
    tickets = [ledger.reserve(idle), ledger.reserve(idle)]
    assert ledger.reserve(idle) is None
    clock.now = 10.0
    assert ledger.reserved == 0
    assert not ledger.accept(tickets[0])  # type: ignore[arg-type]
    assert ledger.reserve(idle) is not None  # the room came back


def test_ended_calls_free_their_slot() -> None:
    ledger = Ledger(OPTIONS, Clock())
    idle = load(cost_per_call=0.25)
    tickets = [ledger.reserve(idle), ledger.reserve(idle)]
    assert all(ledger.accept(t) for t in tickets)  # type: ignore[arg-type]
    assert ledger.reserve(idle) is None  # the ledger's calls count even though the load says 0
    ledger.end(tickets[0])  # type: ignore[arg-type]
    assert ledger.calls == 1
    assert ledger.reserve(idle) is not None


def test_two_gateways_racing_on_one_stale_report_never_overbook() -> None:
    """Gateways reserve, accept and release in a random interleaving, all from the same old report of an
    empty worker; the worker's slots (calls + live reservations) never exceed its headroom when empty."""
    options = AdmissionOptions(reservation_ttl_s=5.0)
    stale = load(cost_per_call=0.1)  # an empty worker: room for 7
    capacity = headroom(stale, options)
    for seed in range(20):
        rng = random.Random(seed)
        clock = Clock()
        ledger = Ledger(options, clock)
        held: dict[int, list[str]] = {0: [], 1: []}
        live: list[str] = []
        granted = 0
        for _ in range(300):
            gateway = rng.randrange(2)
            action = rng.random()
            clock.now += rng.random() * 0.5
            if action < 0.5:
                ticket = ledger.reserve(stale)
                if ticket is not None:
                    held[gateway].append(ticket)
                    granted += 1
            elif action < 0.8 and held[gateway]:
                ticket = held[gateway].pop(rng.randrange(len(held[gateway])))
                if ledger.accept(ticket):
                    live.append(ticket)
            elif action < 0.9 and held[gateway]:
                ledger.release(held[gateway].pop())
            elif live and action >= 0.9:
                ledger.end(live.pop(rng.randrange(len(live))))
            assert ledger.calls + ledger.reserved <= capacity
        assert granted > capacity  # the interleaving did push past one worker's worth of reservations


# -- cost estimate ----------------------------------------------------------------------------------------


def test_cost_estimate_ignores_empty_windows_and_smooths() -> None:
    cost = CostEstimate(alpha=0.5, min_windows=1)
    assert cost.value is None
    cost.update(0.4, 0)
    assert cost.value is None
    cost.update(0.4, 2)
    assert cost.value == pytest.approx(0.2)
    cost.update(0.8, 2)
    assert cost.value == pytest.approx((0.4 * 0.5 + 0.2 * 0.25) / 0.75)  # the newer window weighs more
    cost.update(0.9, 0)
    assert cost.value == pytest.approx(1 / 3)


def test_cost_estimate_waits_for_enough_windows_and_a_silent_first_one_does_not_stick() -> None:
    cost = CostEstimate(alpha=0.05, min_windows=4)
    for busy in (0.0, 0.5, 0.5):
        cost.update(busy, 1)
        assert cost.value is None  # the prior still stands
    cost.update(0.5, 1)
    assert cost.value == pytest.approx(0.375, abs=0.01)  # about the mean of the four, not the silent 0


def test_cost_estimate_feeds_headroom() -> None:
    cost = CostEstimate()
    for _ in range(30):
        cost.update(0.3, 3)
    assert headroom(load(busy=0.3, calls=3, cost_per_call=cost.value), OPTIONS) == 4


def test_cost_estimate_rejects_bad_settings() -> None:
    with pytest.raises(UserError):
        CostEstimate(alpha=0.0)
    with pytest.raises(UserError):
        CostEstimate(min_windows=0)


def test_an_empty_worker_takes_one_call_whatever_its_cost_says():
    """A cost learned in a busy spell must not shut a worker for good: it learns only from calls."""
    dear = load(calls=0, busy=0.05, cost_per_call=0.9)
    assert headroom(dear, OPTIONS) == 1
    assert headroom(load(calls=1, busy=0.9, cost_per_call=0.9), OPTIONS) == 0
    assert headroom(load(calls=0, reserved=1, cost_per_call=0.9), OPTIONS) == 0  # its one call is reserved
    assert headroom(load(calls=0, lag_s=OPTIONS.max_lag_s + 0.1, cost_per_call=0.9), OPTIONS) == 0
    assert headroom(load(calls=0, draining=True, cost_per_call=0.9), OPTIONS) == 0
    many = headroom_array(
        np.array([0, 1]),
        np.array([0, 0]),
        np.array([0.05, 0.9]),
        np.array([0.0, 0.0]),
        np.array([0.9, 0.9]),
        OPTIONS,
    )
    assert many.tolist() == [1, 0]


def test_overlap_risk_caps_calls_whose_replies_would_collide():
    """One reply takes the whole node (reply_cost 0.95): two calls that each reply 30 % of the time
    overlap 9 % of the time, over a 5 % risk, so one call; a node where a reply takes an eighth runs
    8 at once and fits many more."""
    from voiceloop.cluster.admission import calls_within_overlap

    assert calls_within_overlap(0.95, 0.3, 0.05, 32) == 1
    assert calls_within_overlap(0.95, 0.01, 0.05, 32) >= 3  # rare replies rarely overlap
    big = calls_within_overlap(0.125, 0.3, 0.05, 32)
    assert 10 <= big <= 32
    assert calls_within_overlap(0.125, 0.3, 0.05, 32) <= calls_within_overlap(0.125, 0.3, 0.2, 32)

    careful = AdmissionOptions(overlap_risk=0.05)
    node = load(calls=1, busy=0.3, cost_per_call=0.1, reply_cost=0.95, reply_share=0.3)
    assert headroom(node, OPTIONS) == 4  # the mean cost alone: (0.7 - 0.3) / 0.1
    assert headroom(node, careful) == 0  # the overlap: one call is all this node replies to smoothly
    assert headroom(load(calls=0, reply_cost=0.95, reply_share=0.3), careful) == 1
    unmeasured = load(calls=1, busy=0.3, cost_per_call=0.1)
    assert headroom(unmeasured, careful) == headroom(unmeasured, OPTIONS)  # no reply figures yet: off
    with pytest.raises(UserError):
        AdmissionOptions(overlap_risk=1.5)
