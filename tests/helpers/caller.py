"""An aiortc caller that behaves like the page: waits when the server is full, and fails over.

It keeps the call id the first answer gave, watches the ``alive`` heartbeats, and when they stop for
``failover_after_s`` (or the connection fails) it offers again with that call id, on a new peer
connection. A 503/429 is retried after its Retry-After. Its microphone plays utterances on demand
(16 kHz int16, paced 20 ms frames) and silence in between, like an open mic.
"""

from __future__ import annotations

import asyncio
import json
import time
from fractions import Fraction
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack


class Mic(MediaStreamTrack):
    """Silence, or the queued utterance, in paced 20 ms frames."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.pending = np.zeros(0, np.int16)
        self._start: float | None = None
        self._pts = 0
        self.spoken_until = 0.0  # loop time the last queued utterance ends

    def say(self, pcm: np.ndarray) -> None:
        self.pending = np.concatenate([self.pending, pcm.astype(np.int16)])

    async def recv(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            await asyncio.sleep(max(0.0, self._start + self._pts / 16_000 - loop.time()))
        piece, self.pending = self.pending[:320], self.pending[320:]
        frame = mic_frame(piece, self._pts)
        self._pts += 320
        return frame


def mic_frame(piece: np.ndarray, pts: int) -> av.AudioFrame:
    """One 20 ms 16 kHz mono frame at ``pts`` (samples): ``piece`` padded with silence."""
    chunk = np.zeros(320, np.int16)
    chunk[: len(piece)] = piece
    frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = 16_000, pts, Fraction(1, 16_000)
    return frame


class Caller:
    """One caller of ``url`` (a gateway or a single server)."""

    def __init__(self, url: str, token: str | None = None, failover_after_s: float = 2.0) -> None:
        self.url = url
        self.token = token
        self.failover_after_s = failover_after_s
        self.call: str | None = None
        self.answers: list[dict] = []  # every 200 answer (its worker, session, call)
        self.refusals: list[tuple[int, str | None]] = []  # (status, Retry-After) of each refused offer
        self.events: list[dict] = []  # of every connection, in order
        self.bot_peak = 0
        self.lost_at: list[float] = []  # monotonic times a failover started
        self.listening_at: list[float] = []  # monotonic times a connection's events channel opened
        self.pc: RTCPeerConnection | None = None
        self.channel: Any = None
        self.mic: Mic | None = None
        self._last_heard = time.monotonic()
        self._tasks: set[asyncio.Task] = set()
        self._watch: asyncio.Task | None = None
        self._closed = False

    # -- connecting --------------------------------------------------------------------------
    async def start(self, retry: bool = True) -> int:
        """Connect (retrying 503/429 after Retry-After when ``retry``); the final HTTP status."""
        status = await self._connect(retry)
        if status == 200 and self._watch is None:
            self._watch = asyncio.ensure_future(self._watchdog())
        return status

    async def _connect(self, retry: bool) -> int:
        while not self._closed:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            channel = pc.createDataChannel("events")
            channel.on("message", self._on_message)
            channel.on("open", lambda: self.listening_at.append(time.monotonic()))
            mic = Mic()
            pc.addTrack(mic)
            pc.on("track", lambda track: self._spawn(self._listen(track)))
            await pc.setLocalDescription(await pc.createOffer())
            body = {"sdp": pc.localDescription.sdp, "type": "offer"}
            if self.call is not None:
                body["call"] = self.call
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            async with (
                aiohttp.ClientSession() as http,
                http.post(self.url + "offer", json=body, headers=headers) as response,
            ):
                answer = await response.json(content_type=None)
                retry_after = response.headers.get("Retry-After")
            if response.status != 200:
                await pc.close()
                self.refusals.append((response.status, retry_after))
                if not retry or response.status not in (429, 503) or retry_after is None:
                    return response.status
                await asyncio.sleep(min(float(retry_after), 2.0))
                continue
            self.answers.append(answer)
            self.call = answer["call"]
            old, self.pc, self.mic, self.channel = self.pc, pc, mic, channel
            self._last_heard = time.monotonic()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
            if old is not None:
                self._spawn(old.close())
            return 200
        return 0

    def _on_message(self, message: str) -> None:
        self._last_heard = time.monotonic()
        event = json.loads(message)
        if event["type"] != "alive":
            self.events.append(event)

    async def _listen(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                peak = int(np.abs(frame.to_ndarray().astype(np.int32)).max())
                self.bot_peak = max(self.bot_peak, peak)
        except MediaStreamError:
            pass

    async def _watchdog(self) -> None:
        """Heartbeats stopped: offer again with the call id (the page's failover)."""
        while not self._closed:
            await asyncio.sleep(0.1)
            if time.monotonic() - self._last_heard > self.failover_after_s:
                self.lost_at.append(time.monotonic())
                await self._connect(retry=True)

    # -- talking -----------------------------------------------------------------------------
    def say(self, pcm: np.ndarray) -> None:
        assert self.mic is not None
        self.mic.say(pcm)

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, bye: bool = True) -> None:
        """Hang up (``bye``: tell the server first, as the page does, so the call's turns are dropped)."""
        self._closed = True
        channel = self.channel
        if bye and channel is not None and channel.readyState == "open":
            channel.send(json.dumps({"type": "bye"}))
            await asyncio.sleep(0.1)  # let it leave before the connection closes
        if self._watch is not None:
            self._watch.cancel()
        if self.pc is not None:
            await self.pc.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
