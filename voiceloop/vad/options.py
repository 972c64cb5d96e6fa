"""``VadOptions``: the endpointing parameters and the measurements behind their defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..frames import FRAME_MS


def _round_up(ms: int) -> int:
    return -(-ms // FRAME_MS) * FRAME_MS


@dataclass
@dataclass
class VadOptions:
    """Endpointing parameters. Millisecond values are rounded *up* to whole 20 ms frames.

    Defaults are measured (``benchmarks/vad_defaults.py`` -> ``results/vad_defaults.json``):
    espeak-ng Mandarin/English sentences with clause pauses (130..200 wpm), one-word replies,
    two-clause utterances with an inserted 200..600 ms pause, clicks and noise bursts, in
    digital silence and white/pink/brown noise at 30/20/10 dB SNR. Rule: no split, missed or
    merged utterance and no false trigger at >= 20 dB, then the smallest endpoint delay (true
    speech end -> SpeechEnded); the script prints the splits, delays and boundary errors of every
    aggressiveness and end silence it tries.

    The delay is end_silence_ms plus the detector's own tail: about half of the voice-to-voice
    budget. In 20 dB noise the VAD drops weak phonemes and leaves non-voiced gaps inside
    sentences longer than espeak's clause pauses; 360 ms at aggressiveness 3 is the shortest end
    silence that splits none of them. Longer pauses split: the turn logic must treat a resumed
    utterance as a barge-in. Boundary errors: see ``Endpointer._trim_tail``. At 10 dB pink/brown
    noise the detector hears noise as speech (merged utterances; some end only at
    max_utterance_ms).
    """

    #: WebRTC aggressiveness 0..3; 3 has the shortest detector tail and no false triggers.
    aggressiveness: int = 3
    #: Start trigger: at least ``start_voiced_ms`` of voiced frames within the last
    #: ``start_window_ms``. Shorter triggers fire on clicks and noise bursts, 200/300 on none of
    #: the benchmark's; the trigger delay grows with it (``speech_time`` is backdated).
    start_window_ms: int = 300
    start_voiced_ms: int = 200
    #: Hangover: this much continuous non-voiced audio ends the utterance; it adds 1:1 to
    #: voice-to-voice latency.
    end_silence_ms: int = 360
    #: Silence after which a SpeechPaused hint goes downstream (0: never), so the ASR can start its
    #: final pass during the hangover instead of after it. Must be shorter than end_silence_ms.
    pause_hint_ms: int = 100
    #: Audio before the first voiced frame forwarded with the utterance: the start error the
    #: benchmark measures, plus room for real soft onsets (h, s, x).
    pre_roll_ms: int = 200
    #: Utterances with less voiced audio than this are reported ``discarded=True``: above what
    #: most clicks and bursts give with a loose trigger (40/40 ms), below the shortest one-word
    #: replies (benchmarks/vad_defaults.py). A backstop with the default trigger, which already
    #: needs 200 ms voiced.
    min_speech_ms: int = 140
    #: Forced endpoint (reason "max_length"); None disables it. Not measured: a safety net for
    #: noise the detector takes for speech, and a bound on ASR segment length.
    max_utterance_ms: int | None = 30_000
    #: Frames treated as non-voiced after the detector is created or reset: WebRTC's noise
    #: model starts empty and calls the first frames of any audible noise speech (about this long
    #: at aggressiveness 3, longer at 0-1), which would fire a phantom barge-in at every start.
    warmup_ms: int = 100
    #: Voiced frames this many dB below the utterance's recent loud frames count as quiet for the
    #: pause hint and a turn model's check (not for the hangover, whose length the benchmark's
    #: splits fix): WebRTC's own voiced tail then no longer delays them. 0: off.
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
