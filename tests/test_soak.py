"""A one-minute soak of ``voiceloop serve`` (benchmarks/soak.py): 4 loopback peers talking, barging in
and reconnecting against the real tiny engines in a child process.

Asserts what does not depend on the machine's speed: no session lost, every peer answered, sessions
reconnected, barge-ins cut replies, the server exited cleanly with no traceback or failed turn, and
once every peer left, the server's open file descriptors and asyncio tasks are back to their idle
baseline. RSS and latency are measured (the benchmark's table) but not asserted here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers.speech import require_espeak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


async def test_one_minute_soak_loses_no_session_and_leaks_no_fd_or_task(chattts_root):
    require_espeak()
    sys.path.insert(0, str(BENCHMARKS))
    import soak

    args = soak.options(["--seconds", "60", "--reconnect-every", "3"])  # run() writes no file
    args.tts = chattts_root
    result = await soak.run(args)

    sessions, turns, idle = result["sessions"], result["turns"], result["idle"]
    assert sessions["lost"] == 0, sessions["lost_detail"]
    assert all(n > 0 for n in turns["answered_per_peer"]), turns
    assert len(turns["answered_per_peer"]) == 4
    assert all(n >= 2 for n in sessions["opened_per_peer"]), sessions  # every peer reconnected
    assert turns["barge_ins"] > 0 and turns["interruptions"] > 0, turns
    assert result["server"]["exit_code"] == 0 and result["server"]["tracebacks"] == 0, result["server"]
    assert turns["server_turn_errors"] == 0
    assert idle["after"]["fds"] <= idle["baseline"]["fds"], idle
    assert idle["after"]["tasks"] <= idle["baseline"]["tasks"], idle
    # Generous: 4 sessions' worth of threads (torch, onnxruntime, codecs) may stay pooled, not more.
    assert idle["after"]["threads"] <= idle["baseline"]["threads"] + 16, idle
    samples = result["samples"]
    assert samples and max(s["sessions"] for s in samples) == 4
    assert max(s["tasks"] for s in samples) < 50 * 4, "tasks grew far beyond 4 sessions' worth"
