"""The output edge: audio sinks and the stage that feeds them.

Synthesized audio stays at the TTS rate until here; the output stage resamples it once to the
sink's rate. The output queue is backpressured by the sink (``write`` waits while the sink's
buffer is full), and a barge-in flushes the sink and reports how much of the reply was heard.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..audio import OutputAdapter
from ..clock import now
from ..frames import AudioChunk, Frame, Interruption, ReplyEnd
from ..pipeline import Stage
from ..timeline import Metrics


class AudioSink(ABC):
    """Where the bot's int16 mono audio goes (a device, a file, a WebRTC track)."""

    sample_rate: int

    async def open(self) -> None:
        """Prepare the sink (called when the pipeline starts)."""

    async def close(self) -> None:
        """Release the sink (called when the pipeline stops)."""

    def bind_metrics(self, metrics: Metrics) -> None:
        """Where to count the sink's own events (device underruns); called before ``open``."""

    @abstractmethod
    async def write(self, samples: np.ndarray) -> float | None:
        """Queue samples for playback, waiting while the buffer is full (backpressure).

        Returns the clock time at which the first of these samples is played, when the sink can
        tell, else None.
        """

    @abstractmethod
    def flush(self) -> int:
        """Discard everything not yet played (barge-in); returns the number of samples dropped."""

    @abstractmethod
    def buffered(self) -> int:
        """Samples written but not yet played."""

    @abstractmethod
    async def drain(self) -> None:
        """Wait until everything written has been played."""


class PacedSink(AudioSink):
    """A playback device simulated on the pipeline clock.

    It plays ``sample_rate`` samples per clock second, silence when empty, and holds at most
    ``buffer_s`` seconds (plus one write) before ``write`` waits. Under a virtual clock it makes
    output timing exact and deterministic; file sinks build on it. Like the speaker, it counts
    an *underrun* (``underruns``, ``underrun_samples``) when a reply's audio arrives after what was
    written before it has finished playing: a gap a listener hears. A reply plays from its first
    write until :meth:`drain` or :meth:`flush`; silence between replies is no underrun.
    """

    #: later than this is a gap (a live device's callback granularity hides less than a block)
    UNDERRUN_TOLERANCE_S = 0.002

    def __init__(self, sample_rate: int, *, buffer_s: float = 0.2) -> None:
        self.sample_rate = sample_rate
        self.buffer_s = buffer_s
        self._end = 0.0  # clock time at which the last written sample has been played
        self._playing = False  # a reply is in progress: running dry now is an underrun
        self.underruns = 0
        self.underrun_samples = 0
        self.metrics: Metrics | None = None

    def bind_metrics(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def counters(self) -> dict[str, int]:
        return {"underruns": self.underruns, "underrun_samples": self.underrun_samples}

    def _lead(self) -> float:
        return max(0.0, self._end - now())

    async def write(self, samples: np.ndarray) -> float | None:
        lead = self._lead()
        if lead > self.buffer_s:
            await asyncio.sleep(lead - self.buffer_s)
        at = now()
        gap = at - self._end
        if self._playing and gap > self.UNDERRUN_TOLERANCE_S:
            self.underruns += 1
            self.underrun_samples += round(gap * self.sample_rate)
            if self.metrics is not None:
                self.metrics.count("underruns")
        start = max(self._end, at)
        self._end = start + len(samples) / self.sample_rate
        self._playing = True
        self._played(start, samples)
        return start

    def flush(self) -> int:
        dropped = round(self._lead() * self.sample_rate)
        self._end = min(self._end, now())
        self._playing = False
        self._flushed(now())
        return dropped

    def buffered(self) -> int:
        return round(self._lead() * self.sample_rate)

    async def drain(self) -> None:
        lead = self._lead()
        if lead > 0:
            await asyncio.sleep(lead)
        self._playing = False

    def _played(self, start: float, samples: np.ndarray) -> None:
        """Hook: ``samples`` will play from clock time ``start``."""

    def _flushed(self, at: float) -> None:
        """Hook: nothing after clock time ``at`` will play."""


class OutputStage(Stage):
    """Writes synthesized audio to a sink; stamps hand-off and play times; reports what was heard."""

    name = "output"
    interruptible = True

    def __init__(self, sink: AudioSink, *, echo_reference: Any = None) -> None:
        super().__init__()
        self.sink = sink
        #: told what is played and when (``push(samples, rate, play_time)``, ``flush(at)``), so
        #: echo handling can subtract the bot's own voice from the microphone (voiceloop.aec)
        self.echo_reference = echo_reference
        self._turn: int | None = None
        self._adapter: OutputAdapter | None = None
        self._adapter_rate = 0
        self._written = 0  # samples of the current turn handed to the sink (sink rate)
        self._pieces: list[list] = []  # [text, first sample, end sample] of the current turn
        self._piece_open = False

    async def start(self) -> None:
        self.sink.bind_metrics(self.metrics)
        await self.sink.open()

    async def stop(self) -> None:
        await self.sink.close()

    def bot_active(self) -> bool:
        return self._current is not None or bool(self.inbox) or self.sink.buffered() > 0

    def bot_speaking(self) -> bool:
        return self.sink.buffered() > 0

    async def process(self, frame: Frame) -> None:
        pipeline = self.pipeline
        assert pipeline is not None
        if isinstance(frame, (AudioChunk, ReplyEnd)) and frame.turn_id == pipeline.held_turn:
            await pipeline.wait_release(frame.turn_id)  # a preemptive reply: play once confirmed
        if isinstance(frame, AudioChunk):
            await self._play(frame)
        elif isinstance(frame, ReplyEnd):
            if self._adapter is not None and self._turn == frame.turn_id:
                await self._write(frame.turn_id, self._adapter.flush())
            await self.sink.drain()
            self._turn, self._piece_open = None, False
            pipeline.finish_turn(frame.turn_id)
        else:
            await self.forward(frame)

    async def _play(self, chunk: AudioChunk) -> None:
        if chunk.turn_id != self._turn:
            self._turn, self._written, self._pieces, self._piece_open = chunk.turn_id, 0, [], False
            if self._adapter is not None:
                self._adapter.reset()
        if not self._piece_open:
            self._pieces.append([chunk.text, self._written, self._written])
        self._piece_open = not chunk.piece_end
        if self._adapter is None or self._adapter_rate != chunk.sample_rate:
            self._adapter = OutputAdapter(chunk.sample_rate, self.sink.sample_rate)
            self._adapter_rate = chunk.sample_rate
        if len(chunk.samples):
            await self._write(chunk.turn_id, self._adapter.process(chunk.samples))

    async def _write(self, turn_id: int, samples: np.ndarray) -> None:
        if not len(samples):
            return
        metrics = self.metrics
        metrics.stamp(turn_id, "output_first_sample", now())
        played_at = await self.sink.write(samples)
        if played_at is not None:
            metrics.stamp(turn_id, "first_played", played_at)
        if self.echo_reference is not None:
            start = played_at
            if start is None:  # the sink cannot tell: queued behind what it still holds
                start = now() + max(0, self.sink.buffered() - len(samples)) / self.sink.sample_rate
            self.echo_reference.push(samples, self.sink.sample_rate, start)
        self._written += len(samples)
        if self._pieces:
            self._pieces[-1][2] = self._written

    def on_retract(self, turn_id: int, cut: bool) -> None:
        """Nothing to flush: a retracted reply was held here and never reached the sink."""

    def on_interrupt(self, interruption: Interruption) -> None:
        dropped = self.sink.flush()
        if self.echo_reference is not None:
            # what the device already holds still plays: its output latency
            self.echo_reference.flush(now() + float(getattr(self.sink, "latency", 0.0)))
        if dropped:
            self.metrics.count("flushed.output_samples", dropped)
        if self._turn is not None and self._turn == interruption.turn_id:
            interruption.played_text = heard_text(self._pieces, self._written - dropped)
        self._turn, self._written, self._pieces, self._piece_open = None, 0, [], False
        if self._adapter is not None:
            self._adapter.reset()


def heard_text(pieces: list[list], played: int) -> str:
    """The text of the reply up to ``played`` samples: whole pieces, then a proportional prefix."""
    heard: list[str] = []
    for text, start, end in pieces:
        if played >= end:
            heard.append(text)
        elif played > start and end > start:
            heard.append(text[: int(len(text) * (played - start) / (end - start))])
            break
        else:
            break
    return join_pieces(heard)


def join_pieces(pieces: list[str]) -> str:
    """Join speakable pieces: a space between Latin text, nothing between CJK text."""
    out = ""
    for piece in pieces:
        if not piece:
            continue
        if out and out[-1].isascii() and not out[-1].isspace() and piece[0].isascii():
            out += " "
        out += piece
    return out
