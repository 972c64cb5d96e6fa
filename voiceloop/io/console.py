"""Terminal views of a running conversation: live (rich), plain lines, JSON lines, quiet.

Every view is a pipeline observer: ``view.attach(pipeline)`` (or ``pipeline.add_observer(view.observe)``).
Observers run on the event loop once per event frame, so ``observe`` only records and returns; the live
display is redrawn by rich's own refresh thread (~10 Hz), never by the pipeline. No view raises from
``observe`` — a broken display must not end the session (failures are counted in ``view.failures``).

Pick one with :func:`make_view`: ``"live"`` (rich display; plain lines when stdout is not a terminal),
``"json"`` (``--json``: one JSON object per event, see :class:`JsonEvents`), ``"quiet"`` (``--quiet``).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

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
from .events import JsonEvents, QuietView, View, event_record
from .output import join_pieces

__all__ = ["ConsoleView", "JsonEvents", "PlainView", "QuietView", "View", "event_record", "make_view"]

if TYPE_CHECKING:
    pass

log = logging.getLogger("voiceloop")

#: latency parts of voice-to-voice, in timeline order: (duration name, short label, colour); "vad" is the
#: endpointing hangover, "play" the output buffering (hand-off to the device → first sample heard)
LATENCY_PARTS = (
    ("endpointing", "vad", "cyan"),
    ("asr_finalisation", "asr", "blue"),
    ("handler_first_text", "handler", "magenta"),
    ("tts_first_audio", "tts", "green"),
    ("output_queue", "queue", "yellow"),
    ("output_buffering", "play", "red"),
)
#: counters always shown in the live status line (others appear once non-zero)
KEY_COUNTERS = ("underruns", "interruptions", "handler_errors", "handler_timeouts")
STATUS_STYLE = {
    "listening": "green",
    "user speaking": "bold cyan",
    "thinking": "yellow",
    "bot speaking": "bold magenta",
    "ended": "dim",
}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


@dataclass
class TurnView:
    """What the user said and the bot answered in one turn, as far as the view has seen."""

    turn_id: int
    user: str = ""
    pieces: list[str] = field(default_factory=list)
    interrupted: bool = False
    heard: str = ""
    error: str | None = None
    durations: dict[str, float | None] | None = None
    played_known: bool = True
    ended_by_model: bool = False  # the end-of-turn model, not the hangover, ended the user's turn

    @property
    def reply(self) -> str:
        return join_pieces(self.pieces)


class Conversation:
    """Folds event frames into display state (status, partial, last turns); no pipeline needed."""

    def __init__(self, max_turns: int = 8) -> None:
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.max_turns = max_turns
        self.turns: OrderedDict[int, TurnView] = OrderedDict()
        self.partial: PartialTranscript | None = None
        self.user_speaking = False
        self.waiting: set[int] = set()  # turns whose reply has not started yet
        self.bot_turn: int | None = None  # turn whose reply is being spoken
        self.ended = False
        self.seen: Counter[str] = Counter()  # counters derived from frames (no pipeline attached)

    def turn(self, turn_id: int) -> TurnView:
        view = self.turns.get(turn_id)
        if view is None:
            view = self.turns[turn_id] = TurnView(turn_id)
            while len(self.turns) > self.max_turns:
                self.turns.popitem(last=False)
        return view

    def _done(self, turn_id: int) -> None:
        self.waiting.discard(turn_id)
        if self.bot_turn == turn_id:
            self.bot_turn = None

    def apply(self, frame: Frame) -> None:
        if isinstance(frame, SpeechStarted):
            self.user_speaking, self.partial = True, None
        elif isinstance(frame, PartialTranscript):
            self.partial = frame
        elif isinstance(frame, SpeechEnded):
            self.user_speaking = False
            if frame.discarded:
                self.partial = None
                self.turns.pop(frame.turn_id, None)
            else:
                self.waiting.add(frame.turn_id)
        elif isinstance(frame, FinalTranscript):
            self.partial = None
            if frame.text.strip():
                self.turn(frame.turn_id).user = frame.text
        elif isinstance(frame, ReplyText):
            view = self.turn(frame.turn_id)
            if not view.interrupted:  # text emitted after a cut is never spoken
                view.pieces.append(frame.text)
                self.waiting.discard(frame.turn_id)
                self.bot_turn = frame.turn_id
        elif isinstance(frame, Interruption):
            self.seen["interruptions"] += 1
            if frame.turn_id >= 0:
                view = self.turn(frame.turn_id)
                view.interrupted, view.heard = True, frame.played_text
                self._done(frame.turn_id)
        elif isinstance(frame, TurnError):
            self.seen["turn_errors"] += 1
            self.turn(frame.turn_id).error = f"{frame.stage}: {frame.error}"
            self.waiting.discard(frame.turn_id)
        elif isinstance(frame, TurnMetrics):
            self._metrics(frame.timeline)
        elif isinstance(frame, EndOfStream):
            self.ended, self.user_speaking, self.partial, self.bot_turn = True, False, None, None
            self.waiting.clear()

    def _metrics(self, timeline: Any) -> None:
        turn_id = timeline.turn_id
        self._done(turn_id)
        if timeline.discarded:
            self.turns.pop(turn_id, None)
            return
        view = self.turns.get(turn_id)
        if view is None:
            if not (timeline.transcript or timeline.reply or timeline.error):
                return  # nothing worth a line (e.g. an empty transcript)
            view = self.turn(turn_id)
        view.user = view.user or timeline.transcript
        if not view.pieces and timeline.reply:
            view.pieces.append(timeline.reply)
        view.error = view.error or timeline.error
        if timeline.interrupted and not view.interrupted:
            view.interrupted, view.heard = True, timeline.played_text
        view.durations = timeline.durations()
        view.played_known = timeline.played_known
        view.ended_by_model = timeline.ended_by_model

    def status(self) -> str:
        if self.ended:
            return "ended"
        if self.user_speaking:
            return "user speaking"
        if self.bot_turn is not None:
            return "bot speaking"
        return "thinking" if self.waiting else "listening"


def latency_text(
    durations: dict[str, float | None],
    played_known: bool = True,
    bar_width: int = 14,
    ended_by_model: bool = False,
) -> Text:
    """One line: voice-to-voice, a stacked bar of its parts and each part in ms (the endpointing
    part reads "turn" where the end-of-turn model ended the turn, "vad" where the hangover did)."""
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append("  ⏱ ", style="dim")
    total = durations.get("voice_to_voice")
    if total is None:
        line.append("no reply audio", style="dim")
    else:
        line.append(f"v2v {_ms(total)} ms", style="bold")
        if not played_known:
            line.append(" (to output)", style="dim")
    parts = [(label, style, durations.get(name)) for name, label, style in LATENCY_PARTS]
    if ended_by_model:
        parts[0] = ("turn", parts[0][1], parts[0][2])
    present = [(label, style, max(0.0, value)) for label, style, value in parts if value is not None]
    whole = sum(value for _, _, value in present)
    if whole > 0:
        line.append("  ")
        for _, style, value in present:
            line.append("█" * round(bar_width * value / whole), style=style)
    for i, (label, style, value) in enumerate(present):
        line.append("  " if i == 0 else " · ")
        line.append(label, style=style)
        line.append(f" {_ms(value)}")
    return line


class ConsoleView(View):
    """Live terminal display: status, live partial, last turns with replies and latency, counters."""

    def __init__(self, console: Console | None = None, max_turns: int = 8, refresh_per_second: float = 10.0):
        super().__init__()
        self.console = console if console is not None else Console()
        self.state = Conversation(max_turns)
        self.refresh_per_second = refresh_per_second
        self._lock = threading.Lock()  # observe runs on the loop, render on rich's refresh thread
        self._live: Live | None = None
        self._counters: dict[str, int] = {}

    def handle(self, frame: Frame) -> None:
        with self._lock:
            self.state.apply(frame)
        counters = self.counters()
        if counters is not None:
            self._counters = counters

    def start(self) -> None:
        if self._live is None:
            self._live = Live(
                console=self.console,
                get_renderable=self.render,
                refresh_per_second=self.refresh_per_second,
                transient=False,
            )
            self._live.start()

    def stop(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()  # draws the final state, which stays on screen

    def render(self) -> RenderableType:
        """The whole display (called ~10 times a second; must not raise either)."""
        try:
            with self._lock:
                lines = [line for turn in self.state.turns.values() for line in self._turn_lines(turn)]
                lines += self._partial_lines()
                lines.append(self._status_line())
            return Group(*lines)
        except Exception as exc:  # pragma: no cover - defensive: keep the display alive
            return Text(f"(view error: {type(exc).__name__}: {exc})", style="red")

    def _turn_lines(self, turn: TurnView) -> list[Text]:
        lines: list[Text] = []
        if turn.user:
            lines.append(Text.assemble(("you ▸ ", "bold cyan"), turn.user))
        reply = turn.reply
        if turn.interrupted:
            line = Text.assemble(("bot ▸ ", "bold magenta"), (turn.heard, "magenta"))
            rest = reply[len(turn.heard) :] if reply.startswith(turn.heard) else ""
            if rest:
                line.append(rest, style="dim strike")
            line.append("  ✂ interrupted", style="yellow")
            line.append(f" (heard: {turn.heard!r})" if turn.heard else " (nothing heard)", style="dim")
            lines.append(line)
        elif reply:
            line = Text.assemble(("bot ▸ ", "bold magenta"), reply)
            if self.state.bot_turn == turn.turn_id:
                line.append(" ▌", style="blink magenta")
            lines.append(line)
        if turn.error:
            lines.append(Text(f"    ✗ turn error: {turn.error}", style="red"))
        if turn.durations is not None and (turn.user or reply):
            lines.append(latency_text(turn.durations, turn.played_known, ended_by_model=turn.ended_by_model))
        return lines

    def _partial_lines(self) -> list[Text]:
        partial = self.state.partial
        if partial is None or not partial.text:
            return []
        stable = max(0, min(partial.stable_len, len(partial.text)))
        return [
            Text.assemble(
                ("you ▸ ", "cyan"),
                (partial.text[:stable], "bold"),
                (partial.text[stable:], "dim italic"),
                "…",
            )
        ]

    def _status_line(self) -> Text:
        status = self.state.status()
        line = Text.assemble(("● ", STATUS_STYLE[status]), (status, STATUS_STYLE[status]), "   ")
        counters = self.counters() or self._counters
        if self.pipeline is None:
            counters = {"interruptions": 0, "turn_errors": 0, **self.state.seen}
        shown = {"dropped": sum(n for k, n in counters.items() if k.startswith("dropped."))}
        shown.update({k: counters.get(k, 0) for k in KEY_COUNTERS})
        shown.update({k: n for k, n in sorted(counters.items()) if n and k not in shown})
        for i, (name, n) in enumerate(shown.items()):
            line.append(" · " if i else "", style="dim")
            line.append(f"{name} {n}", style="bold yellow" if n else "dim")
        return line


class PlainView(View):
    """Line per event for logs and pipes: transcripts, replies, cuts, errors, latency (no partials)."""

    def __init__(self, console: Console | None = None) -> None:
        super().__init__()
        self.console = console if console is not None else Console()
        self._pieces: dict[int, list[str]] = {}

    def _print(self, turn_id: int, text: str) -> None:
        self.console.print(f"[turn {turn_id}] {text}", markup=False, highlight=False, soft_wrap=True)

    def handle(self, frame: Frame) -> None:
        if isinstance(frame, FinalTranscript) and frame.text.strip():
            self._print(frame.turn_id, f"you: {frame.text}")
        elif isinstance(frame, ReplyText):
            self._pieces.setdefault(frame.turn_id, []).append(frame.text)
        elif isinstance(frame, ReplyEnd):
            text = frame.text or join_pieces(self._pieces.pop(frame.turn_id, []))
            if text:
                self._print(frame.turn_id, f"bot: {text}")
        elif isinstance(frame, Interruption) and frame.turn_id >= 0:
            self._pieces.pop(frame.turn_id, None)
            self._print(frame.turn_id, f"bot (interrupted), heard: {frame.played_text!r}")
        elif isinstance(frame, TurnError):
            self._print(frame.turn_id, f"error in {frame.stage}: {frame.error}")
        elif isinstance(frame, TurnMetrics) and not frame.timeline.discarded:
            durations = frame.timeline.durations()
            parts = ", ".join(f"{k} {_ms(v)} ms" for k, v in durations.items() if v is not None)
            if parts:
                self._print(frame.timeline.turn_id, f"latency: {parts}")

    def stop(self) -> None:
        counters = self.counters()
        if counters:
            line = ", ".join(f"{k} {n}" for k, n in sorted(counters.items()))
            self.console.print(f"counters: {line}", markup=False, highlight=False, soft_wrap=True)


def make_view(
    mode: str = "live",
    *,
    console: Console | None = None,
    stream: IO[str] | None = None,
    max_turns: int = 8,
) -> View:
    """The view for a CLI mode: ``live`` (plain lines when not a terminal), ``json`` or ``quiet``.

    ``console`` is for live mode; ``stream`` is where json (default stdout) or quiet (default stderr) write.
    """
    if mode == "live":
        console = console if console is not None else Console()
        return ConsoleView(console, max_turns) if console.is_terminal else PlainView(console)
    if mode == "json":
        return JsonEvents(stream)
    if mode == "quiet":
        return QuietView(stream)
    raise ValueError(f"unknown view mode {mode!r}; expected 'live', 'json' or 'quiet'")
