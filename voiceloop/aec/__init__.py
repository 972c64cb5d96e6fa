"""Echo handling: the bot must never hear (and answer, or interrupt) itself through the speakers.

    output side ── EchoReference.push(samples, rate, play_time) ──┐
    mic ──► EchoStage (AEC3 and/or energy gate) ──► VadStage ──► EchoTurnFilter ──► asr ...
                  └── allow_barge_in: BargeInOptions(allow=...) ─┘

* :class:`EchoReference` — the bot audio as played, on the pipeline clock; the stage holds each mic
  frame until the far end it is compared with has been written (``final_until``).
* :class:`EchoDelayEstimator` — where the echo really is relative to the reported play times
  (GCC-PHAT on the raw mic); the canceller and the gate move onto it when it lies outside their
  windows.
* :class:`EchoCanceller` — WebRTC AEC3 (``pip install 'voiceloop[echo]'``, the ``livekit`` package).
* :class:`EchoGate` — model-free fallback and second line of defence: mic energy the echo
  cannot explain is the user's; a barge-in predicate and an optional mute while the bot plays.
* :class:`EchoStage` / :class:`EchoTurnFilter` — the two in the graph; modes "aec" (default
  when AEC3 is installed), "gate" (default otherwise), "aec+gate", "off".
* :mod:`voiceloop.aec.room` — synthetic echo paths for tests and benchmarks.

The package is ``aec``, not ``echo``: ``voiceloop.echo`` is the default dialogue handler, and a
submodule of that name would replace it as an attribute of the package once imported.
"""

from .canceller import AecOptions, EchoCanceller, EchoUnavailable, aec_available, check_mic_frame
from .delay import DelayOptions, EchoDelayEstimator
from .gate import EchoGate, GateFrame, GateOptions, level_db
from .reference import EchoReference
from .stage import MODES, EchoModeError, EchoProcessor, EchoStage, EchoTurnFilter, default_mode, resolve_mode

__all__ = [
    "MODES",
    "AecOptions",
    "DelayOptions",
    "EchoCanceller",
    "EchoDelayEstimator",
    "EchoGate",
    "EchoModeError",
    "EchoProcessor",
    "EchoReference",
    "EchoStage",
    "EchoTurnFilter",
    "EchoUnavailable",
    "GateFrame",
    "GateOptions",
    "aec_available",
    "check_mic_frame",
    "default_mode",
    "level_db",
    "resolve_mode",
]
