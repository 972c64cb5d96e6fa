"""The page's text-to-speech panel, per session: synthesis settings, the refined text, a recorded voice.

Page → server on the ``events`` data channel (:mod:`voiceloop.serve.session` dispatches it here):

* ``{"type": "tts", "temperature": 0.3, "top_p": 0.7, "top_k": 20, "refine": true,
  "refine_prompt": "[oral_2][laugh_0][break_6]"}``: this session's synthesis knobs from the next
  sentence on. Any subset; ``null`` puts a knob back to the engine's default. Validated by
  :class:`~voiceloop.tts.base.SynthesisSettings` and checked against what the engine acts on (the
  catalog's ``settings``); a bad message gets an ``error`` event and changes nothing.

Server → page:

* ``{"type": "tts", "settings": {...}}``: the settings now in force (after every change);
* ``{"type": "refined", "turn_id": N, "text": T, "refined": R}``: the engine rewrote a piece
  (ChatTTS's refinement), sent before that piece's audio;
* ``{"type": "voice", "voice": "recording"|NAME, "seconds": S, "transcript": T, ...}`` once a
  recording (``POST /voice``, :mod:`voiceloop.serve.voice_upload`) became this session's voice.

Everything here belongs to one session: another caller's settings and voice are never touched.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..asr.recording import transcribe_recording
from ..tts.base import SynthesisSettings, TtsEngine
from .guard import Refused

if TYPE_CHECKING:
    from ..asr.base import AsrEngine
    from .peers import Peers

log = logging.getLogger(__name__)

#: the data-channel message types this module handles
PANEL_MESSAGES = ("tts",)
#: what a page may name a saved recording (a file name in the engine's voice store)
VOICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")
RECORDING = "recording"  # the voice a session shows while it speaks in an unsaved recording


def panel_catalog(engine: TtsEngine) -> dict[str, Any]:
    """What the page needs to draw the panel (part of ``GET /voices``): which knobs the engine acts on,
    their defaults, and whether it can make a voice from a recording."""
    supported = sorted(engine.capabilities.settings)
    defaults = {k: v for k, v in engine.settings_defaults().items() if k in supported}
    return {
        "settings": supported,
        "defaults": defaults,
        "clone": callable(getattr(engine, "voice_from_audio", None)),
    }


def parse_settings(data: dict[str, Any], current: SynthesisSettings) -> SynthesisSettings:
    """A ``tts`` message's changes applied to ``current`` (ValueError naming what is wrong)."""
    changes = {k: v for k, v in data.items() if k not in ("type", "time")}
    if not changes:
        raise ValueError("a tts message needs at least one setting (temperature, top_p, ...)")
    if isinstance(changes.get("temperature"), int) and not isinstance(changes["temperature"], bool):
        changes["temperature"] = float(changes["temperature"])  # JSON 1 is the float 1.0
    if isinstance(changes.get("top_p"), int) and not isinstance(changes["top_p"], bool):
        changes["top_p"] = float(changes["top_p"])
    return current.merged(changes)


@dataclass
class Recording:
    """A decoded upload: float32 mono samples at ``rate``, and what the page asked for."""

    samples: np.ndarray
    rate: int
    transcript: str | None = None
    save: str | None = None  # a name to save the voice under (only with --allow-voice-saving)

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


class TtsPanel:
    """One session's panel: applies its ``tts`` messages and reports the refined text to its page."""

    def __init__(self, session: Any) -> None:
        self.session = session  # voiceloop.serve.session.Session (not imported: it imports this module)
        session.tts.on_rewrite = self._rewritten

    def on_message(self, data: dict[str, Any]) -> None:
        tts = self.session.tts
        settings = parse_settings(data, tts.settings)
        tts.set_settings(settings)  # ValueError for a knob this engine does not act on
        self.session.send({"type": "tts", "settings": settings.to_dict()})

    def _rewritten(self, turn_id: int, text: str, spoken: str) -> None:
        self.session.send({"type": "refined", "turn_id": turn_id, "text": text, "refined": spoken})

    async def use_recording(
        self, recording: Recording, asr: AsrEngine | None, allow_saving: bool
    ) -> dict[str, Any]:
        """Make a voice of ``recording`` and speak in it from the next sentence; Refused otherwise."""
        engine = self.session.tts.engine
        clone = getattr(engine, "voice_from_audio", None)
        if not callable(clone):
            raise Refused(501, "this TTS engine cannot make a voice from a recording")
        name = recording.save
        store = getattr(engine, "voice_store", None)
        if name is not None:
            if not allow_saving or store is None:
                raise Refused(403, "this server does not save voices (the operator's --allow-voice-saving)")
            if not VOICE_NAME.fullmatch(name):
                raise Refused(400, "a voice name is 1-40 letters, digits, '-' or '_'")
            if name in store.names():
                raise Refused(409, f"a voice named {name!r} exists already")
        heard = None
        if not (recording.transcript or "").strip() and asr is not None:
            heard = await transcribe_recording(asr, recording.samples, recording.rate)
        try:
            cloned = await asyncio.to_thread(
                clone,
                recording.samples,
                recording.rate,
                recording.transcript,
                transcribe=None if heard is None else (lambda _wave, _rate: heard),
            )
        except ValueError as exc:  # VoiceCloneError: silent, too short, no words heard, ...
            raise Refused(422, f"cannot make a voice of this recording: {exc}") from None
        voice = cloned.voice
        if name is not None:
            store.save(name, cloned.voice)
            self.session.catalog["names"] = sorted({*self.session.catalog["names"], name})
            voice = name
        self.session.tts.set_voice(voice)
        info = {
            "voice": name or RECORDING,
            "seconds": round(cloned.seconds, 2),
            "transcript": cloned.transcript,
            "transcript_from": cloned.transcript_source,
            "warnings": list(cloned.warnings),
            "saved": name,
        }
        self.session.send({"type": "voice", **info})
        return info


async def apply_recording(
    peers: Peers, call: str, recording: Recording, allow_saving: bool
) -> dict[str, Any]:
    """``POST /voice`` on the process that holds ``call`` (the server, or a cluster worker)."""
    session = peers.call_session(call)
    if session is None:
        raise Refused(404, "no live call with this id here (the call id comes from the offer's answer)")
    return await session.panel.use_recording(recording, peers.engines.asr, allow_saving)
