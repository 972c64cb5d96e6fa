"""The ASR stage: adapts an :class:`AsrSession` to the graph (VAD events in, transcripts out)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from ..clock import now
from ..frames import (
    AudioFrame,
    CharInfo,
    FinalTranscript,
    Frame,
    PartialTranscript,
    SpeechEnded,
    SpeechPaused,
    SpeechStarted,
)
from ..pipeline import Stage
from .base import AsrEngine, AsrSession

#: Frames held after a pause hint before concluding the speech resumed (the hangover is shorter).
HOLD_FRAMES = 25


class AsrStage(Stage):
    """Feeds utterance audio to a streaming session; emits partial and final transcripts.

    Consumes audio and speech start/pause/end; passes on other frames. A SpeechPaused hint starts
    the final pass early (on a copy of the stream), so the hangover and the final overlap. Engines
    report times from the start of the utterance audio they were fed; the stage shifts them to
    stream time.

    ``preemptive=True`` also sends that early final on at once, so the reply is generated during
    the hangover too; the pipeline holds the reply at the output until the end of speech confirms
    it and retracts it if the user goes on speaking. The cost: a handler may be called for a turn
    that then continues (its ``ctx.cancelled`` is set, and its text is forgotten).
    """

    name = "asr"

    def __init__(self, engine: AsrEngine, *, preemptive: bool = False) -> None:
        super().__init__()
        self.engine = engine
        self.preemptive = preemptive
        #: the turn whose early final was sent on at the current pause (its reply is held), if any
        self._preempted: int | None = None
        self.session: AsrSession | None = None
        self.turn_id: int | None = None
        self.offset: float | None = None  # stream time of the utterance's first fed sample
        #: final transcript computed speculatively at the latest SpeechPaused of this utterance
        self._speculative: asyncio.Future | None = None
        #: audio that arrived after the pause: held back (no streaming steps competing with the
        #: final pass) until the end of speech makes it irrelevant or resumed speech needs it
        self._held: list[AudioFrame] = []

    async def start(self) -> None:
        self.session = self.engine.session()

    async def process(self, frame: Frame) -> None:
        session = self.session
        assert session is not None
        if isinstance(frame, AudioFrame):
            if self.turn_id is None:
                return  # audio outside an utterance carries no speech for us
            if self.offset is None:
                self.offset = frame.stream_time
            if self._speculative is not None:
                self._held.append(frame)
                if len(self._held) > HOLD_FRAMES:  # no end of speech this long after the pause: resumed
                    self._drop_speculation()
                    await self._release_held()
                return
            await self._accept(frame)
        elif isinstance(frame, SpeechStarted):
            self._drop_speculation()
            self._held.clear()
            session.reset()
            self.turn_id, self.offset = frame.turn_id, None
        elif isinstance(frame, SpeechPaused):
            if frame.turn_id == self.turn_id:
                self._drop_speculation()  # speech resumed since the last pause: that one is stale
                await self._release_held()
                self._speculative = asyncio.ensure_future(session.finalize_preview())
                if self.preemptive:
                    turn_id, offset = frame.turn_id, self.offset or 0.0
                    self._speculative.add_done_callback(lambda f: self._preempt(f, turn_id, offset))
        elif isinstance(frame, SpeechEnded):
            turn_id, offset, self.turn_id, self.offset = frame.turn_id, self.offset or 0.0, None, None
            exact = frame.reason in ("silence", "turn_model") and not frame.discarded
            if self._preempted is not None:
                if exact:  # the early final stands: play its reply
                    self._preempted, self._speculative = None, None
                    self._held.clear()
                    session.reset()
                    self.pipeline.release(turn_id)  # type: ignore[union-attr]
                    return
                self._drop_speculation()
            speculative, self._speculative = self._speculative, None
            if frame.discarded:
                _cancel(speculative)
                self._held.clear()
                session.reset()
                return
            # After a silence endpoint the last pause hint covers all the speech: its final is exact.
            final = await speculative if speculative is not None and exact else None
            if final is None:
                _cancel(speculative)
                await self._release_held(turn_id, offset)
                final = await session.finalize()
            else:
                self._held.clear()  # trailing silence: the speculative final already covers the speech
                session.reset()
            _shift(final, offset)
            final.turn_id = turn_id
            self.metrics.stamp(turn_id, "final_transcript", now())
            self.metrics.turn(turn_id).transcript = final.text
            await self.emit(final)
        else:
            await self.forward(frame)

    async def _accept(
        self, frame: AudioFrame, turn_id: int | None = None, offset: float | None = None
    ) -> None:
        assert self.session is not None
        partial = await self.session.accept(frame.samples)
        turn_id = self.turn_id if turn_id is None else turn_id
        if partial is not None and turn_id is not None:
            _shift(partial, self.offset if offset is None else offset)
            partial.turn_id = turn_id
            self.metrics.stamp(turn_id, "first_partial", now())
            await self.emit(partial)

    async def _release_held(self, turn_id: int | None = None, offset: float | None = None) -> None:
        held, self._held = self._held, []
        for frame in held:
            await self._accept(frame, turn_id, offset)

    def _drop_speculation(self) -> None:
        _cancel(self._speculative)
        self._speculative = None
        if self._preempted is not None:
            turn_id, self._preempted = self._preempted, None
            self.pipeline.retract(turn_id)  # type: ignore[union-attr]

    def _preempt(self, future: asyncio.Future, turn_id: int, offset: float) -> None:
        """The early final is ready during the hangover: send it on, its reply held."""
        pipeline, outbox = self.pipeline, self.outbox
        if future is not self._speculative or future.cancelled() or future.exception() is not None:
            return
        final = future.result()
        if final is None or not final.text.strip() or pipeline is None or outbox is None:
            return  # no early final (engine cannot, or nothing heard): the end of speech decides
        if pipeline.held_turn is not None or len(outbox) >= outbox.maxsize:
            return
        final = replace(final, turn_id=turn_id)  # a copy: the engine's object is shared with the stream
        _shift(final, offset)
        final.preemptive = pipeline.hold(turn_id)
        self._preempted = turn_id
        self.metrics.stamp(turn_id, "final_transcript", now())
        self.metrics.turn(turn_id).transcript = final.text
        self.emit_nowait(final)

    async def finish(self) -> None:
        if self.turn_id is not None and self.session is not None:
            self.session.reset()  # the VAD closes utterances at end of stream; this is a guard

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.aclose()


def _cancel(future: asyncio.Future | None) -> None:
    if future is not None and not future.done():
        future.cancel()
    elif future is not None and not future.cancelled():
        future.exception()  # retrieved: a failed speculation is not an unhandled error


def _shift(transcript: PartialTranscript | FinalTranscript, offset: float) -> None:
    """Move utterance-relative times to stream time (new CharInfo objects: engines may share them)."""
    if offset:
        transcript.chars = [
            CharInfo(c.char, c.confidence, c.start + offset, c.end + offset) for c in transcript.chars
        ]
        transcript.start += offset
        transcript.end += offset
