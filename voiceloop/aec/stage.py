"""Echo handling in the graph: ``[mic, EchoStage, VadStage, EchoTurnFilter, asr, ...]``.

``EchoStage`` cleans (and optionally mutes) mic frames before the VAD hears them; its
:meth:`EchoStage.allow_barge_in` is the ``BargeInOptions(allow=...)`` predicate; the optional
``EchoTurnFilter`` after the VAD drops the utterances whose barge-in the gate refused, so the
bot's own voice never reaches the ASR and the bot never answers itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math

from ..clock import now
from ..errors import UserError
from ..frames import AudioFrame, Frame, SpeechEnded, SpeechStarted
from ..pipeline import Stage
from .canceller import AecOptions, EchoCanceller, EchoUnavailable, aec_available, check_mic_frame
from .delay import DelayOptions, EchoDelayEstimator
from .gate import EchoGate, GateOptions
from .reference import EchoReference

log = logging.getLogger("voiceloop")

MODES = ("aec", "gate", "aec+gate", "off")

#: A mic frame waits at most this long for its reference to be written ...
REFERENCE_WAIT_S = 0.1
#: ... and only when the reference is written up to within this much of what the frame needs
#: (a writer is feeding it); polled every REFERENCE_POLL_S.
REFERENCE_LIVE_S = 0.25
REFERENCE_POLL_S = 0.004
#: a reference not advanced for this long has no writer (a device writes every block, ~20 ms)
REFERENCE_STALL_S = 0.06
#: a barge-in whose raw mic is at least this much (energy share) one delayed copy of the bot's
#: audio is the bot's echo when that copy lies more than MOVED_S from the tracked delay (the echo
#: alone after a jump lies well above it, a user over the echo well below: benchmarks/echo.py)
ECHO_SHARE = 0.5
MOVED_S = 0.03
#: ... or from where at least MOVED_ESTIMATES confident delay estimates of the last REALIGN_S put
#: the echo (the estimator settles a move only after ~1 s; AEC3 re-converges for longer)
REALIGN_S = 2.0
MOVED_ESTIMATES = 3
#: no holding while this many mic frames queue behind the held one: the mic path is behind real
#: time already, and holding more would back it up into dropped mic frames (seen under load)
REFERENCE_BACKLOG_FRAMES = 2


class EchoModeError(UserError, ValueError):
    """An unknown echo mode (a user-facing option: ``--echo``)."""


def default_mode() -> str:
    """What "auto" means everywhere (CLI, library): AEC3 and the energy gate judging what it
    leaves ("aec+gate") when the AEC engine is installed, else the gate alone. The gate catches
    what the canceller misses while it converges or when play-time estimates are off."""
    return "aec+gate" if aec_available() else "gate"


def resolve_mode(mode: str | None) -> str:
    """Validate a mode; None or "auto" picks :func:`default_mode`."""
    if mode is None or mode == "auto":
        return default_mode()
    if mode not in MODES:
        raise EchoModeError(f"echo mode must be one of auto, {', '.join(MODES)}; got {mode!r}")
    return mode


class EchoProcessor:
    """The stage's work without the graph (tests, benchmarks, custom capture loops).

    ``mode`` "aec": AEC3 only; "gate": energy gate only; "aec+gate": the gate judges the
    cancelled signal; "off": frames pass untouched. With ``mode=None`` an unloadable AEC engine
    falls back to the gate (logged); naming "aec" explicitly raises :class:`EchoUnavailable`.
    ``track_delay``: measure the echo's real delay on the raw mic (``delay`` tunes how), so the
    canceller and the gate read the reference where the echo is; False trusts the reported play
    times (a misreport beyond the canceller's ~150 ms window then leaks the echo for the run).
    """

    def __init__(
        self,
        reference: EchoReference,
        mode: str | None = None,
        *,
        aec: AecOptions | None = None,
        gate: GateOptions | None = None,
        track_delay: bool = True,
        delay: DelayOptions | None = None,
    ) -> None:
        self.reference = reference
        resolved = resolve_mode(mode)
        track = track_delay and resolved != "off"
        self.delay = EchoDelayEstimator(reference, delay) if track else None
        self.canceller: EchoCanceller | None = None
        if "aec" in resolved:
            try:
                self.canceller = EchoCanceller(reference, aec, self.delay)
            except EchoUnavailable as exc:
                if mode not in (None, "auto"):
                    raise
                log.warning("echo cancellation unavailable, using the echo gate: %s", exc)
                resolved = "gate"
        self.mode = resolved
        self.gate = EchoGate(reference, gate, self.delay) if "gate" in resolved else None
        self.frames = 0
        #: barge-ins refused because the echo had moved away from the tracked delay
        self.moved_refusals = 0

    def process(self, frame: AudioFrame) -> AudioFrame:
        """Clean one 16 kHz mono int16 mic frame (whole 10 ms blocks)."""
        self.frames += 1
        if self.delay is not None:
            self.delay.observe(check_mic_frame(frame, self.reference.rate), frame.capture_time)
        if self.canceller is not None:
            frame = self.canceller.process(frame)
        if self.gate is not None:
            frame = self.gate.process(frame)
        return frame

    def reads_until(self, frame: AudioFrame) -> float:
        """The latest reference time processing ``frame`` reads (-inf when nothing reads it)."""
        duration = len(frame.samples) / frame.sample_rate
        readers = [r for r in (self.canceller, self.gate) if r is not None]
        return max((r.reads_until(frame.capture_time, duration) for r in readers), default=-math.inf)

    def allow(self, started: SpeechStarted) -> bool:
        """Barge-in predicate (always True without a gate): the gate's verdict, and no barge-in
        that is the bot's own voice arriving where the canceller and the gate do not look."""
        gate = self.gate
        if gate is None:
            return True
        allowed = gate.allow(started)
        debug = log.isEnabledFor(logging.DEBUG)
        delay = self.delay
        found = None  # (lag, share) of the trigger's raw mic: computed once, for the check and the log
        if delay is not None and (allowed or debug):
            found = delay.echo_share(started.speech_time, started.time)
        if allowed and self._echo_moved(started, found):
            gate.refused.append(started.turn_id)
            self.moved_refusals += 1
            allowed = False
        if debug:  # why the bot was (not) cut off: the evidence, in one line
            log.debug(
                "barge-in %s (turn %d, %.0f ms of speech): gate %s, raw echo share %s, tracked delay %s",
                "allowed" if allowed else "refused",
                started.turn_id,
                1000 * (started.time - started.speech_time),
                gate.explain(started),
                "-" if found is None else f"{found[1]:.2f} at {1000 * found[0]:.0f} ms",
                "-" if delay is None or delay.delay_s is None else f"{1000 * delay.delay_s:.0f} ms",
            )
        return allowed

    def _echo_moved(self, started: SpeechStarted, found: tuple[float, float] | None) -> bool:
        """Whether the trigger's raw mic (``found``: :meth:`EchoDelayEstimator.echo_share`) is
        mostly one delayed copy of the reference at a lag the echo was not at moments ago: away
        from the tracked delay, or away from where several confident delay estimates of the last
        ``REALIGN_S`` put it. After such a move the canceller re-converges for seconds and the
        gate's fit is at the old lag, and both take the echo for the user. Causes: a sound server
        rebuffering after an underrun, a device switch. ``benchmarks/echo.py`` measures the false
        barge-ins after such jumps with and without this check."""
        delay = self.delay
        if delay is None or found is None or found[1] < ECHO_SHARE:
            return False
        lag = found[0]
        if delay.delay_s is not None and abs(lag - delay.delay_s) > MOVED_S:
            return True
        since = started.time - REALIGN_S
        elsewhere = sum(1 for t, at in delay.found if t >= since and abs(at - lag) > MOVED_S)
        return elsewhere >= MOVED_ESTIMATES


class EchoStage(Stage):
    """Sits between the mic source and the VAD; everything but AudioFrames passes through.

    The output side feeds ``reference`` (see :class:`EchoReference`); wire
    ``BargeInOptions(allow=stage.allow_barge_in)`` for the gate to decide barge-ins. Counters:
    ``echo.suppressed_frames`` (muted by the gate), ``echo.refused_barge_ins`` (of which
    ``echo.moved_refusals``: the echo path had just moved),
    ``echo.delay_moves`` (the measured echo delay was set or moved); gauge ``echo.delay_ms``.
    """

    name = "echo"

    def __init__(
        self,
        reference: EchoReference,
        mode: str | None = None,
        *,
        aec: AecOptions | None = None,
        gate: GateOptions | None = None,
        track_delay: bool = True,
        delay: DelayOptions | None = None,
    ) -> None:
        super().__init__()
        self.processor = EchoProcessor(
            reference, mode, aec=aec, gate=gate, track_delay=track_delay, delay=delay
        )
        self.reference = reference
        self._have = -math.inf  # the reference's final_until when last looked at ...
        self._have_since = -math.inf  # ... and since when it has stood there (pipeline time)

    @property
    def mode(self) -> str:
        return self.processor.mode

    @property
    def gate(self) -> EchoGate | None:
        return self.processor.gate

    async def process(self, frame: Frame) -> None:
        if frame.__class__ is not AudioFrame:
            await self.forward(frame)
            return
        await self._await_reference(frame)  # type: ignore[arg-type]
        gate, delay = self.processor.gate, self.processor.delay
        muted = gate.suppressed if gate is not None else 0
        moves = delay.moves if delay is not None else 0
        out = self.processor.process(frame)  # type: ignore[arg-type]
        if gate is not None and gate.suppressed != muted:
            self.metrics.count("echo.suppressed_frames")
        if delay is not None and delay.moves != moves and delay.delay_s is not None:
            self.metrics.count("echo.delay_moves")
            self.metrics.gauge("echo.delay_ms", round(delay.delay_s * 1000))
        await self.forward(out)

    async def _await_reference(self, frame: AudioFrame) -> None:
        """Hold the frame until the reference it is compared with has been written.

        A mic block is processed as soon as it is captured, but its far end lies up to the lead
        ahead, which the speaker writes only about its output latency ahead of playing. Waits
        only while a writer keeps the reference near the frame's time (a device playing or idling)
        and keeps advancing it, at most ``REFERENCE_WAIT_S``: a frame that times out counts as
        ``echo.reference_late``; a writer that has not advanced the reference for
        ``REFERENCE_STALL_S`` (an output stage after a reply) is not waited for until it writes
        more. Frames held at all count as ``echo.reference_waits``.
        Nothing is held while ``REFERENCE_BACKLOG_FRAMES`` mic frames queue behind this one
        (``echo.reference_behind``): the far end's completeness is not worth falling behind for.
        """
        need = self.processor.reads_until(frame)
        started = t = now()
        have = self._written(t)
        if have >= need or have < need - REFERENCE_LIVE_S or t - self._have_since >= REFERENCE_STALL_S:
            return  # written, not live, or its writer stopped (until it writes more)
        if self._backlogged():
            return
        self.metrics.count("echo.reference_waits")
        while t - started < REFERENCE_WAIT_S:
            await asyncio.sleep(REFERENCE_POLL_S)
            t = now()
            have = self._written(t)
            if have >= need or self._backlogged():
                return
            if t - self._have_since >= REFERENCE_STALL_S:  # nobody is writing: the reply ended
                return
        self.metrics.count("echo.reference_late")

    def _written(self, t: float) -> float:
        """The reference's final_until now, noting when it last advanced (a stopped writer is
        told apart across frames, not per hold: holds cut short by a backlog each saw less than
        REFERENCE_STALL_S of it, and every frame after a reply waited again)."""
        have = self.reference.final_until
        if have != self._have:
            self._have, self._have_since = have, t
        return have

    def _backlogged(self) -> bool:
        """Whether mic frames queue behind the one being held (counted: the hold is skipped)."""
        if self.inbox is None or len(self.inbox) < REFERENCE_BACKLOG_FRAMES:
            return False
        self.metrics.count("echo.reference_behind")
        return True

    def allow_barge_in(self, started: SpeechStarted) -> bool:
        """``BargeInOptions(allow=...)``: refuse barge-ins the echo explains."""
        moved = self.processor.moved_refusals
        allowed = self.processor.allow(started)
        if not allowed and self.pipeline is not None:
            self.metrics.count("echo.refused_barge_ins")
            if self.processor.moved_refusals != moved:
                self.metrics.count("echo.moved_refusals")
        return allowed

    def turn_filter(self) -> EchoTurnFilter:
        """The matching post-VAD filter (drops refused utterances)."""
        return EchoTurnFilter(self.processor.gate)


class EchoTurnFilter(Stage):
    """After the VAD: utterances whose barge-in the gate refused are discarded, not transcribed.

    A refused SpeechStarted still opens a VAD utterance; left alone, the ASR would transcribe the
    bot's own words and the dialogue would answer them. Here its audio is dropped and its
    SpeechEnded marked ``discarded`` (the ASR then forgets it, as for too-short speech); counted
    as ``echo.discarded_turns``.
    """

    name = "echo_filter"

    def __init__(self, gate: EchoGate | None) -> None:
        super().__init__()
        self.gate = gate
        self._dropping: int | None = None  # turn id of the refused utterance in progress

    async def process(self, frame: Frame) -> None:
        gate = self.gate
        if gate is None:
            await self.forward(frame)
        elif frame.__class__ is AudioFrame:
            if self._dropping is None:
                await self.forward(frame)
        elif isinstance(frame, SpeechStarted):
            self._dropping = frame.turn_id if frame.turn_id in gate.refused else None
            await self.forward(frame)
        elif isinstance(frame, SpeechEnded) and frame.turn_id == self._dropping:
            self._dropping = None
            metrics = self.metrics
            metrics.count("echo.discarded_turns")
            if not frame.discarded:
                metrics.turn(frame.turn_id).discarded = True
                frame = dataclasses.replace(frame, discarded=True)
                await self.forward(frame)
                self.pipeline.finish_turn(frame.turn_id)  # type: ignore[union-attr]
            else:
                await self.forward(frame)  # the VAD discarded it already (and closed the turn)
        else:
            await self.forward(frame)
