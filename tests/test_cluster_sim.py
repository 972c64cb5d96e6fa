"""benchmarks/cluster_sim.py on tiny clusters: it places calls the way voiceloop.cluster.admission says.

Seeded runs of a few simulated minutes; the assertions are properties of the policies (no refusals when
there is plenty of room, no worker past what its headroom allows), not figures from one seed.
"""

from __future__ import annotations

import importlib
import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from voiceloop.cluster.admission import AdmissionOptions, Load, choose

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
sim = importlib.import_module("cluster_sim")
PROFILE = sim.load_profile()
TINY = sim.Config(workers=10, load=0.3, policy="weighted", cores=16.0, horizon_s=600.0, warmup_s=120.0)


def test_the_profile_comes_from_the_results_files() -> None:
    assert PROFILE.asr_core_s > 0 and PROFILE.tts_core_s > 0
    assert "asr_streaming.json" in PROFILE.sources["asr"] and "tts.json" in PROFILE.sources["tts"]
    assert 0 < PROFILE.gpt_share <= 1


def test_weighted_with_fresh_reports_refuses_nothing_at_low_load_and_never_overfills() -> None:
    fresh = replace(TINY, report_s=TINY.dt, measure_s=TINY.dt)
    result = sim.simulate(PROFILE, fresh)
    assert result["offered"] > 20
    assert result["refusal_rate"] == 0.0
    assert 0 < result["max_calls_on_a_worker"] <= result["headroom_cap"]


def test_every_admitting_policy_takes_all_calls_at_low_load() -> None:
    for policy in ("weighted", "greedy", "round_robin"):
        assert sim.simulate(PROFILE, replace(TINY, policy=policy))["refusal_rate"] == 0.0, policy


def test_fixed_four_sessions_overloads_a_two_core_worker_that_admission_protects() -> None:
    two_core = replace(TINY, cores=2.0, load=1.0, workers=10, horizon_s=900.0)
    fixed = sim.simulate(PROFILE, replace(two_core, policy="fixed4"))
    weighted = sim.simulate(PROFILE, two_core)
    assert fixed["overload"] > weighted["overload"]
    assert fixed["max_calls_on_a_worker"] == 4


def test_policies_see_the_same_arrival_trace() -> None:
    times, lengths = sim.arrivals(PROFILE, TINY)
    again, again_lengths = sim.arrivals(PROFILE, replace(TINY, policy="greedy"))
    assert np.array_equal(times, again) and np.array_equal(lengths, again_lengths)
    assert np.all(np.diff(times) > 0)


def test_the_simulated_gateway_picks_what_admission_choose_picks() -> None:
    """Same headrooms, same random stream: the vectorised pick and admission.choose agree draw by draw."""
    options = AdmissionOptions()
    rooms = [3, 0, 1, 2, 0, 5]
    loads = [
        Load(str(i), 0, 0, 0.0, 0.0, options.target_busy / r if r else None, draining=not r)
        for i, r in enumerate(rooms)
    ]
    state = sim.Sim(PROFILE, replace(TINY, workers=len(rooms)))
    state.room[:] = rooms
    state.rng = random.Random(11)
    reference = random.Random(11)
    for _ in range(200):
        assert state.pick(set()) == int(choose(loads, reference, options))  # type: ignore[arg-type]


def test_main_writes_a_result_with_its_sources(tmp_path: Path) -> None:
    out = tmp_path / "cluster_sim.json"
    tiny = ["--workers", "10", "--horizons", "300", "--loads", "0.5", "--cores", "16", "--warmup-s", "60"]
    sim.main([*tiny, "--out", str(out)])
    data = json.loads(out.read_text())
    assert {r["policy"] for r in data["runs"]} == set(sim.POLICIES)
    assert data["profile"]["sources"]["asr"].startswith("asr_streaming.json")
    assert data["machine"]["loadavg_end"] is not None
    nodes = [row["node"] for row in data["capacity_on_paper"]["rows"]]
    assert any("16-core" in n for n in nodes) and any("H200" in n for n in nodes)
