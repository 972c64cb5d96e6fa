"""Placement and admission past one machine, by simulation: 10 to 1,000 workers under Poisson arrivals.

Each worker is a node with ``--cores`` cores. A call cycles through the user speaking (streaming ASR runs),
the bot replying (streaming TTS runs) and a pause; what a phase costs in core-seconds per second comes from
the measured results in ``benchmarks/results/`` (RTF x threads, read at run time; the result names the files
and fields). Demand over capacity piles up as a backlog: its clearing time is the lag every call on that
worker hears. Workers measure themselves over ``--measure-s`` windows (busy, lag, cost per call) and report to
the gateway every ``--report-s`` (staggered): the gateway places calls on reports that are up to that old.

Policies, on the same arrival trace (arrival times and call lengths drawn once per load level):

* ``weighted``: ``admission.choose`` logic (weighted random on reported headroom) + the worker's ``Ledger``
  (reserve against its current load, accept when the offer lands ``--setup-s`` later);
* ``greedy``: the most reported headroom, same Ledger;
* ``round_robin``: the next worker whose report shows headroom, same Ledger;
* ``greedy_no_reserve``: the most reported headroom, the worker takes it unchecked (admission on the stale
  report alone: the overbooking that reserve-then-accept exists to stop);
* ``fixed4``: ``--max-sessions 4``: a random worker whose report shows < 4 calls, the worker checks 4.

A gateway tries at most ``--max-tries`` workers per call, then refuses it (503 + Retry-After).

    python benchmarks/cluster_sim.py [--workers 10,100,1000] [--loads 0.5,1,1.5] [--cores 2,16]

Prints tables and writes ``benchmarks/results/cluster_sim.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cluster_profile import Profile, load_profile, paper_capacity, per_call
from machine import finish, machine_info, print_table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from voiceloop.cluster.admission import AdmissionOptions, CostEstimate, Ledger, Load, headroom_array  # noqa: E402

POLICIES = ("weighted", "greedy", "round_robin", "greedy_no_reserve", "fixed4")
USER, BOT, PAUSE = 0, 1, 2  # call phases; each lasts an exponential time with the mean set by the flags


@dataclass
class Config:
    workers: int
    load: float  # offered load as a multiple of the nominal capacity
    policy: str
    cores: float = 2.0
    user_s: float = 3.0
    reply_s: float = 4.0
    pause_s: float = 2.0
    call_s: float = 180.0
    horizon_s: float = 900.0
    warmup_s: float = 240.0
    dt: float = 0.5
    measure_s: float = 2.5
    report_s: float = 2.5
    setup_s: float = 0.5
    max_tries: int = 3
    lag_threshold_s: float = 0.25
    batching: bool = False
    cost_alpha: float = CostEstimate().alpha  # the worker's CostEstimate, applied to every worker at once
    seed: int = 0
    options: AdmissionOptions = field(default_factory=AdmissionOptions)


def call_demand(profile: Profile, cfg: Config) -> float:
    """Mean core-seconds per second one call needs (phases weighted by their mean lengths)."""
    return per_call(profile.asr_core_s, profile.tts_core_s, cfg.user_s, cfg.reply_s, cfg.pause_s)


def nominal_calls(profile: Profile, cfg: Config) -> float:
    """Calls the cluster holds with every worker at the admission target (the 1.0x of offered load)."""
    return cfg.workers * cfg.options.target_busy * cfg.cores / call_demand(profile, cfg)


def arrivals(profile: Profile, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Poisson arrival times and exponential call lengths; the same for every policy at one load level."""
    rate = cfg.load * nominal_calls(profile, cfg) / cfg.call_s
    rng = np.random.default_rng([cfg.seed, cfg.workers, round(cfg.load * 1000)])
    gaps = rng.exponential(1.0 / rate, size=int(rate * cfg.horizon_s * 1.2) + 100)
    times = np.cumsum(gaps)
    times = times[times < cfg.horizon_s]
    return times, rng.exponential(cfg.call_s, size=len(times))


class Sim:
    """One run: workers, calls and the gateway stepping together on a virtual clock of ``dt`` steps."""

    def __init__(self, profile: Profile, cfg: Config) -> None:
        self.p, self.cfg, self.now = profile, cfg, 0.0
        w = cfg.workers
        self.rng = random.Random(cfg.seed)  # the gateway's choices
        self.np_rng = np.random.default_rng(cfg.seed)  # phase changes
        self.ledgers = [Ledger(cfg.options, clock=lambda: self.now) for _ in range(w)]
        self.calls = np.zeros(w, np.int64)
        self.pending = np.zeros(w, np.int64)  # offers on their way (fixed4 counts them itself)
        self.backlog = np.zeros(w)  # core-seconds of work behind real time
        self.busy_acc = np.zeros(w)
        self.calls_acc = np.zeros(w)
        self.busy = np.zeros(w)  # last measurement
        self.cost = np.full(w, np.nan)  # CostEstimate.value per worker; NaN: not measured yet
        self.ema = np.zeros(w)
        self.windows = np.zeros(w, np.int64)
        self.room = np.zeros(w, np.int64)  # the gateway's view: headroom from the last report
        self.rep_calls = np.zeros(w, np.int64)
        self.report_at = self.np_rng.integers(0, max(1, round(cfg.report_s / cfg.dt)), size=w)
        self.rr = 0
        self.steps = 0
        n = max(16, w * 4)
        self.c_worker = np.zeros(n, np.int64)
        self.c_phase = np.zeros(n, np.int64)
        self.c_end = np.full(n, np.inf)
        self.c_alive = np.zeros(n, bool)
        self.tickets: list[str | None] = [None] * n
        self.free = list(range(n - 1, -1, -1))
        self.offers: list[tuple[float, int, str | None, float]] = []  # (lands at, worker, ticket, length)
        self.m = {"offered": 0, "refused": 0, "retries": 0, "call_steps": 0, "lag_steps": 0, "steps": 0}
        self.imbalance: list[float] = []
        self.max_calls = 0
        self.min_cost = math.inf

    # -- the workers ----------------------------------------------------------------------------------
    def fresh_load(self, w: int) -> Load:
        """What worker ``w`` measures now (its Ledger adds its own reservations and calls)."""
        cost = None if math.isnan(self.cost[w]) else float(self.cost[w])
        lag = float(self.backlog[w] / self.cfg.cores)
        return Load(str(w), int(self.calls[w]), 0, float(self.busy[w]), lag, cost, at=self.now)

    def start(self, w: int, ticket: str | None, length: float) -> None:
        if not self.free:
            grow = len(self.c_worker)
            self.c_worker = np.concatenate([self.c_worker, np.zeros(grow, np.int64)])
            self.c_phase = np.concatenate([self.c_phase, np.zeros(grow, np.int64)])
            self.c_end = np.concatenate([self.c_end, np.full(grow, np.inf)])
            self.c_alive = np.concatenate([self.c_alive, np.zeros(grow, bool)])
            self.tickets += [None] * grow
            self.free = list(range(2 * grow - 1, grow - 1, -1))
        slot = self.free.pop()
        self.c_worker[slot], self.c_phase[slot], self.c_end[slot] = w, PAUSE, self.now + length
        self.c_alive[slot], self.tickets[slot] = True, ticket
        self.calls[w] += 1

    def step_workers(self) -> None:
        cfg, p = self.cfg, self.p
        ended = np.flatnonzero(self.c_alive & (self.c_end <= self.now))
        for slot in ended:
            w = int(self.c_worker[slot])
            self.calls[w] -= 1
            if self.tickets[slot] is not None:
                self.ledgers[w].end(self.tickets[slot])
            self.c_alive[slot], self.c_end[slot], self.tickets[slot] = False, np.inf, None
            self.free.append(int(slot))
        alive = self.c_alive
        means = np.array([cfg.user_s, cfg.reply_s, cfg.pause_s])
        change = alive & (self.np_rng.random(len(alive)) < 1.0 - np.exp(-cfg.dt / means[self.c_phase]))
        self.c_phase[change] = (self.c_phase[change] + 2) % 3  # PAUSE -> USER -> BOT -> PAUSE
        w = cfg.workers
        users = np.bincount(self.c_worker[alive & (self.c_phase == USER)], minlength=w)
        bots = np.bincount(self.c_worker[alive & (self.c_phase == BOT)], minlength=w).astype(float)
        if cfg.batching:  # GPT steps of concurrent replies share one batched call
            shared = np.where(bots > 0, 1.0 + (bots - 1.0) * p.batch_marginal, 0.0)
            bots = bots * (1.0 - p.gpt_share) + shared * p.gpt_share
        demand = (users * p.asr_core_s + bots * p.tts_core_s) * cfg.dt
        capacity = cfg.cores * cfg.dt
        done = np.minimum(capacity, self.backlog + demand)
        self.backlog = self.backlog + demand - done
        self.busy_acc += done / capacity
        self.calls_acc += self.calls
        per = max(1, round(cfg.measure_s / cfg.dt))
        self.steps += 1
        if self.steps % per == 0:
            self.busy = self.busy_acc / per
            mean_calls = self.calls_acc / per
            has = mean_calls > 0
            sample = self.busy[has] / mean_calls[has]  # CostEstimate.update, every worker at once
            self.ema[has] += cfg.cost_alpha * (sample - self.ema[has])
            self.windows[has] += 1
            ready = self.windows >= CostEstimate().min_windows
            weight = 1.0 - (1.0 - cfg.cost_alpha) ** self.windows
            self.cost = np.where(ready, self.ema / np.maximum(weight, 1e-12), np.nan)
            self.busy_acc[:] = 0.0
            self.calls_acc[:] = 0.0
        every = max(1, round(cfg.report_s / cfg.dt))
        due = np.flatnonzero((self.steps + self.report_at) % every == 0)
        self.rep_calls[due] = self.calls[due]
        self.room[due] = headroom_array(
            self.calls[due],
            self.pending[due],  # offers on their way: the worker's Ledger holds their reservations
            self.busy[due],
            self.backlog[due] / cfg.cores,
            self.cost[due],
            cfg.options,
        )

    # -- the gateway ----------------------------------------------------------------------------------
    def pick(self, tried: set[int]) -> int | None:
        policy, room = self.cfg.policy, self.room.astype(float)
        if policy == "fixed4":
            room = (self.rep_calls < 4).astype(float)
        if tried:
            room[list(tried)] = 0.0
        if not room.any():
            return None
        if policy in ("greedy", "greedy_no_reserve"):
            return int(np.argmax(room))
        if policy == "round_robin":
            order = np.flatnonzero(np.roll(room, -self.rr) > 0)
            w = int((order[0] + self.rr) % len(room))
            self.rr = w + 1
            return w
        # weighted (and fixed4's uniform draw): the walk admission.choose takes, as one search
        total = np.cumsum(room)
        return int(np.searchsorted(total, self.rng.random() * total[-1], side="right"))

    def place(self, length: float) -> None:
        tried: set[int] = set()
        for attempt in range(self.cfg.max_tries):
            w = self.pick(tried)
            if w is None:
                break
            self.m["retries"] += attempt > 0
            ticket: str | None = None
            if self.cfg.policy == "fixed4":
                ok = self.calls[w] + self.pending[w] < 4
            elif self.cfg.policy == "greedy_no_reserve":
                ok = True
            else:
                ticket = self.ledgers[w].reserve(self.fresh_load(w))
                ok = ticket is not None
            if ok:
                self.pending[w] += 1
                self.offers.append((self.now + self.cfg.setup_s, w, ticket, length))
                return
            tried.add(w)
        self.m["refused"] += self.now >= self.cfg.warmup_s

    def land_offers(self) -> None:
        landed = [o for o in self.offers if o[0] <= self.now]
        self.offers = [o for o in self.offers if o[0] > self.now]
        for _, w, ticket, length in landed:
            self.pending[w] -= 1
            if ticket is None or self.ledgers[w].accept(ticket):
                self.start(w, ticket, length)
            else:
                self.m["refused"] += self.now >= self.cfg.warmup_s

    def observe(self) -> None:
        if self.now < self.cfg.warmup_s:
            return
        lagging = self.backlog / self.cfg.cores > self.cfg.lag_threshold_s
        self.m["call_steps"] += int(self.calls.sum())
        self.m["lag_steps"] += int(self.calls[lagging].sum())
        self.m["steps"] += 1
        mean = self.calls.mean()
        if mean > 0:
            self.imbalance.append(float(self.calls.max() / mean))
        self.max_calls = max(self.max_calls, int(self.calls.max()))
        measured = self.cost[~np.isnan(self.cost)]
        if len(measured):
            self.min_cost = min(self.min_cost, float(measured.min()))

    def run(self, times: np.ndarray, lengths: np.ndarray) -> dict[str, Any]:
        cfg, i = self.cfg, 0
        for k in range(1, round(cfg.horizon_s / cfg.dt) + 1):
            self.now = k * cfg.dt
            self.land_offers()
            self.step_workers()
            while i < len(times) and times[i] <= self.now:
                self.m["offered"] += self.now >= cfg.warmup_s
                self.place(float(lengths[i]))
                i += 1
            self.observe()
        m = self.m
        floor_cost = min(self.min_cost, cfg.options.prior_cost_per_call)
        cap = math.floor(cfg.options.target_busy / max(floor_cost, cfg.options.min_cost_per_call) + 1e-9)
        return {
            "workers": cfg.workers,
            "load": cfg.load,
            "policy": cfg.policy,
            "offered": m["offered"],
            "refusal_rate": m["refused"] / max(1, m["offered"]),
            "overload": m["lag_steps"] / max(1, m["call_steps"]),
            "mean_calls_per_worker": m["call_steps"] / max(1, m["steps"]) / cfg.workers,
            "imbalance_max_mean": float(np.mean(self.imbalance)) if self.imbalance else None,
            "retries_per_offer": m["retries"] / max(1, m["offered"]),
            "max_calls_on_a_worker": self.max_calls,
            "headroom_cap": cap,
        }


def simulate(profile: Profile, cfg: Config) -> dict[str, Any]:
    times, lengths = arrivals(profile, cfg)
    return Sim(profile, cfg).run(times, lengths)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="10,100,1000", help="cluster sizes, comma-separated")
    parser.add_argument("--loads", default="0.5,1,1.5", help="offered load x nominal capacity")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--cores", default="2,16", help="cores per worker node, comma-separated")
    parser.add_argument("--user-s", type=float, default=3.0, help="mean user utterance (s), assumed")
    parser.add_argument("--reply-s", type=float, default=4.0, help="mean bot reply (s), assumed")
    parser.add_argument("--pause-s", type=float, default=2.0, help="mean pause between turns (s), assumed")
    parser.add_argument("--call-s", type=float, default=180.0, help="mean call length (s), exponential")
    parser.add_argument(
        "--horizons", default="2400,1200,600", help="simulated seconds per run, one per --workers entry"
    )
    parser.add_argument("--warmup-s", type=float, default=240.0, help="left out of the figures")
    parser.add_argument("--report-s", type=float, default=2.5, help="load report interval (LiveKit: 2.5)")
    parser.add_argument("--measure-s", type=float, default=2.5, help="a worker's measurement window")
    parser.add_argument("--setup-s", type=float, default=0.5, help="reservation to accepted offer")
    parser.add_argument("--max-tries", type=int, default=3, help="workers a gateway tries per call")
    parser.add_argument("--lag-threshold-s", type=float, default=0.25, help="lag that counts as overload")
    parser.add_argument("--batching", action="store_true", help="GPT steps batch across calls (GEMM model)")
    parser.add_argument("--cost-alpha", type=float, default=CostEstimate().alpha, help="EMA of cost per call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cluster_sim.json")
    args = parser.parse_args(argv)
    machine = machine_info()
    profile = load_profile()
    base = Config(
        workers=0, load=0.0, policy="", user_s=args.user_s, reply_s=args.reply_s,
        pause_s=args.pause_s, call_s=args.call_s, warmup_s=args.warmup_s,
        measure_s=args.measure_s, report_s=args.report_s, setup_s=args.setup_s, max_tries=args.max_tries,
        lag_threshold_s=args.lag_threshold_s, batching=args.batching, cost_alpha=args.cost_alpha,
        seed=args.seed,
    )  # fmt: skip
    started = time.perf_counter()
    runs = []
    sizes = [(float(c), int(w)) for c in args.cores.split(",") for w in args.workers.split(",")]
    for cores, workers in sizes:
        for load in [float(x) for x in args.loads.split(",")]:
            for policy in args.policies.split(","):
                cfg = Config(
                    **{**vars(base), "cores": cores, "workers": workers, "load": load, "policy": policy}
                )
                runs.append({"cores": cores, **simulate(profile, cfg)})
        print(f"{workers} x {cores:g} cores done at {time.perf_counter() - started:.1f} s", file=sys.stderr)
    for cores, workers in sizes:
        print_table(
            f"{workers} workers x {cores:g} cores: refused / overloaded call-time / imbalance max/mean",
            ["load", *args.policies.split(",")],
            [
                [f"{load:g}x"]
                + [
                    f"{100 * r['refusal_rate']:.1f} % / {100 * r['overload']:.1f} % / "
                    f"{r['imbalance_max_mean'] or 0:.2f}"
                    for r in runs
                    if (r["cores"], r["workers"], r["load"]) == (cores, workers, load)
                ]
                for load in sorted({r["load"] for r in runs})
            ],
        )
    capacity, capacity_notes = paper_capacity(args.user_s, args.reply_s, args.pause_s, 0.7)
    print_table(
        "Calls per node on paper (arithmetic from single-stream results, not measured)",
        list(capacity[0]),
        [list(r.values()) for r in capacity],
    )
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "admission_options": vars(AdmissionOptions()),
        "profile": {
            "asr_core_s_per_speech_s": profile.asr_core_s,
            "tts_core_s_per_reply_s": profile.tts_core_s,
            "gpt_share_of_tts": profile.gpt_share,
            "batch_marginal_row": profile.batch_marginal,
            "call_core_s_per_s": call_demand(profile, base),
            "nominal_calls_per_worker": {
                c: nominal_calls(profile, Config(**{**vars(base), "workers": 1, "cores": float(c)}))
                for c in args.cores.split(",")
            },
            "sources": profile.sources,
        },
        "runs": runs,
        "capacity_on_paper": {"rows": capacity, "sources": capacity_notes},
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": finish(machine),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['wall_s']} s)")
    return result


if __name__ == "__main__":
    main()
