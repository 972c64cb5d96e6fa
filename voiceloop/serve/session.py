"""One WebRTC peer's session (events out, the page's requests in, its voice) and the ``serve`` log.

The page and the server talk over the ``events`` data channel, one JSON object per message.

Server → page: every pipeline event as :func:`voiceloop.io.events.event_record` gives it, plus

* ``{"type": "session", "session": N, "voice": V|null}`` first, when the channel opens;
* ``{"type": "voice", "voice": V|null}`` after a voice change;
* ``{"type": "say", "turn_id": N, "text": T}`` when typed text was queued as bot turn ``N``;
* ``{"type": "error", "error": "...", "request": "say"|"voice"|null}`` for a message the server refused;
* ``{"type": "closing", "reason": "..."}`` when the server drops the session (e.g. no audio from the peer).

Page → server:

* ``{"type": "say", "text": "...", "voice": V}``: speak the text as a bot turn (``voice`` optional:
  switch first); it goes through the dialogue stage like a handler reply, so barge-in, flush,
  ``reply_text`` and the turn's timeline behave the same;
* ``{"type": "voice", "voice": V}``: this session's voice from the next piece on (null: the default);
* ``{"type": "tts", ...}``: this session's synthesis settings (:mod:`voiceloop.serve.tts_panel`);
* ``{"type": "bye"}``: the user hangs up (sent before closing): the call's checkpointed turns are
  dropped. A connection that closes without it may be a failover: the turns stay until they expire.

A voice from the page is ``seed:N`` (when the engine can sample voices) or a name ``GET /voices``
lists; never a path or a pasted speaker string (a remote page must not make the server read files).
A bad message is answered with an ``error`` event; it never ends the session.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter, deque
from typing import IO, Any

from ..clock import now
from ..dialogue import DialogueStage
from ..frames import Frame, TurnError, TurnMetrics
from ..io.events import event_record, pipeline_counters
from ..io.webrtc import WebRtcSink, WebRtcSource
from ..pipeline import Pipeline
from ..timeline import Metrics
from ..tts import TtsStage
from ..tts.base import TtsEngine
from .tts_panel import PANEL_MESSAGES, TtsPanel, panel_catalog

log = logging.getLogger(__name__)

#: events kept for a client whose data channel is not open yet (oldest dropped beyond)
EVENT_BACKLOG = 200
#: the largest message the page may send (a say request is text, not a document)
MAX_MESSAGE_BYTES = 8 * 1024
#: finished turns whose timelines the closing summary's percentiles are taken over (the most recent
#: ones): a server runs for weeks, its log must not keep every turn it ever saw
SUMMARY_TURNS = 10_000
#: seeds a page may ask for (``seed:N``); a torch generator takes any int64, the page needs no more
MAX_SEED = 2**31 - 1


class ClientError(ValueError):
    """A message from the page the server cannot act on (reported back as an ``error`` event)."""


def voice_catalog(engine: TtsEngine, default: str | None) -> dict[str, Any]:
    """The TTS catalog: the default voice, whether ``seed:N`` works, the saved voice names (``GET
    /voices``), and under ``tts`` the panel's knobs (``GET /config`` has them too)."""
    names = [str(n) for n in engine.voice_names()]
    return {"default": default, "seeds": engine.seed_voices, "names": names, "tts": panel_catalog(engine)}


def check_voice(spec: Any, catalog: dict[str, Any]) -> str | None:
    """A page's voice choice, validated against the catalog (None: the session default)."""
    if spec is None or spec == "":
        return None
    if not isinstance(spec, str) or len(spec) > 80:
        raise ClientError("voice must be a string such as 'seed:42' or a name from GET /voices")
    text = spec.strip()
    if text[:5].lower() == "seed:":
        if not catalog["seeds"]:
            raise ClientError("this TTS engine cannot sample voices by seed; GET /voices lists its voices")
        try:
            seed = int(text[5:].strip())
        except ValueError:
            raise ClientError(f"voice {spec!r}: 'seed:' must be followed by an integer") from None
        if not 0 <= seed <= MAX_SEED:
            raise ClientError(f"voice {spec!r}: the seed must be in [0, {MAX_SEED}]")
        return f"seed:{seed}"
    if text in catalog["names"]:
        return text
    raise ClientError(f"unknown voice {spec!r}; GET /voices lists the voices")


def _stage(pipeline: Pipeline, kind: type) -> Any:
    found = [s for s in pipeline.stages if isinstance(s, kind)]
    if not found:
        raise TypeError(f"a WebRTC session needs a {kind.__name__} in its pipeline")
    return found[0]


class Session:
    """One peer: its connection, pipeline task, events channel, and the page's requests."""

    def __init__(
        self,
        sid: int,
        pc: Any,
        source: WebRtcSource,
        sink: WebRtcSink,
        pipeline: Pipeline,
        *,
        catalog: dict[str, Any],
        max_say_chars: int = 500,
    ) -> None:
        self.id = sid
        self.pc = pc
        self.source = source
        self.sink = sink
        self.pipeline = pipeline
        self.catalog = catalog
        self.max_say_chars = max_say_chars
        self.dialogue: DialogueStage = _stage(pipeline, DialogueStage)
        self.tts: TtsStage = _stage(pipeline, TtsStage)
        self.channel: Any = None
        self.task: Any = None
        self.backlog: list[str] = []
        self.closing = False
        self.hung_up = False  # the page said bye: the call ends here (no failover will follow)
        self.watchdog: Any = None
        self.panel = TtsPanel(self)  # the page's text-to-speech panel (voiceloop.serve.tts_panel)
        self.send({"type": "session", "session": sid, "voice": self.tts.voice})

    # -- server → page ---------------------------------------------------------------------
    def send_event(self, frame: Frame) -> None:
        """Pipeline observer: every event frame to the page."""
        self.send(event_record(frame, pipeline_counters(self.pipeline)))

    def send(self, record: dict[str, Any]) -> None:
        record.setdefault("time", round(now(), 4))
        line = json.dumps(record, ensure_ascii=False, default=str)
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(line)
        else:
            self.backlog.append(line)
            del self.backlog[:-EVENT_BACKLOG]

    def open_channel(self, channel: Any) -> None:
        self.channel = channel
        channel.on("message", self.on_message)
        if channel.readyState == "open":
            self.flush_backlog()

    def flush_backlog(self) -> None:
        backlog, self.backlog = self.backlog, []
        for line in backlog:
            self.channel.send(line)

    # -- page → server ---------------------------------------------------------------------
    def on_message(self, message: Any) -> None:
        """Act on one message from the page; never raises (a bad one gets an ``error`` event)."""
        request = None
        try:
            if not isinstance(message, str):
                raise ClientError("messages must be JSON text, not binary")
            if len(message.encode()) > MAX_MESSAGE_BYTES:
                raise ClientError(f"message over {MAX_MESSAGE_BYTES} bytes")
            try:
                data = json.loads(message)
            except ValueError as exc:
                raise ClientError(f"message is not JSON: {exc}") from None
            if not isinstance(data, dict) or not isinstance(data.get("type"), str):
                raise ClientError('a message must be a JSON object with a "type"')
            if data["type"] not in ("say", "voice", "bye", *PANEL_MESSAGES):
                raise ClientError(
                    f"unknown message type {data['type']!r}; expected 'say', 'voice', 'tts' or 'bye'"
                )
            request = data["type"]
            if request in PANEL_MESSAGES:
                self.panel.on_message(data)
            elif request == "bye":  # the user hangs up: the call's checkpoint goes with the session
                self.hung_up = True
            elif request == "say":
                self._say(data)
            elif "voice" not in data:
                raise ClientError('a voice message needs "voice" (a name, "seed:N" or null)')
            else:
                self.set_voice(data["voice"])
        except (ClientError, ValueError, RuntimeError) as exc:
            self.send({"type": "error", "error": str(exc), "request": request})
        except Exception as exc:  # an engine refusing a voice, ...: the session goes on
            log.warning("session %s: %s failed", self.id, request, exc_info=True)
            self.send({"type": "error", "error": f"{type(exc).__name__}: {exc}", "request": request})

    def _say(self, data: dict[str, Any]) -> None:
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ClientError('a say message needs "text" (a non-empty string)')
        if len(text) > self.max_say_chars:
            raise ClientError(f"text over {self.max_say_chars} characters")
        if "voice" in data and self._voice(data["voice"]) != self.tts.voice:
            self.set_voice(data["voice"])
        turn_id = self.dialogue.say(text)
        self.send({"type": "say", "turn_id": turn_id, "text": text})

    def set_voice(self, spec: Any) -> None:
        """Switch this session's TTS voice (validated; applies from the next piece)."""
        voice = self._voice(spec)
        self.tts.set_voice(voice)  # the engine's own error for a broken voice
        self.send({"type": "voice", "voice": voice})

    def _voice(self, spec: Any) -> str | None:
        checked = check_voice(spec, self.catalog)
        return checked if checked is not None else self.catalog["default"]


class ServeLog:
    """What ``voiceloop serve`` prints and records about every session.

    ``mode``: "plain" (a line per session and per turn on stderr), "quiet" (lost turns only) or
    "json" (every event as a JSON line on ``stream``, tagged ``"session": N``, plus
    ``session_started``/``session_ended`` lines). ``metrics``: where every session's finished turns
    go as JSON lines (``{"type": "turn", "session": N, ...}``), a ``session_summary`` line per
    session and a ``summary`` over all sessions at :meth:`close`: turn count and counters over all
    of them, duration percentiles over the last ``recent_turns`` (``durations_over`` says how many).
    """

    def __init__(
        self,
        mode: str = "plain",
        stream: IO[str] | None = None,
        metrics: IO[str] | None = None,
        *,
        recent_turns: int = SUMMARY_TURNS,
    ):
        if mode not in ("plain", "quiet", "json"):
            raise ValueError(f"mode must be plain, quiet or json, got {mode!r}")
        if recent_turns < 1:
            raise ValueError(f"recent_turns must be >= 1, got {recent_turns}")
        self.mode = mode
        self.stream = stream if stream is not None else (sys.stdout if mode == "json" else sys.stderr)
        self.metrics = metrics
        self.turns = 0  # finished turns of every session
        self.recent: deque[Any] = deque(maxlen=recent_turns)  # the last timelines, for the percentiles
        self.counters: Counter[str] = Counter()  # every session's counters, summed
        self.sessions = 0

    def _emit(self, stream: IO[str] | None, record: dict[str, Any]) -> None:
        if stream is not None:
            stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            stream.flush()

    def _say(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def session_started(self, sid: int, pipeline: Pipeline) -> None:
        self.sessions += 1
        pipeline.add_observer(lambda frame: self._observe(sid, pipeline, frame))
        if self.mode == "json":
            self._emit(self.stream, {"type": "session_started", "session": sid, "time": round(now(), 4)})
        elif self.mode == "plain":
            self._say(f"session {sid}: connected")

    def _observe(self, sid: int, pipeline: Pipeline, frame: Frame) -> None:
        if self.mode == "json":
            record = event_record(frame, pipeline_counters(pipeline))
            self._emit(self.stream, {"session": sid, **record})
        elif isinstance(frame, TurnError):
            self._say(f"session {sid}: turn {frame.turn_id} failed in {frame.stage}: {frame.error}")
        elif self.mode == "plain" and isinstance(frame, TurnMetrics):
            tl = frame.timeline
            v2v = tl.durations()["voice_to_voice"]
            latency = f", voice to voice {v2v:.3f} s" if v2v is not None else ""
            cut = " (interrupted)" if tl.interrupted else ""
            self._say(f"session {sid}: turn {tl.turn_id} {tl.transcript!r} → {tl.reply!r}{cut}{latency}")
        if isinstance(frame, TurnMetrics):
            self._turn(sid, frame.timeline)

    def _turn(self, sid: int, timeline: Any) -> None:
        self.turns += 1
        self.recent.append(timeline)
        self._emit(self.metrics, {"type": "turn", "session": sid, **timeline.to_dict()})

    def session_ended(self, sid: int, pipeline: Pipeline) -> None:
        metrics = pipeline.metrics
        done = len(metrics.finished)
        summary = metrics.close()  # turns still open when the peer left end here
        for timeline in metrics.finished[done:]:
            self._turn(sid, timeline)
        self.counters.update(summary["counters"])
        self._emit(self.metrics, {"type": "session_summary", "session": sid, **summary})
        if self.mode == "json":
            self._emit(self.stream, {"type": "session_ended", "session": sid, "time": round(now(), 4)})
        elif self.mode == "plain":
            self._say(f"session {sid}: ended ({summary['turns']} turn(s))")

    def close(self) -> dict[str, Any]:
        """The summary over all sessions (also written to the metrics file and, with json, the stream)."""
        over = Metrics(counters=self.counters, finished=list(self.recent)).summary()
        summary = {"sessions": self.sessions, **over, "turns": self.turns, "durations_over": len(self.recent)}
        self._emit(self.metrics, {"type": "summary", **summary})
        if self.mode == "json":
            self._emit(self.stream, {"type": "summary", **summary})
        elif self.mode == "plain":
            v2v = summary["durations"].get("voice_to_voice")
            latency = f", voice to voice p50 {v2v['p50']:.3f} s" if v2v else ""
            self._say(f"voiceloop serve: {self.sessions} session(s), {summary['turns']} turn(s){latency}")
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        return summary
