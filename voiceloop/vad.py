"""Voice activity detection and endpointing.

Two layers, because per-frame speech/non-speech decisions are noisy and an agent needs
*utterances*: :class:`WebRtcVad` classifies one frame (a few µs), :class:`Endpointer` turns the
decisions into SpeechStarted / audio / SpeechEnded with a start trigger, a hangover and a
pre-roll. The Endpointer is a pure synchronous state machine so it is trivially testable and
the pipeline stage around it stays thin.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import webrtcvad

from voiceloop.clock import now
from voiceloop.frames import (
    FRAME_MS,
    FRAME_SAMPLES,
    INPUT_RATE,
    AudioFrame,
    Frame,
    SpeechEnded,
    SpeechPaused,
    SpeechStarted,
)
from voiceloop.pipeline import Stage
from voiceloop.turn import TurnModel, TurnOptions
from voiceloop.turn.check import TurnCheck

#: Sample rates the WebRTC VAD accepts.
VAD_RATES = (8000, 16000, 32000, 48000)


class WebRtcVad:
    """The WebRTC GMM voice detector; ``aggressiveness`` 0 (permissive) .. 3 (strict)."""

    def __init__(self, aggressiveness: int = 3) -> None:
        if type(aggressiveness) is not int or aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness!r}")
        self.aggressiveness = int(aggressiveness)
        self._vad = webrtcvad.Vad(self.aggressiveness)

    def reset(self) -> None:
        """Forget the adapted noise model (a new stream may have a different noise floor)."""
        self._vad = webrtcvad.Vad(self.aggressiveness)

    def is_speech(self, samples: np.ndarray, sample_rate: int = INPUT_RATE) -> bool:
        """Whether one 10, 20 or 30 ms frame of int16 mono audio is speech."""
        if sample_rate not in VAD_RATES:
            raise ValueError(f"sample_rate must be one of {VAD_RATES}, got {sample_rate}")
        if not isinstance(samples, np.ndarray) or samples.dtype != np.int16 or samples.ndim != 1:
            raise ValueError("samples must be a 1-D int16 numpy array (mono PCM)")
        n = samples.shape[0] * 100
        if n != sample_rate and n != 2 * sample_rate and n != 3 * sample_rate:
            raise ValueError(
                f"frame of {samples.shape[0]} samples at {sample_rate} Hz is not 10, 20 or 30 ms"
            )
        return self._vad.is_speech(np.ascontiguousarray(samples).tobytes(), sample_rate)


class VoiceDetector(Protocol):
    """Anything that classifies one frame (WebRtcVad, or a replay/fake in tests and benchmarks)."""

    def is_speech(self, samples: np.ndarray, sample_rate: int = INPUT_RATE) -> bool: ...


#: At most this many trailing "voiced" frames (200 ms) can be trimmed as detector hangover; as
#: many of the latest loud frames set the level a quiet tail is measured against.
_TAIL_FRAMES = 10


def _power_db(samples: np.ndarray) -> float:
    """Mean power of an int16 frame in dB (0 dB: digital silence)."""
    x = samples.astype(np.float32)
    return 10.0 * float(np.log10(float(np.dot(x, x)) / max(len(x), 1) + 1.0))


def _round_up(ms: int) -> int:
    return -(-ms // FRAME_MS) * FRAME_MS


@dataclass
class VadOptions:
    """Endpointing parameters. Millisecond values are rounded *up* to whole 20 ms frames.

    Defaults are measured (``benchmarks/vad_defaults.py`` -> ``results/vad_defaults.json``):
    espeak-ng Mandarin/English sentences with clause pauses (130..200 wpm), one-word replies,
    two-clause utterances with an inserted 200..600 ms pause, clicks and noise bursts, in
    digital silence and white/pink/brown noise at 30/20/10 dB SNR. Rule: no split, missed or
    merged utterance and no false trigger at >= 20 dB, then the smallest endpoint delay (true
    speech end -> SpeechEnded). Trigger 200/300 ms, >= 20 dB (196 utterances):

    ====  ===========  ======  ======================  ===========================
    aggr  end_silence  splits  endpoint delay med/p95  inserted pause kept
    ====  ===========  ======  ======================  ===========================
    3     240 ms       12      314 / 353 ms            200 ms
    3     320 ms       1       394 / 433 ms            300 ms
    3     **360 ms**   0       **434 / 473 ms**        400 ms (500 ms splits)
    3     400 ms       0       474 / 513 ms            400 ms
    2     360 ms       0       460 / 484 ms            400 ms
    0-1   320-600 ms   0       >= 463 / 484 ms         merges across silence gaps
    ====  ===========  ======  ======================  ===========================

    The delay is end_silence_ms plus the detector's own tail (+74 ms median at aggr 3): ~0.45 s
    of the 0.9 s voice-to-voice budget. espeak clause pauses are <= 300 ms, but in 20 dB noise
    the VAD drops weak phonemes and leaves up to 320 ms non-voiced inside sentences, hence 360.
    Longer pauses split: the turn logic must treat a resumed utterance as a barge-in. Reported
    boundaries: start error median +3 ms (p95 |63|), end error median 0 ms (p95 |34|, see
    ``Endpointer._trim_tail``). At 10 dB pink/brown noise the detector hears noise as speech
    (4 merged utterances; some end only at max_utterance_ms).
    """

    #: WebRTC aggressiveness 0..3; 3 has the shortest detector tail and no false triggers.
    aggressiveness: int = 3
    #: Start trigger: at least ``start_voiced_ms`` of voiced frames within the last
    #: ``start_window_ms``. Transients fired 60/100 ms in 110 of 120 cases, 160/200 in 18,
    #: 200/300 in none; trigger delay 63 / 163 / 203 ms median (``speech_time`` is backdated).
    start_window_ms: int = 300
    start_voiced_ms: int = 200
    #: Hangover: this much continuous non-voiced audio ends the utterance; it adds 1:1 to
    #: voice-to-voice latency.
    end_silence_ms: int = 360
    #: Silence after which a SpeechPaused hint goes downstream (0: never), so the ASR can start its
    #: final pass during the hangover instead of after it. Must be shorter than end_silence_ms.
    pause_hint_ms: int = 100
    #: Audio before the first voiced frame forwarded with the utterance: the first voiced frame
    #: was <= 100 ms after the true start in every case; +100 ms for real soft onsets (h, s, x).
    pre_roll_ms: int = 200
    #: Utterances with less voiced audio than this are reported ``discarded=True``. With a loose
    #: trigger (40/40 ms), clicks and bursts give 20..240 ms, 95% below 140; one-word replies
    #: >= 360 ms. A backstop with the default trigger, which already needs 200 ms voiced.
    min_speech_ms: int = 140
    #: Forced endpoint (reason "max_length"); None disables it. Not measured: a safety net for
    #: noise the detector takes for speech, and a bound on ASR segment length.
    max_utterance_ms: int | None = 30_000
    #: Frames treated as non-voiced after the detector is created or reset: WebRTC's noise
    #: model starts empty and calls the first 80..100 ms (aggr 3; 120 at aggr 0-1) of any
    #: audible noise speech, which would fire a phantom barge-in at every stream start.
    warmup_ms: int = 100
    #: Voiced frames this many dB below the utterance's recent loud frames count as quiet for the
    #: pause hint and a turn model's check (not for the hangover, whose length the split figures
    #: above fix): WebRTC's own 40..120 ms tail then no longer delays them. 0: off.
    quiet_tail_db: int = 30

    def __post_init__(self) -> None:
        if type(self.aggressiveness) is not int or self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0..3, got {self.aggressiveness!r}")
        for name in (f.name for f in fields(self) if f.name.endswith("_ms") and f.name != "max_utterance_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int (ms), got {value!r}")
            setattr(self, name, _round_up(value))
        for name in ("start_window_ms", "start_voiced_ms", "end_silence_ms"):
            if getattr(self, name) == 0:
                raise ValueError(f"{name} must be > 0")
        if self.start_voiced_ms > self.start_window_ms:
            raise ValueError("start_voiced_ms cannot exceed start_window_ms")
        q = self.quiet_tail_db
        if type(q) is not int or q < 0:
            raise ValueError(f"quiet_tail_db must be a non-negative int (dB), got {q!r}")
        if self.pause_hint_ms >= self.end_silence_ms:
            raise ValueError("pause_hint_ms must be shorter than end_silence_ms (or 0 to disable)")
        if self.max_utterance_ms is not None:
            m = self.max_utterance_ms
            if not isinstance(m, int) or isinstance(m, bool) or m <= 0:
                raise ValueError(f"max_utterance_ms must be a positive int or None, got {m!r}")
            self.max_utterance_ms = _round_up(m)
            if self.max_utterance_ms <= self.start_window_ms:
                raise ValueError("max_utterance_ms must be longer than start_window_ms")


class Endpointer:
    """Frame-by-frame utterance segmentation of a 20 ms AudioFrame stream.

    ``process`` returns what to forward: nothing outside utterances; on the start trigger a
    SpeechStarted followed by the buffered pre-roll frames (unmodified, in order); then each
    frame as it arrives, hangover included; then SpeechEnded. Turn ids count 1, 2, 3... for
    the endpointer's lifetime (``reset`` does not rewind them, so ids stay unique).
    Frames are assumed contiguous; stream time is ``seq * 0.02``.
    """

    def __init__(self, options: VadOptions | None = None, detector: VoiceDetector | None = None) -> None:
        self.options = options if options is not None else VadOptions()
        o = self.options
        self._detector: VoiceDetector = detector if detector is not None else WebRtcVad(o.aggressiveness)
        self._window = o.start_window_ms // FRAME_MS
        self._need = o.start_voiced_ms // FRAME_MS
        self._pre = o.pre_roll_ms // FRAME_MS
        self._end_frames = o.end_silence_ms // FRAME_MS
        self._pause_frames = o.pause_hint_ms // FRAME_MS
        self._min_voiced = o.min_speech_ms // FRAME_MS
        self._max_frames = o.max_utterance_ms // FRAME_MS if o.max_utterance_ms else 0
        self._history: deque[tuple[AudioFrame, bool]] = deque(maxlen=self._pre + self._window)
        self._tail: deque[tuple[AudioFrame, bool]] = deque(maxlen=self._end_frames + _TAIL_FRAMES)
        self._window_voiced = 0
        self._next_turn = 1
        self._warmup = o.warmup_ms // FRAME_MS
        self._quiet_db = float(o.quiet_tail_db)
        self._loud: deque[float] = deque(maxlen=_TAIL_FRAMES)  # the utterance's latest loud frames' power
        self._reset_state()

    @property
    def in_speech(self) -> bool:
        """True between SpeechStarted and SpeechEnded."""
        return self._turn > 0

    def reset(self) -> None:
        """Drop any open utterance silently and the detector's noise model (new stream)."""
        self._reset_state()
        reset = getattr(self._detector, "reset", None)
        if callable(reset):
            reset()
        self._warmup = self.options.warmup_ms // FRAME_MS

    def _reset_state(self) -> None:
        self._history.clear()
        self._window_voiced = 0
        self._turn = 0  # 0 = idle
        self._length = 0  # frames since the first voiced frame
        self._voiced = 0
        self._silence_run = 0
        self._quiet_run = 0  # frames since the last loud voiced one (>= _silence_run)
        self._last_loud: AudioFrame | None = None
        self._loud.clear()
        self._hangover = self._end_frames  # silence that ends this utterance (a turn model may change it)
        self._last_voiced: AudioFrame | None = None
        if self._tail.maxlen == self._end_frames + _TAIL_FRAMES:
            self._tail.clear()  # the utterance's latest frames, for _trim_tail
        else:  # set_hangover grew it for the last utterance
            self._tail = deque(maxlen=self._end_frames + _TAIL_FRAMES)

    @property
    def turn_id(self) -> int:
        """The open utterance's turn id; 0 between utterances."""
        return self._turn

    @property
    def quiet_frames(self) -> int:
        """Frames since the open utterance's last loud voiced one: silence plus the detector's quiet tail."""
        return self._quiet_run if self._turn else 0

    def set_hangover(self, ms: int) -> None:
        """The open utterance ends after ``ms`` of silence instead of ``end_silence_ms``."""
        frames = max(1, _round_up(ms) // FRAME_MS)
        self._hangover = frames
        if frames + _TAIL_FRAMES > (self._tail.maxlen or 0):
            self._tail = deque(self._tail, maxlen=frames + _TAIL_FRAMES)

    def end_now(self, time: float, reason: str = "turn_model") -> list[Frame]:
        """End the open utterance at once (a turn model heard it complete); [] between utterances."""
        return [self._end(time, reason)] if self._turn else []

    @property
    def voiced_until(self) -> float | None:
        """End (capture time) of the current utterance's latest voiced frame; None between utterances."""
        last = self._last_voiced
        return None if not self._turn or last is None else last.capture_time + FRAME_MS / 1000

    def process(self, frame: AudioFrame) -> list[Frame]:
        """Feed one frame; returns the frames to forward downstream (often none)."""
        samples, rate = frame.samples, frame.sample_rate
        if len(samples) * 1000 != FRAME_MS * rate:
            raise ValueError(f"Endpointer needs {FRAME_MS} ms frames, got {len(samples)} samples @ {rate} Hz")
        voiced = bool(self._detector.is_speech(samples, rate))
        if self._warmup:  # the detector still sees the frame, so its noise model adapts
            self._warmup -= 1
            voiced = False
        end = frame.capture_time + FRAME_MS / 1000
        if self._turn:
            return self._continue(frame, voiced, end)
        history = self._history
        if len(history) >= self._window and history[-self._window][1]:
            self._window_voiced -= 1  # that frame is leaving the start window
        history.append((frame, voiced))
        self._window_voiced += voiced
        if not voiced or self._window_voiced < self._need:
            return []
        return self._start(frame, end)

    def _start(self, frame: AudioFrame, end: float) -> list[Frame]:
        items = list(self._history)
        first = next(i for i in range(max(0, len(items) - self._window), len(items)) if items[i][1])
        first_frame = items[first][0]
        turn = self._turn = self._next_turn
        self._next_turn += 1
        self._length = len(items) - first
        self._voiced = self._window_voiced
        self._silence_run = 0
        self._last_voiced = self._last_loud = frame
        if self._quiet_db:
            self._loud.extend(_power_db(f.samples) for f, v in items[first:] if v)
        self._tail.extend(items[first:])
        self._history.clear()
        self._window_voiced = 0
        started = SpeechStarted(
            turn_id=turn,
            speech_time=first_frame.capture_time,
            time=end,
            stream_start=first_frame.seq * FRAME_MS / 1000,
        )
        out: list[Frame] = [started]
        out.extend(f for f, _ in items[max(0, first - self._pre) :])
        if self._max_frames and self._length >= self._max_frames:
            out.append(self._end(end, "max_length"))
        return out

    def _continue(self, frame: AudioFrame, voiced: bool, end: float) -> list[Frame]:
        self._length += 1
        self._tail.append((frame, voiced))
        if voiced:
            self._voiced += 1
            self._silence_run = 0
            self._last_voiced = frame
            power = _power_db(frame.samples) if self._quiet_db else 0.0
            if self._quiet_db and self._loud and power < max(self._loud) - self._quiet_db:
                self._quiet_run += 1
            else:
                self._loud.append(power)
                self._quiet_run = 0
                self._last_loud = frame
        else:
            self._silence_run += 1
            self._quiet_run += 1
        if self._silence_run >= self._hangover:
            return [frame, self._end(end, "silence")]
        if self._max_frames and self._length >= self._max_frames:
            return [frame, self._end(end, "max_length")]
        if self._pause_frames and self._quiet_run == self._pause_frames and self._last_loud is not None:
            voiced_end = self._last_loud.capture_time + FRAME_MS / 1000
            return [frame, SpeechPaused(turn_id=self._turn, speech_time=voiced_end, time=end)]
        return [frame]

    def _trim_tail(self) -> tuple[AudioFrame, int]:
        """The frame where speech really ended, and how many voiced frames follow it.

        WebRTC keeps saying "voiced" for 40..120 ms after speech stops (its own hangover), which
        made ``speech_time`` late by +74 ms median (p95 113). Trailing frames no louder than the
        hangover's background (90th percentile + 2 dB) or 30 dB below the utterance's last loud
        frame are dropped: end error median 0 ms, p95 |34| ms (benchmark scenes, >= 20 dB SNR).
        """
        items = list(self._tail)
        speech = len(items) - self._silence_run
        items, speech = items[max(0, speech - _TAIL_FRAMES) :], min(speech, _TAIL_FRAMES)
        x = np.stack([f.samples for f, _ in items]).astype(np.float64)
        power = 10.0 * np.log10(np.mean(x * x, axis=1) + 1.0)
        threshold = max(float(np.percentile(power[speech:], 90)) + 2.0, float(power[:speech].max()) - 30.0)
        last = speech - 1
        if power[last] >= threshold or power[:speech].max() < threshold:  # nothing to trim / no contrast
            return items[last][0], 0
        while last > 0 and power[last] < threshold:
            last -= 1
        return items[last][0], sum(v for _, v in items[last + 1 : speech])

    def _end(self, time: float, reason: str) -> SpeechEnded:
        last, trimmed = self._last_voiced, 0
        if reason in ("silence", "turn_model") and 0 < self._silence_run < len(self._tail):
            last, trimmed = self._trim_tail()
        assert last is not None
        ended = SpeechEnded(
            turn_id=self._turn,
            speech_time=last.capture_time + FRAME_MS / 1000,
            time=time,
            stream_end=(last.seq + 1) * FRAME_MS / 1000,
            reason=reason,
            discarded=self._voiced - trimmed < self._min_voiced,
        )
        self._reset_state()  # the next utterance needs a fresh trigger; nothing is re-forwarded
        return ended

    def finish(self, now: float) -> list[Frame]:
        """End of stream: closes an open utterance (reason "end_of_stream", decided at ``now``)."""
        if self._turn:
            return [self._end(now, "end_of_stream")]
        self._reset_state()
        return []


@dataclass(frozen=True, slots=True)
class Segment:
    """One utterance in stream-time seconds: first voiced frame start .. last voiced frame end.

    ``turn_probability``: a turn model's P(complete) at the utterance's last check (None: not asked).
    """

    start: float
    end: float
    discarded: bool = False
    reason: str = "silence"
    turn_probability: float | None = None


def detect_segments(
    samples: np.ndarray,
    options: VadOptions | None = None,
    *,
    turn_model: TurnModel | None = None,
    turn: TurnOptions | None = None,
) -> list[Segment]:
    """Offline segmentation of 16 kHz mono int16 audio by running the Endpointer over 20 ms
    frames (the tail is zero-padded), so offline results match the live pipeline exactly —
    with a turn model too (asked at the same frames as :class:`VadStage` asks it)."""
    if not isinstance(samples, np.ndarray) or samples.dtype != np.int16 or samples.ndim != 1:
        raise ValueError("samples must be a 1-D int16 numpy array at 16 kHz")
    n = -(-len(samples) // FRAME_SAMPLES)
    padded = np.zeros(n * FRAME_SAMPLES, dtype=np.int16)
    padded[: len(samples)] = samples
    endpointer = Endpointer(options)
    check = None
    if turn_model is not None:
        check = TurnCheck(turn_model, turn or TurnOptions(), endpointer.options.end_silence_ms)
    events: list[Frame] = []
    verdicts: dict[int, float] = {}
    for seq in range(n):
        chunk = padded[seq * FRAME_SAMPLES : (seq + 1) * FRAME_SAMPLES]
        frame = AudioFrame(chunk, INPUT_RATE, seq * FRAME_MS / 1000, seq)
        out = endpointer.process(frame)
        events += out
        if check is None:
            continue
        for item in out:
            if isinstance(item, SpeechStarted):
                check.start()
            elif item.__class__ is AudioFrame:
                check.add(item.samples)  # type: ignore[attr-defined]
        if endpointer.quiet_frames == check.frames:
            turn_id, probability = endpointer.turn_id, float(check.model.probability(check.audio()))
            verdicts[turn_id] = probability
            events += check.apply(endpointer, probability, (seq + 1) * FRAME_MS / 1000)
    events += endpointer.finish(n * FRAME_MS / 1000)
    return segments_from_events(events, verdicts)


def segments_from_events(events: list[Frame], verdicts: dict[int, float] | None = None) -> list[Segment]:
    """Pair SpeechStarted/SpeechEnded events into Segments (other frames are ignored);
    ``verdicts``: a turn model's last P(complete) per turn id."""
    segments: list[Segment] = []
    start: float | None = None
    verdicts = verdicts or {}
    for ev in events:
        if isinstance(ev, SpeechStarted):
            start = ev.stream_start
        elif isinstance(ev, SpeechEnded) and start is not None:
            segments.append(Segment(start, ev.stream_end, ev.discarded, ev.reason, verdicts.get(ev.turn_id)))
            start = None
    return segments


class VadStage(Stage):
    """Adapts the :class:`Endpointer` to the graph and stamps the turn timeline.

    Forwards only utterance audio (with its pre-roll) between SpeechStarted and SpeechEnded;
    stamps ``speech_start`` (first voiced audio), ``speech_end`` (end of the last voiced audio)
    and ``endpoint`` (when the end was declared, on the pipeline clock).

    With a ``turn_model`` (:mod:`voiceloop.turn`), the utterance's audio (its last 8 s) is shown
    to the model once ``turn.check_ms`` of silence has passed; a turn it hears as complete ends
    at once (reason "turn_model") instead of after the whole hangover. The stage waits for the
    verdict (frames queue meanwhile), so a run on a file is as deterministic as the model. A
    model that fails or is late (``turn.timeout_ms``) costs nothing but the shortcut: the
    hangover decides, and ``turn.errors`` / ``turn.timeouts`` count it.
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
        self.turn = turn if turn is not None or turn_model is None else TurnOptions()
        self._check: TurnCheck | None = None
        if turn_model is not None:
            self._check = TurnCheck(turn_model, self.turn, self.endpointer.options.end_silence_ms)  # type: ignore[arg-type]

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
        if frame.__class__ is AudioFrame:
            if self._check is not None:
                self._check.add(frame.samples)  # type: ignore[attr-defined]
            await self.emit(frame)
            return
        metrics = self.metrics
        if isinstance(frame, SpeechStarted):
            if self._check is not None:
                self._check.start()
            metrics.stamp(frame.turn_id, "speech_start", frame.speech_time)
        elif isinstance(frame, SpeechEnded):
            metrics.stamp(frame.turn_id, "speech_end", frame.speech_time)
            metrics.stamp(frame.turn_id, "endpoint", now())  # when the decision was actually made
            if frame.discarded:
                metrics.turn(frame.turn_id).discarded = True
        await self.emit(frame)
        if isinstance(frame, SpeechEnded) and frame.discarded:
            self.pipeline.finish_turn(frame.turn_id)  # type: ignore[union-attr]
