"""What the microphone and the speaker share: opening a PortAudio stream and noticing its loss.

A device can vanish mid-conversation (unplugged, sound server restarted). PortAudio then ends
the stream by itself (``finished_callback``), raises from it, or — with some backends — simply
stops calling back; :class:`StreamWatch` turns all three into one :class:`DeviceError` that
says the device was lost, raised on the event loop by the next read or write.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from .devices_list import DeviceError, DeviceInfo


def choose_format(
    sd: Any, info: DeviceInfo, kind: str, candidates: list[tuple[int, int]], what: str
) -> tuple[int, int]:
    """The first (rate, channels) the device accepts for int16 ``kind`` streams."""
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    errors = []
    for rate, channels in dict.fromkeys(candidates):
        try:
            check(device=info.index, channels=channels, dtype="int16", samplerate=rate)
            return rate, channels
        except (sd.PortAudioError, ValueError) as exc:
            errors.append(f"{rate} Hz x{channels}: {exc}")
    raise DeviceError(f"{what} accepts none of the formats tried ({'; '.join(errors)})")


class StreamWatch:
    """Owns one PortAudio stream; reports its loss to the event loop.

    ``what`` names the device in messages ("microphone 'USB Audio'"); ``on_lost`` runs on the
    loop when the loss is noticed (to wake whoever waits for audio).
    """

    def __init__(self, what: str, stall_timeout_s: float, on_lost: Callable[[], None]) -> None:
        self.what = what
        self.stall_timeout_s = stall_timeout_s
        self.on_lost = on_lost
        self.stream: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lost: str | None = None
        self.closing = False
        self.last_callback = 0.0

    def open(self, sd: Any, factory: Callable[..., Any], **settings: Any) -> Any:
        """Create and start the stream (``factory`` = RawInputStream/RawOutputStream)."""
        self.loop = asyncio.get_running_loop()
        self.closing = False
        self.lost = None
        try:
            stream = factory(dtype="int16", finished_callback=self.finished, **settings)
        except sd.PortAudioError as exc:
            rate, channels = settings.get("samplerate"), settings.get("channels")
            raise DeviceError(f"cannot open {self.what} ({rate} Hz, {channels} ch): {exc}") from exc
        self.stream = stream
        self.last_callback = time.monotonic()
        try:
            stream.start()
        except sd.PortAudioError as exc:
            self.stream = None
            stream.close()
            raise DeviceError(f"cannot start {self.what}: {exc}") from exc
        return stream

    def call(self, fn: Callable[..., None], *args: Any) -> None:
        """From PortAudio's thread: run ``fn(*args)`` on the loop (never waits; no-op once closed)."""
        loop = self.loop
        if loop is None or self.closing:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
            loop.call_soon_threadsafe(fn, *args)

    def finished(self) -> None:
        """PortAudio's ``finished_callback``: the stream ended; unless we closed it, it was lost."""
        self.call(self.lose, "the audio stream stopped")

    def lose(self, why: str) -> None:
        if self.lost is None and not self.closing:
            self.lost = f"{self.what} lost: {why} (device unplugged or sound server gone?)"
            self.on_lost()

    def check(self) -> None:
        """Raise :class:`DeviceError` if the device is gone (stream ended, failing, or silent)."""
        stream = self.stream
        if self.lost is None and stream is not None:
            try:
                active = bool(stream.active)
            except Exception as exc:  # PortAudioError from a dead stream
                self.lose(f"the audio stream failed ({exc})")
                active = True
            if not active:
                self.lose("the audio stream stopped")
            elif time.monotonic() - self.last_callback > self.stall_timeout_s:
                self.lose(f"no audio callbacks for {self.stall_timeout_s:.1f} s")
        if self.lost is not None:
            raise DeviceError(self.lost)
        if stream is None:
            raise RuntimeError(f"{self.what} is not open")

    def close(self) -> None:
        self.closing = True
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except Exception:  # a lost device may fail to close; there is nothing left to release
                pass

    async def wait(self, event: asyncio.Event, timeout: float = 0.25) -> None:
        """Wait for ``event`` (set from the callback), checking the device at least every ``timeout``."""
        self.check()
        event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        self.check()
