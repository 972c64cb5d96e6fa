"""The Endpointer: per-frame decisions → SpeechStarted / audio / SpeechPaused / SpeechEnded.

A pure synchronous state machine (no clock, no I/O), so it is trivially testable and the stage
around it stays thin; :func:`~voiceloop.vad.offline.detect_segments` runs the same machine offline.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ..frames import FRAME_MS, AudioFrame, Frame, SpeechEnded, SpeechPaused, SpeechStarted
from .detector import VoiceDetector, WebRtcVad
from .options import VadOptions, _round_up

#: At most this many trailing "voiced" frames (200 ms) can be trimmed as detector hangover; as
#: many of the latest loud frames set the level a quiet tail is measured against.
_TAIL_FRAMES = 10


def _power_db(samples: np.ndarray) -> float:
    """Mean power of an int16 frame in dB (0 dB: digital silence)."""
    x = samples.astype(np.float32)
    return 10.0 * float(np.log10(float(np.dot(x, x)) / max(len(x), 1) + 1.0))


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

        WebRTC keeps saying "voiced" for a while after speech stops (its own hangover), which
        made ``speech_time`` late. Trailing frames no louder than the hangover's background (90th
        percentile + 2 dB) or 30 dB below the utterance's last loud frame are dropped;
        ``benchmarks/vad_defaults.py`` measures the end error left (its scenes, >= 20 dB SNR).
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
