"""One step of the graph (:class:`Stage`) and the error that names a failed one.

A stage knows its queues and its pipeline (for metrics, observers and barge-in decisions); the
pipeline (:mod:`voiceloop.pipeline`) wires stages in a line and runs them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .channel import Channel
from .clock import now
from .frames import EndOfStream, Frame, Interruption
from .timeline import Metrics

if TYPE_CHECKING:
    from .pipeline import Pipeline


class StageError(RuntimeError):
    """A stage raised: the pipeline was stopped; ``stage`` names the culprit."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"stage {stage!r} failed: {type(error).__name__}: {error}")
        self.stage = stage
        self.error = error


class Stage:
    """One step of the graph. Subclasses override :meth:`process` (and the lifecycle hooks).

    A stage reads frames from ``inbox`` one at a time and :meth:`emit`s frames downstream.
    Frames it does not handle should be passed on with :meth:`forward` (the default
    :meth:`process` does that); observers see each event once, when a stage first emits it.
    Stages with ``interruptible = True`` produce bot output: a barge-in cancels their current
    :meth:`process` call and drops their queued bot-output frames (see :meth:`Pipeline.interrupt`).
    """

    name: str = "stage"
    interruptible: bool = False
    #: True for sources whose producer must never block (microphone, WebRTC track).
    live: bool = False

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.inbox: Channel | None = None
        self.outbox: Channel | None = None
        self._current: Frame | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle hooks -------------------------------------------------------------------
    async def start(self) -> None:
        """Called once before any frame flows (open devices, create engine sessions)."""

    async def process(self, frame: Frame) -> None:
        await self.forward(frame)

    async def finish(self) -> None:
        """End of stream reached this stage: complete pending work before it is forwarded."""

    async def stop(self) -> None:
        """Always called when the pipeline ends, however it ends (release resources)."""

    def on_interrupt(self, interruption: Interruption) -> None:
        """Barge-in cleanup after the current work was cancelled (synchronous, runs in order
        output → … → dialogue; the output fills ``interruption.played_text``)."""

    def on_retract(self, turn_id: int, cut: bool) -> None:
        """A preemptive reply for ``turn_id`` was retracted (the user went on speaking); ``cut``:
        this stage's work on it was cancelled. Default: clean up as after a barge-in if cut."""
        if cut:
            self.on_interrupt(Interruption(turn_id=turn_id, time=now(), reason="retracted"))

    def bot_active(self) -> bool:
        """Whether this stage holds bot output for the current turn (for barge-in decisions)."""
        return self.interruptible and (self._current is not None or bool(self.inbox))

    def bot_speaking(self) -> bool:
        """Whether this stage is playing bot audio right now (output stages)."""
        return False

    def user_voiced_until(self) -> float | None:
        """Capture time up to which the current user utterance is voiced (VAD stages), else None."""
        return None

    async def produce(self) -> None:
        """Sources only (stages without an inbox): emit frames, then ``EndOfStream``."""
        raise NotImplementedError(f"{self.name} has no inbox and no produce()")

    # -- helpers ---------------------------------------------------------------------------
    @property
    def metrics(self) -> Metrics:
        assert self.pipeline is not None, "stage is not part of a pipeline"
        return self.pipeline.metrics

    async def emit(self, frame: Frame) -> None:
        """Send a frame downstream (observers see it first if it is an event)."""
        if frame.is_event:
            self.pipeline._observe(frame, self)  # type: ignore[union-attr]
        await self.forward(frame)

    async def forward(self, frame: Frame) -> None:
        """Pass on a frame another stage emitted (observers already saw it)."""
        outbox = self.outbox
        if outbox is None:
            return
        if outbox.drop_oldest or len(outbox) < outbox.maxsize:
            outbox.put_nowait(frame)  # room (or drop-oldest): no need to suspend
        else:
            await outbox.put(frame)

    def emit_nowait(self, frame: Frame) -> None:
        """For live sources: never waits (drop-oldest queue)."""
        if frame.is_event:
            self.pipeline._observe(frame, self)  # type: ignore[union-attr]
        if self.outbox is not None:
            self.outbox.put_nowait(frame)

    async def _consume(self) -> None:
        inbox = self.inbox
        assert inbox is not None
        process = self.process
        while True:
            frame = await inbox.get()
            if frame.__class__ is EndOfStream:
                await self.finish()
                await self.forward(frame)
                return
            self._current = frame
            await process(frame)
            self._current = None
