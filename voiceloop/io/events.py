"""Event records and the non-drawing views: the never-raise observer base, JSON lines, quiet.

Split from :mod:`voiceloop.io.console` (the drawing views) so transports that only need a JSON form
of pipeline events (the WebRTC data channel) do not pull in rich.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import IO, TYPE_CHECKING, Any, Self

from ..clock import now
from ..frames import (
    EndOfStream,
    FinalTranscript,
    Frame,
    Interruption,
    PartialTranscript,
    ReplyEnd,
    ReplyText,
    SpeechEnded,
    SpeechStarted,
    TurnError,
    TurnMetrics,
)

if TYPE_CHECKING:
    from ..pipeline import Pipeline

log = logging.getLogger("voiceloop")


def pipeline_counters(pipeline: Pipeline) -> dict[str, int]:
    """The run's counters so far, with live drop counts (``Metrics`` only gets those at the end)."""
    counters = dict(pipeline.metrics.counters)
    for queue, n in pipeline.dropped().items():
        if n:
            counters[f"dropped.{queue}"] = n
    return counters


class View:
    """Base of the views: observer plumbing, the never-raise guard, start/stop as a context manager."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.failures = 0

    def attach(self, pipeline: Pipeline) -> Self:
        """Observe ``pipeline``'s events and read its counters."""
        self.pipeline = pipeline
        pipeline.add_observer(self.observe)
        return self

    def observe(self, frame: Frame) -> None:
        """The observer callback: never raises (a view failure is logged once and counted)."""
        try:
            self.handle(frame)
        except Exception:
            self.failures += 1
            if self.failures == 1:
                log.warning("%s failed on %s", type(self).__name__, type(frame).__name__, exc_info=True)

    def handle(self, frame: Frame) -> None:
        """Subclasses: react to one event frame (may raise; :meth:`observe` guards it)."""

    def counters(self) -> dict[str, int] | None:
        """The attached pipeline's counters, or None when there is none (or it is mid-update)."""
        if self.pipeline is None:
            return None
        try:
            return pipeline_counters(self.pipeline)
        except RuntimeError:  # a counter was added by another thread while copying
            return None

    def start(self) -> None:
        """Begin displaying (the live view starts its refresh thread)."""

    def stop(self) -> None:
        """Finish displaying (the live view draws its final state; the plain view prints the counters)."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def event_record(frame: Frame, counters: dict[str, int] | None = None) -> dict[str, Any]:
    """The JSON object for one event frame (see :class:`JsonEvents` for the fields)."""
    turn_id = getattr(frame, "turn_id", None)
    record: dict[str, Any] = {"type": _snake(type(frame).__name__), "turn_id": turn_id}
    if isinstance(frame, SpeechStarted | SpeechEnded):
        record.update(type="speech_started" if isinstance(frame, SpeechStarted) else "speech_ended")
        record["speech_time"] = _round(frame.speech_time)
        if isinstance(frame, SpeechEnded):
            record.update(reason=frame.reason, discarded=frame.discarded)
    elif isinstance(frame, PartialTranscript):
        record.update(type="partial", text=frame.text, stable_len=frame.stable_len)
    elif isinstance(frame, FinalTranscript):
        record.update(type="final", text=frame.text)
    elif isinstance(frame, ReplyText | ReplyEnd):
        record["text"] = frame.text
    elif isinstance(frame, Interruption):
        record.update(played_text=frame.played_text, reason=frame.reason, counters=counters)
    elif isinstance(frame, TurnError):
        record.update(stage=frame.stage, error=frame.error, counters=counters)
    elif isinstance(frame, TurnMetrics):
        tl = frame.timeline
        record.update(type="turn", turn_id=tl.turn_id, text=tl.transcript, reply=tl.reply)
        record.update(played_text=tl.played_text, interrupted=tl.interrupted, discarded=tl.discarded)
        record.update(error=tl.error, played_known=tl.played_known, counters=counters)
        record["durations"] = {k: _round(v) for k, v in tl.durations().items()}
    elif isinstance(frame, EndOfStream):
        record["counters"] = counters
    t = getattr(frame, "time", None)
    record["time"] = _round(t if isinstance(t, float | int) else now())
    return record


class JsonEvents(View):
    """``--json``: one JSON object per line per event, flushed at once (UTF-8 text, not escaped).

    Every line has ``type``, ``turn_id`` (null where none) and ``time`` (pipeline clock seconds: the
    frame's own decision time where it has one, else when the event was seen). Per type:

    * ``speech_started``: ``speech_time`` (first voiced audio);
      ``speech_ended``: ``speech_time`` (end of voice), ``reason``, ``discarded``;
    * ``partial``: ``text``, ``stable_len`` (``text[:stable_len]`` is never retracted); ``final``: ``text``;
    * ``reply_text`` (a spoken piece of the reply) and ``reply_end`` (the whole reply): ``text``;
    * ``interruption``: ``played_text`` (what the user heard), ``reason``, ``counters``;
    * ``turn_error``: ``stage``, ``error``, ``counters``;
    * ``turn`` (a finished turn): ``text`` (transcript), ``reply``, ``played_text``, ``interrupted``,
      ``discarded``, ``error``, ``played_known``, ``durations`` (seconds or null: endpointing,
      asr_finalisation, handler_first_text, tts_first_audio, output_queue, output_buffering,
      voice_to_voice), ``counters``;
    * ``end_of_stream``: ``counters``.

    ``counters`` is the attached pipeline's counters (``dropped.<queue>``, ``underruns``,
    ``interruptions``, ``handler_errors``, ...), or null when no pipeline is attached. The run's
    p50/p95 summary line is the caller's to write, after ``Metrics.close()`` (``voiceloop run`` does).
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stdout

    def _write(self, record: dict[str, Any]) -> None:
        self.stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.stream.flush()

    def handle(self, frame: Frame) -> None:
        self._write(event_record(frame, self.counters()))


class QuietView(View):
    """``--quiet``: nothing but lost turns, one line each on stderr."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr

    def handle(self, frame: Frame) -> None:
        if isinstance(frame, TurnError):
            self.stream.write(f"voiceloop: turn {frame.turn_id} failed in {frame.stage}: {frame.error}\n")
            self.stream.flush()
