"""The stage graph: stages in a line, bounded queues between them, one interruption mechanism.

Queue policy (one queue in front of every stage but the first):

* the queue after a *live* source (microphone, WebRTC) never blocks the capture side: when full,
  the oldest frame is dropped and counted as ``dropped.<queue>`` in the metrics;
* every other queue — including the one after a file source — applies backpressure: a producer
  waits for space, so a slow TTS or output slows generation down instead of growing memory.

Interruption (barge-in) is one mechanism, :meth:`Pipeline.interrupt`: it cancels the work in
progress in every *interruptible* stage (dialogue, TTS, output), drops the queued frames whose
class does not survive an interruption (reply text, synthesized audio), lets each stage clean up
from the output backwards (the output flushes its sink and reports what was actually played, the
dialogue stage then truncates its history to that text) and emits an ``Interruption`` event.

Preemptive replies use the same cut: the ASR may send a final transcript at a pause hint, before
the end of speech is declared (:meth:`Pipeline.hold`); the reply is generated but held at the
output until :meth:`Pipeline.release`, or cut without a trace by :meth:`Pipeline.retract` when the
user goes on speaking.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .channel import Channel
from .clock import now
from .frames import Frame, Interruption, SpeechEnded, SpeechStarted, TurnMetrics
from .stage import Stage, StageError
from .timeline import Metrics

log = logging.getLogger("voiceloop")

Observer = Callable[[Frame], None]


@dataclass
class BargeInOptions:
    """When user speech interrupts the bot.

    ``enabled``: interrupt at all (False = half duplex: the bot always finishes its reply).
    ``allow``: an optional filter ``(SpeechStarted) -> bool`` consulted while the bot is active
    (echo gates and minimum-loudness rules plug in here).
    """

    enabled: bool = True
    allow: Callable[[SpeechStarted], bool] | None = None
    #: "reply": user speech cuts the bot from the moment its reply is being generated (a stale
    #: answer is never spoken over a user who kept talking); "speech": only while audio plays.
    during: str = "reply"
    #: User speech needed before it interrupts, counted from its first voiced audio. 0: as soon as the
    #: VAD decides speech started (its trigger already needs 200 ms voiced); more ignores short
    #: backchannels ("嗯", "uh-huh") at the cost of a later cut.
    min_speech_ms: int = 0

    def __post_init__(self) -> None:
        if self.during not in ("reply", "speech"):
            raise ValueError(f"BargeInOptions.during must be 'reply' or 'speech', got {self.during!r}")
        if type(self.min_speech_ms) is not int or self.min_speech_ms < 0:
            raise ValueError(f"BargeInOptions.min_speech_ms must be an int >= 0, got {self.min_speech_ms!r}")


class Pipeline:
    """Runs stages in a line: ``Pipeline([source, vad, asr, dialogue, tts, output]).run()``."""

    def __init__(
        self,
        stages: Iterable[Stage],
        *,
        queue_size: int = 64,
        capture_queue_size: int = 50,
        metrics: Metrics | None = None,
        barge_in: BargeInOptions | None = None,
    ) -> None:
        self.stages = list(stages)
        if not self.stages:
            raise ValueError("a pipeline needs at least one stage")
        self.metrics = metrics if metrics is not None else Metrics()
        self.barge_in = barge_in if barge_in is not None else BargeInOptions()
        self._observers: list[Observer] = []
        #: the user turn whose reply is being generated or played (None when the bot is idle)
        self.reply_turn: int | None = None
        self._speaking: int | None = None  # the user turn whose speech is ongoing
        self._pending_barge: asyncio.TimerHandle | None = None
        #: the user turn whose preemptive reply is held at the output, and the hold's number
        self.held_turn: int | None = None
        self.hold_serial = 0
        self._released: asyncio.Future[None] | None = None
        self._held_events: list[Frame] = []  # observers see a held reply only once it is released
        self._done: asyncio.Future[None] | None = None
        self._running = False
        self.queues: list[Channel] = []
        for upstream, stage in zip(self.stages, self.stages[1:], strict=False):
            drop = upstream.live
            size = capture_queue_size if drop else queue_size
            channel = Channel(f"{upstream.name}->{stage.name}", size, drop_oldest=drop)
            upstream.outbox = channel
            stage.inbox = channel
            self.queues.append(channel)
        for stage in self.stages:
            stage.pipeline = self

    # -- observers -------------------------------------------------------------------------
    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(frame)`` for every event frame (must be quick and not raise)."""
        self._observers.append(observer)

    def _observe(self, frame: Frame, source: Stage | None) -> None:
        held = self.held_turn
        if held is not None and frame.__class__ is not SpeechEnded and getattr(frame, "turn_id", -1) == held:
            self._held_events.append(frame)  # a held reply's events wait for its release
            return
        if frame.__class__ is SpeechStarted:
            self._speaking = frame.turn_id  # type: ignore[attr-defined]
            if self._should_interrupt(frame):  # type: ignore[arg-type]
                self._barge_in(frame)  # type: ignore[arg-type]
        elif frame.__class__ is SpeechEnded:
            self._speaking = None
            if self._pending_barge is not None:
                self._pending_barge.cancel()
                self._pending_barge = None
        for observer in self._observers:
            try:
                observer(frame)
            except Exception:  # an observer must not take the pipeline down
                log.exception("observer %r failed on %s", observer, type(frame).__name__)
                self.metrics.count("observer_errors")

    # -- interruption ----------------------------------------------------------------------
    def bot_active(self) -> bool:
        return self.reply_turn is not None or any(stage.bot_active() for stage in self.stages)

    def finish_turn(self, turn_id: int) -> None:
        """Close a turn's timeline and publish it as a :class:`TurnMetrics` event."""
        if self.reply_turn == turn_id:
            self.reply_turn = None
        timeline = self.metrics.finish_turn(turn_id)
        if timeline is not None:
            self._observe(TurnMetrics(timeline), None)

    def bot_speaking(self) -> bool:
        return any(stage.bot_speaking() for stage in self.stages)

    def _should_interrupt(self, started: SpeechStarted) -> bool:
        options = self.barge_in
        if not options.enabled:
            return False
        if not (self.bot_speaking() if options.during == "speech" else self.bot_active()):
            return False
        return options.allow is None or options.allow(started)

    def _barge_in(self, started: SpeechStarted) -> None:
        """Interrupt now, or once the speech has lasted ``min_speech_ms`` (if it is still going)."""
        delay = started.speech_time + self.barge_in.min_speech_ms / 1000 - now()
        if delay <= 0:
            self.interrupt(reason="user_speech")
            return

        threshold = started.speech_time + self.barge_in.min_speech_ms / 1000

        def check() -> None:
            self._pending_barge = None
            voiced = [t for stage in self.stages if (t := stage.user_voiced_until()) is not None]
            # still talking: voiced audio reaches the threshold (100 ms slack for frames in flight)
            talking = bool(voiced) and max(voiced) >= threshold - 0.1
            if self._speaking == started.turn_id and talking and self._should_interrupt(started):
                self.interrupt(reason="user_speech")

        if self._pending_barge is not None:
            self._pending_barge.cancel()
        self._pending_barge = asyncio.get_running_loop().call_later(delay, check)

    def interrupt(self, reason: str = "user_speech") -> Interruption:
        """Cut the bot off: cancel, drop queued bot output, flush the sink, truncate history."""
        turn_id = self.reply_turn if self.reply_turn is not None else -1
        interruption = Interruption(turn_id=turn_id, time=now(), reason=reason)
        self._end_hold()
        self._cut()
        for stage in reversed(self.stages):
            if stage.interruptible:
                stage.on_interrupt(interruption)
        self.metrics.count("interruptions")
        self._observe(interruption, None)
        if turn_id >= 0:
            timeline = self.metrics.turn(turn_id)
            timeline.interrupted = True
            timeline.played_text = interruption.played_text
            self.finish_turn(turn_id)
        return interruption

    # -- preemptive replies ----------------------------------------------------------------
    def hold(self, turn_id: int) -> int:
        """Hold ``turn_id``'s bot output at the output stage until :meth:`release`; returns the
        hold's number (a preemptive final carries it, so a stale one is recognised)."""
        self.held_turn = turn_id
        self.hold_serial += 1
        self._released = asyncio.get_running_loop().create_future()
        return self.hold_serial

    def holding(self, serial: int) -> bool:
        """Whether hold number ``serial`` is still pending (neither released nor retracted)."""
        return self.held_turn is not None and serial == self.hold_serial

    def release(self, turn_id: int) -> None:
        """The end of speech confirmed the preemptive reply: let the output play it."""
        if self.held_turn == turn_id:
            self._end_hold()
            if turn_id in self.metrics.turns:
                self.metrics.turns[turn_id].preemptive = True

    def _end_hold(self, deliver: bool = True) -> None:
        self.held_turn = None
        if self._released is not None and not self._released.done():
            self._released.set_result(None)
        events, self._held_events = self._held_events, []
        for frame in events if deliver else ():
            self._observe(frame, None)

    async def wait_release(self, turn_id: int) -> None:
        """Output stages: wait while ``turn_id`` is held."""
        while self.held_turn == turn_id and self._released is not None:
            await asyncio.shield(self._released)

    def retract(self, turn_id: int) -> None:
        """The user went on speaking: cut the preemptive reply as if it never began (no
        Interruption event, no history, no reply stamps); the turn itself goes on."""
        if self.held_turn != turn_id:
            return
        self._end_hold(deliver=False)
        cut = self._cut(turn_id)
        for stage in reversed(self.stages):
            if stage.interruptible:
                stage.on_retract(turn_id, stage in cut)
        if self.reply_turn == turn_id:
            self.reply_turn = None
        if turn_id in self.metrics.turns:
            self.metrics.retract_reply(turn_id)
        self.metrics.count("retracted_replies")

    def _cut(self, turn: int | None = None) -> set[Stage]:
        """Cancel interruptible stages' current work and drop their queued bot output (all of
        it, or only ``turn``'s); returns the stages whose work was cancelled."""

        def flushable(frame: Frame) -> bool:
            return not frame.survives_interrupt and (turn is None or getattr(frame, "turn_id", None) == turn)

        cut = set()
        for stage in self.stages:
            if not stage.interruptible:
                continue
            if stage.inbox is not None:
                dropped = stage.inbox.discard(flushable)
                if dropped:
                    self.metrics.count(f"flushed.{stage.name}", dropped)
            current = stage._current
            if current is None or stage._task is None or not self._running:
                continue
            if turn is None or getattr(current, "turn_id", None) == turn:
                stage._task.cancel()
                stage._current = None
                stage._task = asyncio.get_running_loop().create_task(self._guard(stage))
                cut.add(stage)
        return cut

    # -- running ---------------------------------------------------------------------------
    async def _guard(self, stage: Stage) -> None:
        """Run a stage's worker; report a failure (with the stage's name) and stop everything."""
        try:
            if stage.inbox is None:
                await stage.produce()
            else:
                await stage._consume()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.count(f"stage_errors.{stage.name}")
            reported = self._done is not None and not self._done.done()
            # run() raises the first failure (the CLI prints it once); only later ones need the log
            (log.debug if reported else log.error)(
                "stage %s failed: %s: %s", stage.name, type(exc).__name__, exc, exc_info=not reported
            )
            if reported:
                self._done.set_exception(StageError(stage.name, exc))  # type: ignore[union-attr]
            return
        if stage is self.stages[-1] and self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def run(self) -> Metrics:
        """Start every stage, run until end of stream reaches the last stage, then stop.

        Raises :class:`StageError` if a stage failed. Cancelling ``run`` cancels every stage.
        No task outlives this call.
        """
        if self._running:
            raise RuntimeError("pipeline is already running")
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._running = True
        for queue in self.queues:
            queue.bind(loop)
        started: list[Stage] = []
        try:
            for stage in self.stages:
                await stage.start()
                started.append(stage)
            for stage in self.stages:
                stage._task = loop.create_task(self._guard(stage), name=f"voiceloop:{stage.name}")
            await self._done
        finally:
            self._running = False
            await self._cancel_all()
            for stage in reversed(started):
                try:
                    await stage.stop()
                except Exception:
                    log.exception("stage %s failed to stop", stage.name)
            for queue in self.queues:
                queue.bind(None)
                if queue.dropped:
                    self.metrics.counters[f"dropped.{queue.name}"] = queue.dropped
        return self.metrics

    async def _cancel_all(self) -> None:
        tasks = [s._task for s in self.stages if s._task is not None]
        for task in tasks:
            task.cancel()
        # Interrupt may have replaced a task while we waited; loop until all are gone.
        while tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
            tasks = [s._task for s in self.stages if s._task is not None and not s._task.done()]
            for task in tasks:
                task.cancel()

    def dropped(self) -> dict[str, int]:
        """Frames dropped so far per drop-oldest queue (live view; also in metrics at the end)."""
        return {q.name: q.dropped for q in self.queues if q.drop_oldest}
