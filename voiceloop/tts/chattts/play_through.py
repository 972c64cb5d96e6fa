"""Gapless starts (``ChatTtsOptions(start="smooth")``): hold a reply's first audio until the rest can follow.

Pieces grow 4, 8, 16, 32 GPT steps so the first one comes early, and each must be generated before
the audio in front of it has played. That needs generation at ~2x real time; two CPU cores run
ChatTTS slower than that (``benchmarks/tts.py``), so a reply plays its first piece and then
stutters (the output underruns ``benchmarks/voice_to_voice.py --tts-start fast,smooth`` counts). A
listener may prefer a later, unbroken start.

Here, when audio is ready while nothing is playing, the costs measured so far — per GPT step, and
per step a decode window covers (each window re-decodes ``left_context + lookahead`` steps around
its piece, which makes small pieces dear) — forecast when each upcoming piece will be ready, and the
audio is held just long enough that none of them arrives after the audio in front of it has played
out. Audio ready while earlier audio still plays passes at once. The forecast assumes those costs
hold for the rest of the reply and the consumer plays audio as it is handed over; a hold never
exceeds ``max_hold_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from .stream_decode import StreamDecodeOptions, piece_size

#: the piece schedule ``--tts-start smooth`` pairs with the gate: growing 1.15x from 8 steps instead of
#: doubling from 4. With per-step costs like those of 2 CPU cores (tests/test_tts_play_through.py
#: simulates them) the gated start comes sooner with it than with doubling pieces; ungated it would
#: still leave gaps.
SMOOTH_SCHEDULE = StreamDecodeOptions(first_chunk=8, growth=1.15)

#: upcoming pieces the forecast looks at beyond the first full-size one (deficits only shrink after
#: that while generation is faster than real time)
FORECAST_EXTRA_PIECES = 4


def start_hold(
    *,
    held_s: float,
    steps: int,
    emitted_to: int,
    boundaries: list[int],
    lookahead: int,
    context: int,
    step_s: float,
    decode_step_s: float,
    step_audio_s: float,
) -> float:
    """Seconds to wait, from now, before playing ``held_s`` of audio so that no later piece is late.

    ``steps`` GPT steps are done and pieces up to step ``emitted_to`` decoded; the next pieces end at
    ``boundaries`` and each is decoded once ``lookahead`` steps past its end are generated, every GPT
    step costing ``step_s`` and its decode window (the piece plus ``context`` steps) ``decode_step_s``
    per step.
    """
    hold, queued_s, previous, decoding_s = 0.0, held_s, emitted_to, 0.0
    for boundary in boundaries:
        decoding_s += (boundary - previous + context) * decode_step_s
        ready_in = max(0, boundary + lookahead - steps) * step_s + decoding_s
        hold = max(hold, ready_in - queued_s)  # played from `hold`, it is needed at hold + queued_s
        queued_s += (boundary - previous) * step_audio_s
        previous = boundary
    return hold


class PlayThrough:
    """Between a :class:`StreamingDecoder` and the consumer: what to hand over now, per GPT step.

    One per reply (its sentences share the playhead); call :meth:`sentence` once each sentence's
    first GPT step is done, :meth:`step` after every step with the pieces it produced, and
    :meth:`flush` with the sentence's last piece.
    """

    def __init__(
        self,
        options: StreamDecodeOptions,
        *,
        step_audio_s: float,
        sample_rate: int,
        max_hold_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.step_audio_s = step_audio_s
        self.sample_rate = sample_rate
        self.max_hold_s = max_hold_s
        self.clock = clock
        self.holds: list[float] = []  #: every hold decided, seconds
        self._playhead = float("-inf")  # when the audio handed over so far has played out
        self._held: list[np.ndarray] = []
        self._release_at: float | None = None
        self._started = 0.0  # when this sentence's first step was done
        self._steps = 0
        self._pieces = 0  # pieces the decoder has emitted in this sentence
        self._decode_s = 0.0  # time spent decoding them
        self._decoded_steps = 0  # steps their windows covered, context included

    def sentence(self) -> None:
        """A new sentence's first GPT step (after its prompt's prefill) is done; :meth:`step` follows."""
        self._started, self._steps, self._pieces = self.clock(), 0, 0
        self._decode_s, self._decoded_steps = 0.0, 0

    def step(
        self, pieces: list[np.ndarray], decode_s: float = 0.0, decoded_steps: int = 0
    ) -> list[np.ndarray]:
        """One more GPT step done, then ``pieces`` decoded in ``decode_s`` from windows covering
        ``decoded_steps`` steps; returns the audio to hand over now."""
        now = self.clock()
        self._steps += 1
        self._pieces += len(pieces)
        self._decode_s += decode_s
        self._decoded_steps += decoded_steps
        self._held.extend(p for p in pieces if len(p))
        if not self._held:
            return []
        if self._release_at is None:
            if self._playhead > now:  # earlier audio still plays: holding would only cut a gap
                return self._hand_over(now)
            self._release_at = now + self._hold()
        if now >= self._release_at:
            return self._hand_over(now)
        return []

    def flush(self, pieces: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """A sentence is complete (``pieces``: its last): hand over everything held, and those."""
        self._held.extend(p for p in pieces or [] if len(p))
        return self._hand_over(self.clock()) if self._held else []

    def _hold(self) -> float:
        opts = self.options
        boundary, emitted_to, boundaries = 0, 0, []
        for index in range(256):
            boundary += piece_size(opts, index)
            if index < self._pieces:
                emitted_to = boundary
                continue
            boundaries.append(boundary)
            if len(boundaries) > FORECAST_EXTRA_PIECES and piece_size(opts, index) >= opts.chunk:
                break
        generating_s = self.clock() - self._started - self._decode_s  # timed from the first step's end
        held_s = sum(len(p) for p in self._held) / self.sample_rate
        hold = start_hold(
            held_s=held_s,
            steps=self._steps,
            emitted_to=emitted_to,
            boundaries=boundaries,
            lookahead=opts.lookahead,
            context=opts.left_context + opts.lookahead,
            step_s=max(generating_s, 0.0) / max(self._steps - 1, 1),
            decode_step_s=self._decode_s / max(self._decoded_steps, 1),
            step_audio_s=self.step_audio_s,
        )
        hold = min(max(hold, 0.0), self.max_hold_s)
        self.holds.append(hold)
        return hold

    def _hand_over(self, now: float) -> list[np.ndarray]:
        out, self._held, self._release_at = self._held, [], None
        seconds = sum(len(p) for p in out) / self.sample_rate
        self._playhead = max(self._playhead, now) + seconds
        return out
