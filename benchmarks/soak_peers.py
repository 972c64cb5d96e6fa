"""The soak benchmark's peers (benchmarks/soak.py): aiortc clients that keep talking to ``voiceloop serve``.

Each peer is tests/test_webrtc.py's ``Client`` (mic track out, bot track in, ``events`` data channel)
that speaks on demand, times the bot's audio, and notices a session it did not end itself. ``talk`` is
one peer's whole run: utterance, answer, next; a barge-in every ``barge_every`` turns and a fresh
session every ``reconnect_every`` turns. Needs tests/ on ``sys.path`` (soak.py puts it there).
"""

from __future__ import annotations

import asyncio
import bisect
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from test_webrtc import Client, until

RATE = 16_000
SILENT_PEAK = 300  # int16 peak below which a received frame counts as silence (Opus noise floor)
LEAD = 640  # samples between the next frame the mic sends and where a new utterance starts


@dataclass
class PeerRecord:
    """What one peer saw over the whole soak (every session it opened)."""

    index: int
    sessions: int = 0
    turns: int = 0
    answered: int = 0
    barge_ins: int = 0
    interruptions: int = 0  # the server's interruption events (a barge-in it acted on)
    barge_ins_missed: int = 0  # the bot kept talking through the whole barge-in utterance
    refused: dict[str, int] = field(default_factory=dict)  # HTTP status of a refused offer -> count
    connect_failures: int = 0  # offer accepted, but no open data channel within the timeout
    lost: list[dict[str, Any]] = field(default_factory=list)
    #: (seconds since the soak started, voice-to-voice seconds) per answered turn, at the peer
    v2v: list[tuple[float, float]] = field(default_factory=list)


class Peer(Client):
    """A Client whose microphone speaks when told, which records when bot audio arrives, and which
    marks its session lost when it ends without ``leave()`` (connection or data channel closed,
    or a ``closing`` event from the server)."""

    def __init__(self) -> None:
        super().__init__(np.zeros(0, np.int16))
        self.mic = self.pc.getSenders()[0].track  # the Client's PcmTrack: silence until told
        self.heard: list[float] = []  # loop times of non-silent bot frames
        self.leaving = False
        self.lost: str | None = None
        self.channel.on("close", lambda: self._gone("data channel closed"))
        self.pc.on("connectionstatechange", self._state)

    def ready(self) -> bool:
        """Connected: the data channel is open, the server said hello, the microphone is sending."""
        opened = self.channel.readyState == "open" and bool(self.of_type("session"))
        return opened and self.mic._start is not None

    def _state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._gone(f"connection {self.pc.connectionState}")

    def _gone(self, reason: str) -> None:
        if not self.leaving and self.lost is None:
            self.lost = reason

    def lost_reason(self) -> str | None:
        closing = self.of_type("closing")
        return self.lost or (f"server closed it: {closing[0].get('reason')}" if closing else None)

    async def _drain(self, track: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await track.recv()
                if np.abs(frame.to_ndarray().astype(np.int32)).max() > SILENT_PEAK:
                    self.heard.append(loop.time())
        except MediaStreamError:
            pass

    async def open(self, url: str) -> tuple[int, str, float | None]:
        """POST the offer as JSON; (HTTP status, error text, Retry-After seconds or None)."""
        offer = await self.offer()
        async with aiohttp.ClientSession() as http, http.post(url + "offer", json=offer) as response:
            text = await response.text()
            retry = response.headers.get("Retry-After")
        if response.status != 200:
            return response.status, text[:200], float(retry) if retry and retry.isdigit() else None
        import json

        answer = json.loads(text)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return 200, "", None

    def say(self, clip: np.ndarray, speech_end: int) -> float:
        """Start ``clip`` on the microphone a few frames from now; the loop time its speech ends."""
        mic, loop = self.mic, asyncio.get_running_loop()
        at = mic._pts + LEAD  # the PcmTrack plays pcm[pts]: sample index == time since its start
        before = mic.pcm[:at]
        mic.pcm = np.concatenate([before, np.zeros(at - len(before), np.int16), clip])
        start = mic._start if mic._start is not None else loop.time()
        return start + (at + speech_end) / RATE

    def audible_at(self, when: float, within: float = 0.3) -> bool:
        """Was bot audio heard in the ``within`` seconds before ``when``?"""
        i = bisect.bisect_right(self.heard, when)
        return i > 0 and self.heard[i - 1] > when - within

    async def first_heard(self, after: float, timeout: float) -> float | None:
        """The first bot audio after ``after`` (None if none within ``timeout`` or the session ended)."""
        loop = asyncio.get_running_loop()
        while loop.time() < after + timeout and self.lost_reason() is None:
            i = bisect.bisect_right(self.heard, after)
            if i < len(self.heard):
                return self.heard[i]
            await asyncio.sleep(0.02)
        return None

    async def replied(self, turns: int, timeout: float) -> None:
        """Until the server has finished ``turns`` turns (a ``turn`` event comes once a reply has
        been sent whole or cut) and the bot has been silent 0.3 s since: a pause inside a reply
        (between sentences) must not read as its end, or the next utterance barges in unplanned."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and self.lost_reason() is None:
            done = len(self.of_type("turn")) >= turns
            if done and (not self.heard or loop.time() - self.heard[-1] > 0.3):
                return
            await asyncio.sleep(0.05)

    async def leave(self) -> None:
        self.leaving = True
        await self.close()


@dataclass
class Plan:
    """How every peer talks (the soak's options)."""

    url: str
    clips: list[tuple[np.ndarray, int]]  # (int16 16 kHz speech, sample where its speech ends)
    reconnect_every: int = 5
    barge_every: int = 3
    barge_after_s: float = 0.4  # how far into the bot's reply the barge-in starts
    answer_timeout_s: float = 15.0
    connect_timeout_s: float = 20.0
    seed: int = 0


async def open_session(plan: Plan, record: PeerRecord, deadline: float) -> Peer | None:
    """A connected peer; refused offers (429 rate limit, 503 busy) are retried after a back-off."""
    loop = asyncio.get_running_loop()
    backoff = 0.5
    while loop.time() < deadline:
        peer = Peer()
        status, _, retry = await peer.open(plan.url)
        if status == 200:
            try:
                await until(peer.ready, timeout=plan.connect_timeout_s)
                record.sessions += 1
                return peer
            except AssertionError:
                record.connect_failures += 1
        else:
            key = str(status)
            record.refused[key] = record.refused.get(key, 0) + 1
        await peer.leave()
        await asyncio.sleep(retry if retry is not None else backoff)
        backoff = min(backoff * 2, 8.0)
    return None


async def one_turn(peer: Peer, n: int, plan: Plan, record: PeerRecord, t0: float) -> None:
    """An utterance and its answer; on a barge-in turn, the next utterance starts into the reply."""
    clip, end = plan.clips[n % len(plan.clips)]
    finished = len(peer.of_type("turn"))
    spoken = peer.say(clip, end)
    record.turns += 1
    first = await peer.first_heard(spoken, plan.answer_timeout_s)
    if first is None:
        return
    record.answered += 1
    record.v2v.append((round(spoken - t0, 3), round(first - spoken, 3)))
    barge = n % plan.barge_every == plan.barge_every - 1
    if barge:
        await asyncio.sleep(plan.barge_after_s)
        cuts = len(peer.of_type("interruption"))
        clip, end = plan.clips[(n + 1) % len(plan.clips)]
        spoken = peer.say(clip, end)
        record.barge_ins += 1
        record.turns += 1
        await asyncio.sleep(max(0.0, spoken - asyncio.get_running_loop().time()))
        cut = len(peer.of_type("interruption")) > cuts
        record.interruptions += cut
        # Not cut and the bot still audible as the utterance ended: a barge-in the server missed (the
        # next audio may be the old reply's). Not cut and quiet: the reply was over before it began.
        missed = not cut and peer.audible_at(spoken)
        record.barge_ins_missed += missed
        first = await peer.first_heard(spoken, plan.answer_timeout_s)
        if first is not None and not missed:
            record.answered += 1
            record.v2v.append((round(spoken - t0, 3), round(first - spoken, 3)))
    await peer.replied(finished + (2 if barge else 1), plan.answer_timeout_s)


async def talk(index: int, plan: Plan, deadline: float, t0: float) -> PeerRecord:
    """One peer for the whole soak: sessions of ``reconnect_every`` turns until ``deadline``."""
    loop = asyncio.get_running_loop()
    rng = random.Random(plan.seed * 1000 + index)
    record = PeerRecord(index)
    await asyncio.sleep(rng.uniform(0.0, 2.0))
    turn = 0
    while loop.time() < deadline:
        peer = await open_session(plan, record, deadline)
        if peer is None:
            break
        try:
            for _ in range(plan.reconnect_every):
                if loop.time() >= deadline or peer.lost_reason() is not None:
                    break
                await one_turn(peer, turn, plan, record, t0)
                turn += 1
                await asyncio.sleep(rng.uniform(0.5, 1.5))
        finally:
            reason = peer.lost_reason()
            if reason is not None:
                record.lost.append({"at_s": round(loop.time() - t0, 1), "reason": reason})
            await peer.leave()
    return record
