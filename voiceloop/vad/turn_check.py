"""One utterance's audio and one turn-model call at a time: what ``VadStage`` needs to ask the model."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from ..clock import ThreadWork
from ..frames import FRAME_MS, AudioFrame, Frame, SpeechStarted
from ..timeline import Metrics
from .smart_turn import WINDOW_SECONDS, TurnModel, TurnOptions

if TYPE_CHECKING:
    from .endpointer import Endpointer

log = logging.getLogger("voiceloop")


class TurnCheck:
    """Keeps the open utterance's last 8 s and asks the model off the event loop, with a deadline.

    ``ask`` returns P(complete), or None when there is no verdict in time: the model failed
    (``turn.errors``), ran past ``timeout_ms`` (``turn.timeouts``; it may go on in its thread), or
    an earlier call still runs (``turn.busy``). None means: let the silence hangover decide.
    """

    def __init__(self, model: TurnModel, options: TurnOptions | None, end_silence_ms: int) -> None:
        self.model, self.options = model, options if options is not None else TurnOptions()
        #: quiet frames (Endpointer.quiet_frames) after which to ask: check_ms rounded up to whole frames
        self.frames = self.options.check_frames(end_silence_ms)
        self._audio: deque[np.ndarray] = deque(maxlen=WINDOW_SECONDS * 1000 // FRAME_MS)
        self._pending: asyncio.Future[float] | None = None

    def feed(self, frame: Frame) -> None:
        """Follow what the Endpointer forwards: a new utterance clears, its audio is kept."""
        if frame.__class__ is AudioFrame:
            self._audio.append(frame.samples)  # type: ignore[attr-defined]
        elif isinstance(frame, SpeechStarted):
            self._audio.clear()

    def audio(self) -> np.ndarray:
        """The open utterance so far (its last 8 s), pre-roll included."""
        return np.concatenate(self._audio) if self._audio else np.zeros(0, np.int16)

    def apply(self, endpointer: Endpointer, probability: float, end: float) -> list[Frame]:
        """Act on a verdict: a complete turn ends now (the frames to send); an unfinished one may
        get the longer hangover."""
        if probability >= self.options.threshold:
            return endpointer.end_now(end)
        if self.options.incomplete_silence_ms is not None:
            endpointer.set_hangover(self.options.incomplete_silence_ms)
        return []

    async def ask(self, metrics: Metrics) -> float | None:
        if self._pending is not None and not self._pending.done():
            metrics.count("turn.busy")  # the last call outlived its timeout and still runs
            return None
        audio = self.audio()
        model, work = self.model, ThreadWork()  # a skip-idle clock waits for the work in real time

        def call() -> float:
            try:
                return float(model.probability(audio))
            finally:
                work.done()

        self._pending = pending = asyncio.ensure_future(asyncio.to_thread(call))
        pending.add_done_callback(_retrieve)
        try:
            return await asyncio.wait_for(asyncio.shield(pending), self.options.timeout_ms / 1000)
        except TimeoutError:
            work.done()  # abandoned: the clock no longer waits for it
            metrics.count("turn.timeouts")
        except Exception as exc:  # a broken model costs the shortcut, never the session
            metrics.count("turn.errors")
            log.warning("turn model failed (the silence hangover decides): %s: %s", type(exc).__name__, exc)
        return None


def _retrieve(future: asyncio.Future) -> None:
    """A call abandoned at its deadline may fail later: not an unhandled error."""
    if not future.cancelled():
        future.exception()
