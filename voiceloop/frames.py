"""Frames: everything that travels through the stage graph.

Two families, told apart by the class attribute ``survives_interrupt``:

* frames that survive a barge-in (input audio, speech start/end, transcripts, interruption,
  end of stream, turn metrics) — they describe what the *user* did and must never be lost;
* frames that are flushed by a barge-in (reply text, synthesized audio, reply end) — they are
  the bot's pending output for a turn the user has just talked over.

Frames with ``is_event = True`` are also shown to pipeline observers (terminal view, data
channel, metrics); audio frames are not, so observing costs nothing per audio frame.

Times are seconds on the pipeline clock (``loop.time()``, i.e. ``time.monotonic()`` unless a
test installs a virtual clock). Audio positions ("stream time") are seconds of input audio
since the stream began: sample index / sample rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

#: Canonical input format: 16 kHz mono int16, 20 ms frames.
INPUT_RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = INPUT_RATE * FRAME_MS // 1000


@dataclass(slots=True)
class Frame:
    """Base of all frames."""

    survives_interrupt: ClassVar[bool] = True
    is_event: ClassVar[bool] = False


@dataclass(slots=True)
class AudioFrame(Frame):
    """Captured audio: int16 mono samples (canonically 20 ms at 16 kHz).

    ``capture_time`` is when the first sample was captured (pipeline clock); ``seq`` counts
    frames from 0 on this stream, so ``seq * FRAME_MS`` locates it in stream time.
    """

    samples: np.ndarray
    sample_rate: int = INPUT_RATE
    capture_time: float = 0.0
    seq: int = 0

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def stream_time(self) -> float:
        """Stream-time position of the first sample (assumes equal frame sizes)."""
        return self.seq * len(self.samples) / self.sample_rate


@dataclass(slots=True)
class SpeechStarted(Frame):
    """The VAD decided the user started an utterance (a new user turn).

    ``speech_time`` is the capture time of the first voiced audio (before the start trigger
    fired); ``time`` is when the decision was made.
    """

    is_event: ClassVar[bool] = True
    turn_id: int
    speech_time: float
    time: float
    stream_start: float = 0.0


@dataclass(slots=True)
class SpeechPaused(Frame):
    """A hint: the user has been silent for ``pause_hint_ms`` inside an utterance.

    The end of speech is likely but not yet declared (the VAD's hangover is still running). The
    ASR starts computing the final transcript now, so it is ready when SpeechEnded arrives; if
    speech resumes, a later pause replaces this one. ``speech_time``: end of the last voiced audio.
    """

    turn_id: int
    speech_time: float
    time: float


@dataclass(slots=True)
class SpeechEnded(Frame):
    """The VAD decided the utterance is over.

    ``speech_time`` is when the last voiced audio ended (capture time); ``time`` is when the
    decision was made (after the hangover). ``reason`` is "silence", "turn_model" (a turn
    model heard the turn complete before the hangover ran out), "max_length" (forced
    endpoint) or "end_of_stream". ``discarded`` marks utterances below the minimum speech
    length: the ASR drops them and no reply follows.
    """

    is_event: ClassVar[bool] = True
    turn_id: int
    speech_time: float
    time: float
    stream_end: float = 0.0
    reason: str = "silence"
    discarded: bool = False


@dataclass(slots=True)
class CharInfo:
    """One recognised character with its confidence and stream-time span."""

    char: str
    confidence: float
    start: float
    end: float


@dataclass(slots=True)
class PartialTranscript(Frame):
    """Running hypothesis: ``text[:stable_len]`` is never retracted, the rest may change."""

    is_event: ClassVar[bool] = True
    text: str
    chars: list[CharInfo] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    stable_len: int = 0
    turn_id: int = -1

    @property
    def stable_text(self) -> str:
        return self.text[: self.stable_len]


@dataclass(slots=True)
class FinalTranscript(Frame):
    """The transcript of a finished utterance; ``embedding`` is optional engine extra data.

    ``preemptive`` (non-zero: the pipeline's hold number) marks a final sent at a pause hint,
    before the end of speech was declared: its reply is generated but held until the end of
    speech confirms it, and retracted if the user goes on (``Pipeline.hold``).
    """

    is_event: ClassVar[bool] = True
    text: str
    chars: list[CharInfo] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    turn_id: int = -1
    embedding: Any = None
    preemptive: int = 0


@dataclass(slots=True)
class ReplyText(Frame):
    """A speakable piece of the bot's reply (already split for TTS)."""

    survives_interrupt: ClassVar[bool] = False
    is_event: ClassVar[bool] = True
    turn_id: int
    text: str


@dataclass(slots=True)
class AudioChunk(Frame):
    """Synthesized int16 mono audio for one reply piece.

    ``text`` is the reply piece this chunk renders; ``piece_end`` marks its last chunk.
    """

    survives_interrupt: ClassVar[bool] = False
    turn_id: int
    samples: np.ndarray
    sample_rate: int
    text: str = ""
    piece_end: bool = False


@dataclass(slots=True)
class ReplyEnd(Frame):
    """The bot has no more output for this turn (handler finished, all pieces synthesized)."""

    survives_interrupt: ClassVar[bool] = False
    is_event: ClassVar[bool] = True
    turn_id: int
    text: str = ""


@dataclass(slots=True)
class Interruption(Frame):
    """Barge-in: the bot's output for ``turn_id`` was cut; ``played_text`` is what was heard."""

    is_event: ClassVar[bool] = True
    turn_id: int
    time: float
    played_text: str = ""
    reason: str = "user_speech"


@dataclass(slots=True)
class TurnError(Frame):
    """A turn was lost to a handler or engine failure; the session goes on."""

    is_event: ClassVar[bool] = True
    turn_id: int
    stage: str
    error: str


@dataclass(slots=True)
class TurnMetrics(Frame):
    """A finished turn's latency timeline (see ``voiceloop.timeline.TurnTimeline``)."""

    is_event: ClassVar[bool] = True
    timeline: Any


@dataclass(slots=True)
class EndOfStream(Frame):
    """No more input: every stage finishes its work, forwards this and stops."""

    is_event: ClassVar[bool] = True
