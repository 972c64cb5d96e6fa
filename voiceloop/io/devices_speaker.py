"""The speaker as an :class:`AudioSink`: asyncio writes into a FIFO that PortAudio's callback drains.

The callback must never wait, so it takes exactly the samples it is asked for under a short lock
and zero-fills the rest. Zero-fill while a reply is being played is an audible gap — an
*underrun*, counted (``underruns``) — while zero-fill between replies is just silence. A reply is
"playing" from its first :meth:`SpeakerSink.write` until :meth:`drain` (the reply's end) or
:meth:`flush` (barge-in). :meth:`write` waits while more than ``buffer_s`` is queued
(backpressure), which also bounds how much audio a barge-in has to throw away.

Play times come from ``stream.latency``: through ALSA → PulseAudio PortAudio's callback
``time_info`` is all zeros, so it cannot be used. The echo reference is placed on a sample clock
(every sample the device was handed, zero-fill included, after an anchor), not at each callback's
own time: callbacks run late by their scheduling delay (tens of ms under load), and a reply
resuming after an underrun would be placed that much after its true play time, its echo ahead of
its reference, which AEC3 cannot cancel.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np

from ..audio import PlayoutFifo, check_rate
from ..clock import SampleClock, now
from ..timeline import Metrics
from .devices_list import DeviceInfo, device_info, import_sounddevice, pick_device
from .devices_stream import StreamWatch, choose_format
from .output import AudioSink


class SpeakerSink(AudioSink):
    """Plays int16 mono audio on a sound device.

    ``sample_rate``: the rate to open the device at when it supports it (use the TTS rate so no
    resampling happens); otherwise the device's own rate — read ``sample_rate`` after
    :meth:`open`, the output stage resamples to it. ``buffer_s``: backpressure threshold.
    ``block_ms``: PortAudio block (20 ms; 10 ms underflows through ALSA → PulseAudio).
    """

    def __init__(
        self,
        device: str | int | None = None,
        *,
        sample_rate: int = 24_000,
        block_ms: int = 20,
        buffer_s: float = 0.2,
        latency: str | float = "low",
        stall_timeout_s: float = 3.0,
        metrics: Metrics | None = None,
    ) -> None:
        if not (isinstance(block_ms, int) and 5 <= block_ms <= 200):
            raise ValueError(f"block_ms must be an int in [5, 200], got {block_ms!r}")
        if not buffer_s > 0:
            raise ValueError(f"buffer_s must be > 0, got {buffer_s!r}")
        self.device = device
        self.sample_rate = self.requested_rate = check_rate(sample_rate)
        self.block_ms = block_ms
        self.buffer_s = buffer_s
        self.latency_setting = latency
        self.stall_timeout_s = stall_timeout_s
        self.metrics = metrics
        #: set by :meth:`open`
        self.info: DeviceInfo | None = None
        self.channels = 1
        self.latency = 0.0
        #: echo handling's reference (``push(samples, rate, play_time)``), fed from the device callback
        self.echo_reference: Any = None
        self._clock: Any = None  # the pipeline clock, captured at open (callable from any thread)
        #: gaps while a reply played, and the zero samples they cost; samples actually played
        self.underruns = 0
        self.underrun_samples = 0
        self.played_samples = 0
        self._lock = threading.Lock()
        self._fifo = PlayoutFifo()
        self._playing = False  # a reply is in progress: running dry now is an underrun
        self._starved = False  # inside an underrun (count each gap once)
        self._waiting = False  # a coroutine waits for the callback to make progress
        self._wake = asyncio.Event()
        self._watch: StreamWatch | None = None
        self._played = SampleClock()  # play times of the samples handed to the device (zero-fill too)

    def bind_metrics(self, metrics: Metrics) -> None:
        """Count underruns into the pipeline's metrics (the output stage calls this)."""
        self.metrics = metrics

    def counters(self) -> dict[str, int]:
        return {"underruns": self.underruns, "underrun_samples": self.underrun_samples}

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        self._clock = asyncio.get_running_loop().time
        self._played = SampleClock()
        sd = import_sounddevice()
        self.info = info = device_info(pick_device(self.device, "output"))
        self._watch = watch = StreamWatch(f"speaker {info.name!r}", self.stall_timeout_s, self._wake.set)
        own_rate = round(info.default_rate) or self.requested_rate
        stereo = [2] if info.outputs >= 2 else []
        candidates = [(rate, ch) for rate in (self.requested_rate, own_rate) for ch in [1, *stereo]]
        rate, channels = choose_format(sd, info, "output", candidates, watch.what)
        self.sample_rate, self.channels = rate, channels
        self.flush()
        stream = watch.open(
            sd,
            sd.RawOutputStream,
            device=info.index,
            samplerate=rate,
            channels=channels,
            blocksize=round(rate * self.block_ms / 1000),
            latency=self.latency_setting,
            callback=self._callback,
        )
        self.latency = float(stream.latency)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self.flush()

    # -- PortAudio thread ------------------------------------------------------------------
    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        watch = self._watch
        if watch is not None:
            watch.last_callback = time.monotonic()
        out = np.frombuffer(outdata, dtype=np.int16)
        mono = out if self.channels == 1 else np.empty(frames, np.int16)
        new_gap = False
        with self._lock:
            copied = self._fifo.read_into(mono)
            self.played_samples += copied
            if copied < frames:
                mono[copied:] = 0
                if self._playing:
                    self.underrun_samples += frames - copied
                    new_gap = not self._starved
                    if new_gap:
                        self.underruns += 1
                    self._starved = True
            else:
                self._starved = False
            notify = self._waiting or new_gap
        if self.channels > 1:
            out.reshape(frames, self.channels)[:] = mono[:, None]
        reference, clock = self.echo_reference, self._clock
        if clock is not None:
            # PortAudio asks for a block ahead of its playback by the latency (late, never early)
            underflow = bool(getattr(status, "output_underflow", False))
            start = self._played.place(clock() + self.latency, frames, self.sample_rate, resync=underflow)
            if reference is not None:
                # exactly what goes to the device and when it sounds, zero-fill included: aligned
                # through underruns, and final up to the block's end (the canceller waits for that)
                reference.push(mono.copy(), self.sample_rate, start)
        if notify and watch is not None:
            watch.call(self._progress, new_gap)

    # -- event loop ------------------------------------------------------------------------
    def _progress(self, new_gap: bool) -> None:
        if new_gap and self.metrics is not None:
            self.metrics.count("underruns")
        self._wake.set()

    def _check(self) -> None:
        if self._watch is None:
            raise RuntimeError("SpeakerSink used before open()")
        self._watch.check()

    async def _wait_progress(self) -> None:
        """Wait for the callback to consume a block (checking the device meanwhile)."""
        self._check()
        with self._lock:
            self._waiting = True
        try:
            await self._watch.wait(self._wake)  # type: ignore[union-attr]
        finally:
            with self._lock:
                self._waiting = False

    async def write(self, samples: np.ndarray) -> float | None:
        if not isinstance(samples, np.ndarray) or samples.dtype != np.int16 or samples.ndim != 1:
            shape = getattr(samples, "shape", type(samples).__name__)
            dtype = getattr(samples, "dtype", "")
            raise ValueError(f"speaker audio must be 1-D int16, got {shape} {dtype}")
        self._check()
        limit = self.buffer_s * self.sample_rate
        while self._fifo.buffered > limit:
            await self._wait_progress()
        if not len(samples):
            return None
        with self._lock:
            start = now() + self._fifo.buffered / self.sample_rate + self.latency
            self._fifo.push(samples)
            self._playing = True
        return start

    def flush(self) -> int:
        with self._lock:
            dropped = self._fifo.clear()
            self._playing = self._starved = False
        return dropped

    def buffered(self) -> int:
        return self._fifo.buffered

    async def drain(self) -> None:
        """Wait until everything written has reached the listener (FIFO empty + device latency)."""
        with self._lock:
            self._playing = False  # the reply is complete: running dry from here is its end
            self._starved = False
        if self._watch is None or self._watch.stream is None:
            return
        while self._fifo.buffered > 0:
            await self._wait_progress()
        await asyncio.sleep(self.latency)
