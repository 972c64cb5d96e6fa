"""The microphone as a live source stage: PortAudio callback → bounded buffer → canonical frames.

The capture callback runs on PortAudio's thread and must never wait, so it only copies the block
and hands it to the event loop (``call_soon_threadsafe``). On the loop the block lands in a
bounded buffer that drops the *oldest* block when the pipeline falls behind (counted as
``dropped.mic``): a live conversation wants the newest audio, not a growing backlog.

The device is opened at the canonical 16 kHz mono when it supports it (the sound server then
resamples, for free); otherwise at its own rate and channel count, converted here with
:class:`~voiceloop.audio.InputAdapter`. A stream that stops by itself, errors, or goes silent
(no callbacks) ends the stage with a :class:`DeviceError` saying the device was lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import numpy as np

from ..audio import MAX_CHANNELS, InputAdapter, check_rate
from ..clock import SampleClock, now
from ..frames import FRAME_MS, FRAME_SAMPLES, INPUT_RATE, AudioFrame, EndOfStream
from ..pipeline import Stage
from .devices_list import DeviceInfo, device_info, import_sounddevice, pick_device
from .devices_stream import StreamWatch, choose_format


class MicSource(Stage):
    """Captures a sound device as canonical 16 kHz mono 20 ms :class:`AudioFrame` s.

    ``device``: None (default input), an index, or a name (see :func:`pick_device`).
    ``sample_rate``/``channels`` force the device format (default: 16 kHz mono if supported,
    else the device's own). ``buffer_blocks`` bounds the capture buffer (drop-oldest beyond it).
    ``max_seconds`` ends the stream after that much audio (tests, benchmarks); :meth:`end` ends it
    on request. ``stall_timeout_s``: no callback for that long means the device is gone.
    """

    name = "mic"
    live = True

    def __init__(
        self,
        device: str | int | None = None,
        *,
        sample_rate: int | None = None,
        channels: int | None = None,
        block_ms: int = FRAME_MS,
        latency: str | float = "low",
        buffer_blocks: int = 25,
        max_seconds: float | None = None,
        stall_timeout_s: float = 3.0,
    ) -> None:
        super().__init__()
        if sample_rate is not None:
            check_rate(sample_rate)
        if channels is not None and not (isinstance(channels, int) and 1 <= channels <= MAX_CHANNELS):
            raise ValueError(f"channels must be an int in [1, {MAX_CHANNELS}], got {channels!r}")
        if not (isinstance(block_ms, int) and 5 <= block_ms <= 200):
            raise ValueError(f"block_ms must be an int in [5, 200], got {block_ms!r}")
        if buffer_blocks < 1:
            raise ValueError(f"buffer_blocks must be >= 1, got {buffer_blocks}")
        self.device = device
        self.requested_rate = sample_rate
        self.requested_channels = channels
        self.block_ms = block_ms
        self.latency_setting = latency
        self.buffer_blocks = buffer_blocks
        self.max_seconds = max_seconds
        self.stall_timeout_s = stall_timeout_s
        #: what was opened (set by :meth:`start`)
        self.info: DeviceInfo | None = None
        self.sample_rate = 0
        self.channels = 0
        self.latency = 0.0
        #: capture blocks dropped because the pipeline fell behind; PortAudio status flags seen
        self.dropped = 0
        self.xruns = 0
        #: longest wait of a captured block for the event loop (gauge ``mic.handoff_max_ms``): a
        #: stalled loop shows here before the buffer overflows into ``dropped.mic``
        self.handoff_max_s = 0.0
        self._watch: StreamWatch | None = None
        self._blocks: deque[tuple[bytes, float, bool]] = deque()  # (block, callback time, overflow)
        self._wake = asyncio.Event()
        self._ended = False
        self._adapter: InputAdapter | None = None
        # capture times (device samples per channel, dropped ones included); PortAudio reports lost
        # samples, so a late callback (a loaded machine) is no reason to move the times
        self._captured = SampleClock(trust_count=True)
        self._seq = 0

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        sd = import_sounddevice()
        self.info = info = device_info(pick_device(self.device, "input"))
        self._watch = watch = StreamWatch(f"microphone {info.name!r}", self.stall_timeout_s, self._wake.set)
        own_rate = round(info.default_rate) or INPUT_RATE
        if self.requested_rate is not None or self.requested_channels is not None:
            candidates = [(self.requested_rate or INPUT_RATE, self.requested_channels or 1)]
        else:  # 16 kHz mono (the sound server resamples for free), else the device's own format
            candidates = [(INPUT_RATE, 1), (own_rate, 1), (own_rate, max(1, min(info.inputs, MAX_CHANNELS)))]
        rate, channels = choose_format(sd, info, "input", candidates, watch.what)
        blocksize = round(rate * self.block_ms / 1000)
        self.sample_rate, self.channels = rate, channels
        direct = rate == INPUT_RATE and channels == 1 and blocksize == FRAME_SAMPLES
        self._adapter = None if direct else InputAdapter(rate, channels)
        self._abort = sd.CallbackAbort
        stream = watch.open(
            sd,
            sd.RawInputStream,
            device=info.index,
            samplerate=rate,
            channels=channels,
            blocksize=blocksize,
            latency=self.latency_setting,
            callback=self._callback,
        )
        self.latency = float(stream.latency)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.close()

    def end(self) -> None:
        """Finish the stream cleanly (EndOfStream after the audio already captured)."""
        self._ended = True
        self._wake.set()

    # -- PortAudio thread ------------------------------------------------------------------
    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        watch = self._watch
        if watch is None or watch.loop is None or watch.loop.is_closed():
            raise self._abort
        t = watch.last_callback = time.monotonic()
        watch.call(self._put, bytes(indata), t, bool(status), bool(status.input_overflow))

    # -- event loop ------------------------------------------------------------------------
    def _put(self, block: bytes, t: float, xrun: bool, overflow: bool) -> None:
        """On the loop: queue a captured block; ``xrun``: any PortAudio status flag, ``overflow``:
        input samples were lost before this block (its capture time then re-anchors)."""
        waited = time.monotonic() - t
        if waited > self.handoff_max_s:
            self.handoff_max_s = waited
            if self.pipeline is not None:
                self.metrics.gauge("mic.handoff_max_ms", round(waited * 1000))
        if xrun:
            self.xruns += 1
            self._count("xruns.mic")
        if len(self._blocks) >= self.buffer_blocks:
            old, _, lost = self._blocks.popleft()
            self._skip(len(old) // (2 * self.channels))
            if lost:  # the loss PortAudio reported now lies before the next block
                if self._blocks:
                    self._blocks[0] = (*self._blocks[0][:2], True)
                else:
                    overflow = True
            self.dropped += 1
            self._count("dropped.mic")
        self._blocks.append((block, t, overflow))
        self._wake.set()

    def _count(self, name: str) -> None:
        if self.pipeline is not None:
            self.metrics.count(name)

    async def produce(self) -> None:
        if self._watch is None:
            raise RuntimeError("MicSource.produce() before start()")
        blocks = self._blocks
        watch = self._watch
        while not self._ended:
            while not blocks and not self._ended:
                await watch.wait(self._wake)
            while blocks:
                block, t, overflow = blocks.popleft()
                for frame in self._frames(block, t, overflow):
                    self.emit_nowait(frame)
            if self.max_seconds is not None and self._seq * FRAME_MS / 1000 >= self.max_seconds:
                break
        await self.emit(EndOfStream())

    def _skip(self, samples: int) -> None:
        """Account for a dropped block so later frames keep their true capture times and seq."""
        self._captured.samples += samples
        self._seq += round(samples * INPUT_RATE / self.sample_rate / FRAME_SAMPLES)

    def _frames(self, block: bytes, t_callback: float, overflow: bool) -> list[AudioFrame]:
        samples = np.frombuffer(block, dtype=np.int16)
        n = len(samples) // self.channels
        # The block's first sample was captured one block before the callback. (Not minus the reported
        # input latency: PortAudio hands a capture block over once it is complete, and through
        # ALSA → PulseAudio the reported 40 ms is overstated — measured: benchmarks/device_latency.py.)
        estimate = t_callback + (now() - time.monotonic()) - n / self.sample_rate
        self._captured.place(estimate, n, self.sample_rate, resync=overflow)
        if self._adapter is None:
            pieces = [samples.copy()]
        else:
            pieces = self._adapter.push(samples.reshape(-1, self.channels) if self.channels > 1 else samples)
        out = []
        step = FRAME_MS / 1000
        for piece in pieces:
            seq = self._seq
            self._seq += 1
            out.append(AudioFrame(piece, capture_time=self._captured.origin + seq * step, seq=seq))  # type: ignore[operator]
        return out
