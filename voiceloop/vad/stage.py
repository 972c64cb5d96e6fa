"""``VadStage``: the Endpointer in the pipeline, stamping the timeline and asking a turn model."""

from __future__ import annotations

from ..clock import now
from ..frames import FRAME_MS, AudioFrame, Frame, SpeechEnded, SpeechStarted
from ..pipeline import Stage
from .detector import VoiceDetector
from .endpointer import Endpointer
from .options import VadOptions
from .smart_turn import TurnModel, TurnOptions
from .turn_check import TurnCheck


class VadStage(Stage):
    """Adapts the :class:`Endpointer` to the graph and stamps the turn timeline.

    Forwards only utterance audio (with its pre-roll) between SpeechStarted and SpeechEnded;
    stamps ``speech_start`` (first voiced audio), ``speech_end`` (end of the last voiced audio)
    and ``endpoint`` (when the end was declared, on the pipeline clock).

    With a ``turn_model`` (:mod:`voiceloop.vad`), the utterance's audio (its last 8 s) is shown
    to the model once ``turn.check_ms`` of quiet has passed (``Endpointer.quiet_frames``); a turn
    it hears as complete ends at once (reason "turn_model") instead of after the whole hangover.
    The stage waits for the verdict (frames queue meanwhile), so a run on a file is as
    deterministic as the model. A model that fails or is late (``turn.timeout_ms``) costs
    nothing but the shortcut: the hangover decides, and ``turn.errors`` / ``turn.timeouts``
    count it.
    """

    name = "vad"

    def __init__(
        self,
        options: VadOptions | None = None,
        detector: VoiceDetector | None = None,
        *,
        turn_model: TurnModel | None = None,
        turn: TurnOptions | None = None,
    ) -> None:
        super().__init__()
        self.endpointer = Endpointer(options, detector)
        end_silence_ms = self.endpointer.options.end_silence_ms
        self._check = TurnCheck(turn_model, turn, end_silence_ms) if turn_model is not None else None

    def user_voiced_until(self) -> float | None:
        return self.endpointer.voiced_until

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, AudioFrame):
            endpointer = self.endpointer
            for out in endpointer.process(frame):
                await self._send(out)
            check = self._check
            if check is not None and endpointer.quiet_frames == check.frames:
                await self._ask_turn_model(check, frame.capture_time + FRAME_MS / 1000)
        else:
            await self.forward(frame)

    async def finish(self) -> None:
        for out in self.endpointer.finish(now()):
            await self._send(out)

    async def _ask_turn_model(self, check: TurnCheck, end: float) -> None:
        """Show the utterance so far to the turn model; end it now if the model hears it complete."""
        endpointer, metrics, options = self.endpointer, self.metrics, check.options
        turn, asked = metrics.turn(endpointer.turn_id), now()
        probability = await check.ask(metrics)
        if probability is None:
            return
        turn.turn_probability, turn.turn_model_s = probability, now() - asked
        complete = probability >= options.threshold
        metrics.count("turn.complete" if complete else "turn.incomplete")
        turn.ended_by_model = complete
        for out in check.apply(endpointer, probability, end):
            await self._send(out)

    async def _send(self, frame: Frame) -> None:
        if self._check is not None:
            self._check.feed(frame)
        if frame.__class__ is AudioFrame:
            await self.emit(frame)
            return
        metrics = self.metrics
        if isinstance(frame, SpeechStarted):
            metrics.stamp(frame.turn_id, "speech_start", frame.speech_time)
        elif isinstance(frame, SpeechEnded):
            metrics.stamp(frame.turn_id, "speech_end", frame.speech_time)
            metrics.stamp(frame.turn_id, "endpoint", now())  # when the decision was actually made
            if frame.discarded:
                metrics.turn(frame.turn_id).discarded = True
        await self.emit(frame)
        if isinstance(frame, SpeechEnded) and frame.discarded:
            self.pipeline.finish_turn(frame.turn_id)  # type: ignore[union-attr]
