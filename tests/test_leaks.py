"""What a long-running ``voiceloop serve`` must not accumulate (issue 19; docs/soak.md).

The soak (benchmarks/soak.py) measures RSS over 10 minutes; these tests pin its causes down with
counts that do not depend on the machine's speed or its allocator:

* the serve log keeps a bounded window of turn timelines, not every turn of every session;
* sessions that ended leave no Pipeline, Session, peer connection or timeline behind;
* torch's oneDNN kernels are cached per input shape, so a capped cache evicts (the TTS decoder sees
  a new window length at the end of most sentences: with the default 1024-entry caches RSS climbed
  for the whole soak). Read from oneDNN's own verbose log in a child process: a cache miss on a
  shape already seen means it was evicted.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_webrtc import Client, engines, loopback_only, pipeline_tasks, until  # noqa: F401 (fixture)

from voiceloop.allocator import KERNEL_CACHE_ENTRIES, KERNEL_CACHE_VARIABLES
from voiceloop.dialogue import echo
from voiceloop.loop import LoopOptions
from voiceloop.pipeline import Pipeline
from voiceloop.serve.server import ServerOptions, VoiceServer
from voiceloop.serve.session import ServeLog, Session
from voiceloop.stage import Stage
from voiceloop.timeline import TurnTimeline

pytestmark = pytest.mark.timeout(120)


def live(kind: type) -> int:
    """Objects of ``kind`` still alive after a full collection."""
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some torch objects warns of deprecated names
        warnings.simplefilter("ignore", FutureWarning)
        return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


def test_serve_log_keeps_a_bounded_window_of_turns_and_counts_them_all(tmp_path):
    baseline = live(TurnTimeline)
    log = ServeLog("quiet", stream=open(os.devnull, "w"), recent_turns=5)  # noqa: SIM115
    for sid in range(1, 5):
        pipeline = Pipeline([Stage()])
        log.session_started(sid, pipeline)
        for turn in range(6):
            pipeline.metrics.stamp(turn, "speech_end", 1.0)
            pipeline.metrics.stamp(turn, "first_played", 1.5)
            pipeline.finish_turn(turn)
        log.session_ended(sid, pipeline)
        del pipeline
    assert live(TurnTimeline) - baseline == 5  # the window, not the 24 turns seen
    summary = log.close()
    assert summary["turns"] == 24 and summary["sessions"] == 4
    assert summary["durations_over"] == 5 and summary["durations"]["voice_to_voice"]["n"] == 5
    with pytest.raises(ValueError):
        ServeLog("quiet", recent_turns=0)


async def test_ended_sessions_leave_no_pipeline_session_peer_or_timeline():
    from aiortc import RTCPeerConnection

    kinds = (Pipeline, Session, RTCPeerConnection, TurnTimeline)
    log = ServeLog("quiet", stream=open(os.devnull, "w"), recent_turns=1)  # noqa: SIM115
    options = ServerOptions(port=0, offer_rate_per_min=0)
    server = VoiceServer(engines(), echo, LoopOptions(), options, observer=log)
    await server.start()
    try:
        baseline = {kind: live(kind) for kind in kinds}
        for _ in range(6):
            client = Client(np.zeros(16_000, np.int16))
            status, answer = await client.connect(server.url)
            assert status == 200, answer
            await until(lambda c=client: c.channel.readyState == "open" and c.of_type("session"))
            client.send({"type": "say", "text": "a reply long enough to be cut off when the peer leaves"})
            await until(lambda c=client: c.of_type("reply_text"))
            await client.close()
            del client
            await until(lambda: server.sessions == 0 and not pipeline_tasks())
        await asyncio.sleep(0.2)  # closing callbacks of the last connection
        left = {kind.__name__: live(kind) - baseline[kind] for kind in kinds}
    finally:
        await server.stop()
    # the serve log's window holds one timeline; nothing else of the six sessions survives
    assert left == {"Pipeline": 0, "Session": 0, "RTCPeerConnection": 0, "TurnTimeline": 1}, left
    assert log.close()["turns"] == 6


ONEDNN_SHAPES = """
import torch
conv = torch.nn.Conv1d(64, 64, 7, padding=3, groups=64)  # depthwise, as in the TTS decoder: oneDNN
with torch.inference_mode():
    for length in range(40, 52):
        conv(torch.randn(1, 64, length))
    print("=== again", flush=True)
    conv(torch.randn(1, 64, 40))
"""


def revisit_misses(capacity: str | None) -> int:
    """Convolution cache misses when a length seen 11 lengths ago comes back."""
    env = {**os.environ, "ONEDNN_VERBOSE": "all"}
    env.pop("ONEDNN_PRIMITIVE_CACHE_CAPACITY", None)
    if capacity is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = capacity
    out = subprocess.run(
        [sys.executable, "-c", ONEDNN_SHAPES], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "=== again" in out
    created = [line for line in out.split("=== again")[1].splitlines() if "create:cache" in line]
    if not created:
        pytest.skip("this torch build runs the depthwise conv without oneDNN")
    return sum("create:cache_miss" in line and ",convolution," in line for line in created)


def test_onednn_caches_a_kernel_per_shape_and_a_capped_cache_evicts():
    assert revisit_misses(None) == 0  # default capacity: every length seen stays cached
    assert revisit_misses("4") == 1  # capped: the old length was evicted and is created again


CAPPED = """
import os, voiceloop, torch
print(*(os.environ[name] for name in voiceloop.allocator.KERNEL_CACHE_VARIABLES), flush=True)
conv = torch.nn.Conv1d(16, 16, 7, padding=3, groups=16)
with torch.inference_mode():
    for length in range(40, 40 + voiceloop.allocator.KERNEL_CACHE_ENTRIES + 8):
        conv(torch.randn(1, 16, length))
    print("=== again", flush=True)
    conv(torch.randn(1, 16, 40))
"""


def test_importing_voiceloop_caps_the_kernel_caches_unless_the_environment_sets_them():
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_CACHE_VARIABLES}
    env["ONEDNN_VERBOSE"] = "all"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", CAPPED], env=env, cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[0].split() == [str(KERNEL_CACHE_ENTRIES)] * 2
    again = out.split("=== again")[1]
    assert sum("create:cache_miss" in line and ",convolution," in line for line in again.splitlines()) == 1
    env["LRU_CACHE_CAPACITY"] = "64"  # the user's own setting wins
    out = subprocess.run(
        [sys.executable, "-c", CAPPED.split("conv =")[0]],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == [str(KERNEL_CACHE_ENTRIES), "64"]
