"""Acoustic echo cancellation with WebRTC's AEC3, through the ``livekit`` package's APM binding.

Why this engine: AEC3 is the canceller every browser call uses; ``livekit`` ships it prebuilt
(manylinux/macOS/Windows wheels, no compiler; numpy and protobuf are its dependencies) and keeps
it current. ``benchmarks/echo.py`` measures its echo-return-loss enhancement and the barge-ins it
gets right on 40 synthetic rooms (delay, reverberation, echo level, loudspeaker overdrive). It needs
the play times right to within a window about 150 ms wide, placed by ``AecOptions.lead_ms``
(-100..+50 ms with the default lead): with echo ahead of its reference, or too far behind it, it
cancels nothing — so the echo's real delay is tracked.

Binding facts this module relies on (livekit 1.2.1, checked by the tests):

* ``process_stream`` / ``process_reverse_stream`` take int16 frames of a whole number of 10 ms
  blocks (the Rust layer splits them) at any rate 8-96 kHz, mono or stereo. Any other length is
  a Rust ``assert!`` that **aborts the Python process**, so lengths are checked here first.
* ``set_stream_delay_ms`` accepts 0..500 ms and raises outside it. AEC3 estimates the delay
  itself; the hint is passed because the APM contract asks for it.
* The capture frame is processed in place (its CPU cost per frame: ``benchmarks/echo.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError
from ..frames import AudioFrame
from .delay import EchoDelayEstimator
from .reference import EchoReference


class EchoUnavailable(UserError):
    """Echo cancellation was asked for but its engine cannot be loaded."""


_rtc: Any = None


def aec_available() -> bool:
    """Whether the AEC engine can be imported (cheap: does not import it)."""
    if _rtc is not None:
        return True
    try:
        return importlib.util.find_spec("livekit") is not None
    except (ImportError, ValueError):  # a broken or blocked install
        return False


def _load_rtc() -> Any:
    global _rtc
    if _rtc is None:
        try:
            _rtc = importlib.import_module("livekit.rtc")
        except ImportError as exc:
            raise EchoUnavailable(
                f"echo cancellation needs WebRTC's audio processing from the livekit package ({exc}); "
                "install it with: pip install 'voiceloop[echo]' - or use the energy gate (echo mode 'gate')"
            ) from exc
    return _rtc


#: AEC3 cancels echo that follows its far-end block by 0 .. about this much, and echo ahead of its
#: far end not at all (benchmarks/echo.py's play-time sweep)
WORKABLE_S = 0.25


@dataclass
class AecOptions:
    """How the canceller is fed and which WebRTC stages run besides AEC3.

    ``lead_ms``: the reference handed to AEC3 with a mic block is the one played this long
    *after* the block's capture time. AEC3 cannot cancel echo that reaches it before its
    reference, but copes with extra delay. The lead absorbs play times reported later than played,
    up to about its length (``benchmarks/echo.py``'s play-time sweep per lead). Errors outside the
    window are handled by delay tracking (:class:`~voiceloop.aec.delay.EchoDelayEstimator`, on by
    default in :class:`~voiceloop.aec.stage.EchoProcessor`): an echo measured outside it moves the
    lead onto the measured delay (``tracked_lead_ms``), once, with a fresh AEC3. So the lead is
    40, not 80: each mic block waits until the speaker has written the far end it reads (see
    :class:`~voiceloop.aec.stage.EchoStage`), and a longer lead makes that wait, added to every
    turn's endpoint, longer. (Self-interruptions on a PulseAudio loopback, once blamed on play
    times, came from reading far end not yet written: AEC3 fed a far end with holes loses the
    echo path.)
    ``noise_suppression`` / ``auto_gain_control``: off, because they change what the VAD and the
    ASR were tuned on. ``high_pass_filter``: on; AEC3 enables it anyway.
    """

    lead_ms: int = 40
    #: the lead placed on a measured echo delay when the reported play times put the echo outside
    #: AEC3's window: only the measurement's error and a device gap shifting the echo later
    #: (a few ms on PulseAudio) need absorbing
    tracked_lead_ms: int = 40
    noise_suppression: bool = False
    auto_gain_control: bool = False
    high_pass_filter: bool = True

    def __post_init__(self) -> None:
        for name in ("lead_ms", "tracked_lead_ms"):
            lead = getattr(self, name)
            if isinstance(lead, bool) or not isinstance(lead, int) or not 0 <= lead <= 400 or lead % 10:
                raise ValueError(f"{name} must be a multiple of 10 in [0, 400], got {lead!r}")


def check_mic_frame(frame: Any, rate: int) -> np.ndarray:
    """The frame's samples if it is mono int16 at ``rate`` in whole 10 ms blocks, else ValueError."""
    if not isinstance(frame, AudioFrame):
        raise ValueError(f"echo processing takes AudioFrame, got {type(frame).__name__}")
    x = frame.samples
    if not isinstance(x, np.ndarray) or x.dtype != np.int16:
        got = getattr(x, "dtype", type(x).__name__)
        raise ValueError(f"mic frames must be int16 numpy arrays, got {got}")
    if x.ndim == 2 and x.shape[1] == 1:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise ValueError(
            f"mic frames must be mono, got shape {x.shape}; downmix them first (voiceloop.audio.InputAdapter)"
        )
    if frame.sample_rate != rate:
        raise ValueError(
            f"mic frames must be {rate} Hz to match the echo reference, got {frame.sample_rate} Hz"
        )
    block = rate // 100
    if len(x) == 0 or len(x) % block:
        raise ValueError(
            f"mic frames must be whole 10 ms blocks ({block} samples at {rate} Hz), got {len(x)} samples"
        )
    return x


class EchoCanceller:
    """Removes the played reference from 16 kHz mono mic frames (AEC3).

    For each mic frame it reads the reference played over the same clock interval (shifted by
    ``lead_ms``), gives it to AEC3 as the far end, then processes the mic frame. The reference
    and the capture only meet through the pipeline clock, so the output side may push from any
    thread at any pace.
    """

    def __init__(
        self,
        reference: EchoReference,
        options: AecOptions | None = None,
        delay: EchoDelayEstimator | None = None,
    ) -> None:
        self.reference = reference
        self.options = options if options is not None else AecOptions()
        #: measured echo delay (fed by its owner); None: trust the reported play times
        self.delay = delay
        self.rate = reference.rate
        self._rtc = _load_rtc()
        self._lock = threading.Lock()
        self._apm = self._new_apm()
        self._lead = self.options.lead_ms / 1000  # see lead_s
        #: times the lead moved onto a measured echo delay
        self.lead_moves = 0

    def _new_apm(self) -> Any:
        o = self.options
        return self._rtc.AudioProcessingModule(
            echo_cancellation=True,
            noise_suppression=o.noise_suppression,
            high_pass_filter=o.high_pass_filter,
            auto_gain_control=o.auto_gain_control,
        )

    def process(self, frame: AudioFrame) -> AudioFrame:
        """A new frame with the echo removed (same timing fields; the input is not modified)."""
        x = check_mic_frame(frame, self.rate)
        cleaned = self.process_samples(x, frame.capture_time)
        return AudioFrame(cleaned, frame.sample_rate, frame.capture_time, frame.seq)

    def process_samples(self, x: np.ndarray, capture_time: float) -> np.ndarray:
        """Echo-cancel mono int16 samples (whole 10 ms blocks at ``rate``) captured at ``capture_time``."""
        n = len(x)
        self._follow_delay()
        lead = self._lead
        far = self.reference.read(capture_time + lead, n)
        rtc = self._rtc
        far_frame = rtc.AudioFrame(bytearray(far.tobytes()), self.rate, 1, n)
        mic_frame = rtc.AudioFrame(bytearray(x.tobytes()), self.rate, 1, n)
        with self._lock:
            self._apm.process_reverse_stream(far_frame)
            self._apm.set_stream_delay_ms(min(500, max(0, round(lead * 1000))))
            self._apm.process_stream(mic_frame)
        return np.frombuffer(mic_frame.data, dtype=np.int16).copy()

    @property
    def lead_s(self) -> float:
        """How far after a mic block's capture time its far-end block starts, on the reported play clock."""
        return self._lead

    def reads_until(self, capture_time: float, duration: float) -> float:
        """The latest reference time processing a mic block at ``capture_time`` reads."""
        return capture_time + duration + self._lead

    def _follow_delay(self) -> None:
        """Move the lead onto the measured echo when the echo lies where AEC3 cannot cancel it.

        Only then, and with a fresh AEC3: moving the far end while AEC3 works costs more than it
        gains (a jump lost the path for seconds, ERLE 50 -> 10 dB, and even a move during a pause
        left the next reply at 4 dB).
        """
        measured = self.delay.delay_s if self.delay is not None else None
        if measured is None or 0.0 <= self._lead + measured <= WORKABLE_S:
            return
        self._lead = self.options.tracked_lead_ms / 1000 - measured
        with self._lock:
            self._apm = self._new_apm()
        self.lead_moves += 1

    def reset(self) -> None:
        """Forget the learned echo path and any lead moved onto a measured delay (a new device or
        session; reset the delay estimator with it)."""
        with self._lock:
            self._apm = self._new_apm()
        self._lead = self.options.lead_ms / 1000
