"""WebRTC media ends of the pipeline (aiortc): the browser's microphone in, the bot's voice out.

In: aiortc decodes every inbound Opus packet to a 960-sample 48 kHz *stereo* s16 frame, whatever the
sender sent, and queues it on an **unbounded** queue. :class:`WebRtcSource` therefore drains the
remote track all the time (an idle consumer would grow memory and latency), converts once per stream
with :class:`~voiceloop.audio.InputAdapter` and hands canonical 16 kHz mono 20 ms frames to a
drop-oldest queue like a microphone.

Out: aiortc's sender calls ``track.recv()`` in a tight loop, so :class:`BotAudioTrack` paces itself
on an absolute schedule that starts at its first ``recv()`` (sleep jitter never accumulates, a late
frame is caught up without drift). It takes 20 ms from :class:`WebRtcSink`'s bounded buffer and
sends silence when nothing is queued; a barge-in clears the buffer.
"""

from __future__ import annotations

import asyncio
from fractions import Fraction
from typing import Any

import numpy as np

from ..audio import InputAdapter, PlayoutFifo
from ..clock import SampleClock, now
from ..frames import FRAME_MS, AudioFrame, EndOfStream
from ..pipeline import Stage
from ..timeline import Metrics
from .output import AudioSink

#: WebRTC's audio clock (Opus always runs at 48 kHz).
WEBRTC_RATE = 48_000


def _media() -> Any:
    """aiortc's media module, or a clear error naming the extra to install."""
    try:
        from aiortc import mediastreams
    except ImportError as exc:  # pragma: no cover - depends on the environment
        from ..errors import UserError

        raise UserError("WebRTC needs aiortc and aiohttp: pip install 'voiceloop[webrtc]'") from exc
    return mediastreams


class WebRtcSource(Stage):
    """A live source fed by a remote aiortc audio track (attach it now or when it arrives).

    Ends with ``EndOfStream`` when the track ends (``MediaStreamError``) or on :meth:`end`.
    ``dropped.<queue>`` counts frames the pipeline could not take in time.
    """

    name = "webrtc"
    live = True

    def __init__(self, track: Any = None) -> None:
        super().__init__()
        self._track: Any = None
        self._attached = asyncio.Event()
        self._ended = False
        self._adapter: InputAdapter | None = None
        self._format: tuple[int, int] | None = None
        self._captured = SampleClock()  # capture times (input samples per channel received so far)
        self._seq = 0
        #: remote frames received (each drained whatever the pipeline does with it)
        self.received = 0
        if track is not None:
            self.attach(track)

    @property
    def track(self) -> Any:
        """The remote track feeding this source (None until attached)."""
        return self._track

    def attach(self, track: Any) -> None:
        """Use ``track`` (an aiortc audio ``MediaStreamTrack``) as the input; only one per source."""
        if self._track is not None and self._track is not track:
            raise ValueError("WebRtcSource already has a track")
        if getattr(track, "kind", "audio") != "audio":
            raise ValueError(f"WebRtcSource needs an audio track, got {track.kind!r}")
        self._track = track
        self._attached.set()

    def end(self) -> None:
        """Finish the stream (EndOfStream after the audio already received)."""
        self._ended = True
        self._attached.set()

    async def produce(self) -> None:
        error = _media().MediaStreamError
        await self._attached.wait()
        track = self._track
        while not self._ended and track is not None:
            try:
                frame = await track.recv()
            except error:
                break
            self.received += 1
            for out in self._frames(frame):
                self.emit_nowait(out)
        await self.emit(EndOfStream())

    def _frames(self, frame: Any) -> list[AudioFrame]:
        rate = int(frame.sample_rate)
        channels = len(frame.layout.channels)
        pcm = frame.to_ndarray()
        if pcm.dtype != np.int16 or pcm.shape[0] != 1:  # planar or float: take it to packed s16
            pcm = _to_packed_s16(pcm, channels)
        pcm = pcm.reshape(-1, channels) if channels > 1 else pcm.reshape(-1)
        if self._adapter is None or self._format != (rate, channels):  # once per stream
            self._format = (rate, channels)
            self._adapter = InputAdapter(rate, channels)
        n = len(pcm)
        # The frame's first sample was captured one frame before it arrived (plus network and jitter
        # buffer, which we cannot see). Arrivals are only ever late, so the earliest estimate anchors.
        self._captured.place(now() - n / rate, n, rate)
        out = []
        step = FRAME_MS / 1000
        for piece in self._adapter.push(pcm):
            seq = self._seq
            self._seq += 1
            out.append(AudioFrame(piece, capture_time=self._captured.origin + seq * step, seq=seq))  # type: ignore[operator]
        return out


def _to_packed_s16(pcm: np.ndarray, channels: int) -> np.ndarray:
    """Planar or float PCM from av as packed int16 of shape (1, samples * channels)."""
    data = pcm.astype(np.float32)
    if pcm.dtype.kind == "f":
        data = np.clip(data * 32767.0, -32768, 32767)
    if pcm.shape[0] == channels and channels > 1:  # planar (channels, samples) → interleaved
        data = data.T
    return data.astype(np.int16).reshape(1, -1)


class WebRtcSink(AudioSink):
    """The bot's voice as a WebRTC track: ``sink.track`` is what to add to the peer connection.

    ``write`` waits while more than ``buffer_s`` is queued (backpressure, and a bound on what a
    barge-in throws away) and returns when its first sample will be sent. Running dry while a reply
    plays (between its first ``write`` and ``drain``/``flush``) is an underrun, counted once per gap
    as ``underruns`` (and ``underrun_samples``); silence between replies is not.
    """

    def __init__(self, sample_rate: int = WEBRTC_RATE, *, buffer_s: float = 0.2) -> None:
        if sample_rate not in (8_000, 16_000, 24_000, 48_000):
            raise ValueError(f"WebRTC sink rate must be 8000, 16000, 24000 or 48000, got {sample_rate}")
        if buffer_s <= 0:
            raise ValueError(f"buffer_s must be > 0, got {buffer_s}")
        self.sample_rate = sample_rate
        self.buffer_s = buffer_s
        self.frame_samples = sample_rate * FRAME_MS // 1000
        self.metrics: Metrics | None = None
        self.underruns = 0
        self.underrun_samples = 0
        self.sent_samples = 0  # bot samples sent (silence excluded)
        self._fifo = PlayoutFifo()
        self._playing = False
        self._starved = False
        self._progress = asyncio.Event()
        self.track = BotAudioTrack(self)

    def bind_metrics(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def close(self) -> None:
        self.flush()
        self.track.stop()

    async def write(self, samples: np.ndarray) -> float | None:
        if not isinstance(samples, np.ndarray) or samples.dtype != np.int16 or samples.ndim != 1:
            shape = getattr(samples, "shape", type(samples).__name__)
            raise ValueError(
                f"WebRTC sink audio must be 1-D int16, got {shape} {getattr(samples, 'dtype', '')}"
            )
        limit = self.buffer_s * self.sample_rate
        while self._fifo.buffered > limit:
            await self._wait_progress()
        if not len(samples):
            return None
        start = self.track.next_send_time() + self._fifo.buffered / self.sample_rate
        self._fifo.push(samples)
        self._playing = True
        return start

    async def _wait_progress(self) -> None:
        self._progress.clear()
        await self._progress.wait()

    def flush(self) -> int:
        dropped = self._fifo.clear()
        self._playing = self._starved = False
        self._progress.set()
        return dropped

    def buffered(self) -> int:
        return self._fifo.buffered

    async def drain(self) -> None:
        self._playing = self._starved = False  # the reply is complete: running dry is its end
        while self._fifo.buffered > 0 and self.track.readyState == "live":
            await self._wait_progress()

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` samples to send (zero-filled when short); called by the track."""
        out = np.zeros(n, np.int16)
        copied = self._fifo.read_into(out)
        self.sent_samples += copied
        if copied < n and self._playing:
            self.underrun_samples += n - copied
            if not self._starved:
                self.underruns += 1
                if self.metrics is not None:
                    self.metrics.count("underruns")
            self._starved = True
            if self.metrics is not None:
                self.metrics.count("underrun_samples", n - copied)
        elif copied == n:
            self._starved = False
        if copied:
            self._progress.set()
        return out


class BotAudioTrack(_media().MediaStreamTrack):  # type: ignore[misc]
    """An outbound audio track paced on an absolute schedule from its first ``recv()``."""

    kind = "audio"

    def __init__(self, sink: WebRtcSink) -> None:
        super().__init__()
        self.sink = sink
        self._start: float | None = None
        self._pts = 0
        #: frames sent, and how many of them were late by more than one frame (scheduling hiccups)
        self.frames = 0
        self.late = 0

    def next_send_time(self) -> float:
        """Clock time at which the next frame (not yet taken) leaves (now, before the first recv)."""
        if self._start is None:
            return now()
        return max(now(), self._start + self._pts / self.sink.sample_rate)

    async def recv(self) -> Any:
        import av

        if self.readyState != "live":
            raise _media().MediaStreamError
        sink = self.sink
        rate = sink.sample_rate
        if self._start is None:
            self._start = now()
        else:
            wait = self._start + self._pts / rate - now()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -FRAME_MS / 1000:
                self.late += 1
        if self.readyState != "live":
            raise _media().MediaStreamError
        pcm = sink.take(sink.frame_samples)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self._pts
        frame.time_base = Fraction(1, rate)
        self._pts += len(pcm)
        self.frames += 1
        return frame
