"""``POST /voice``: a recording from the page becomes the voice of that page's call.

Body (``application/json``, so a cross-origin page needs a CORS preflight like ``/offer``)::

    {"call": "<the call id from the offer's answer>", "audio": "<base64 of a WAV/FLAC/OGG file>",
     "transcript": "<its words, optional: else the loop's ASR hears them>", "save": "<NAME, optional>"}

The call id is the capability: 128 random bits only that page was given, never the small session
number. Checks, cheapest first, each a :class:`~voiceloop.serve.guard.Refused`: Host/Origin (the
guard's middleware), the bearer token, a per-address rate (429), the body's size while it is read
(413: ``max_bytes`` of audio), the call id's shape (400), the file's header — a sound file at all
(415) and at most ``max_seconds`` long (413) — before any sample is decoded; then the call (404 when
this server or its cluster has no live call by that id) and the engine's own checks (422: silent,
shorter than 1 s). Nothing is written to disk unless the operator allows saving
(``--allow-voice-saving``); then ``save`` stores the voice under that name (403 otherwise).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web

from ..errors import UserError
from .guard import Guard, RateLimiter, Refused, client_key
from .history import CALL_ID
from .tts_panel import Recording

#: the rate a recording is handed on at (ChatTTS's own; the engine resamples anything else itself)
RATE = 24_000
_FIELDS = {"call", "audio", "transcript", "save"}


@dataclass
class VoiceUploadOptions:
    """Limits of ``POST /voice`` and whether a page may save what it uploads."""

    max_bytes: int = 2_000_000  # of audio (the base64 body is a third larger)
    max_seconds: float = 30.0  # the longest prompt that leaves the GPT room to speak
    per_minute: float = 6.0  # uploads per client address after a burst (429 beyond)
    burst: int = 3
    max_transcript_chars: int = 500
    allow_saving: bool = False  # --allow-voice-saving: {"save": NAME} writes to the voice store

    def __post_init__(self) -> None:
        if not 1024 <= self.max_bytes <= 64_000_000:
            raise UserError(f"voice upload size must be in [1 KiB, 64 MB], got {self.max_bytes}")
        if not 1.0 <= self.max_seconds <= 120.0:
            raise UserError(f"voice upload length must be in [1, 120] s, got {self.max_seconds}")
        if self.per_minute < 0 or self.burst < 1:
            raise UserError("voice upload rate must be >= 0 per minute and the burst >= 1")


def decode_audio(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    """A sound file's samples as float32 mono at :data:`RATE`; its length is checked from the header
    before any sample is decoded (Refused 415 / 413)."""
    import soundfile
    import soxr

    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception:  # libsndfile: "Format not recognised", a truncated header, ...
        raise Refused(415, "the upload is not a sound file soundfile can read (WAV, FLAC or OGG)") from None
    if info.frames <= 0 or info.samplerate <= 0 or info.channels <= 0:
        raise Refused(415, "the sound file holds no audio")
    seconds = info.frames / info.samplerate
    if seconds > max_seconds:
        raise Refused(413, f"the recording is {seconds:.1f} s long; at most {max_seconds:g} s")
    if not 4000 <= info.samplerate <= 192_000 or info.channels > 8:
        raise Refused(415, f"unsupported audio: {info.samplerate} Hz, {info.channels} channels")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise Refused(415, f"the sound file cannot be decoded: {exc}") from None
    mono = samples.mean(axis=1)
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32), RATE


class VoiceUploads:
    """The ``POST /voice`` handler of one server; ``use`` hands a recording to the call's process."""

    def __init__(
        self,
        guard: Guard,
        use: Callable[[str, Recording], Awaitable[dict[str, Any]]],
        options: VoiceUploadOptions,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.guard, self.use, self.options = guard, use, options
        self.limiter = RateLimiter(options.per_minute, options.burst, clock or time.monotonic)

    def config(self, catalog: dict[str, Any]) -> dict[str, Any] | None:
        """What ``GET /config`` tells the page (None: the engine cannot make voices)."""
        if not catalog.get("clone"):
            return None
        o = self.options
        return {"max_bytes": o.max_bytes, "max_seconds": o.max_seconds, "save": o.allow_saving}

    async def handle(self, request: web.Request) -> web.Response:
        self.guard.authorize(request)
        wait = self.limiter.take(client_key(request.remote))
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            raise Refused(429, f"too many voice uploads: retry in {retry} s", {"Retry-After": retry})
        body = await self._read(request)
        call, audio = body.get("call"), body.get("audio")
        if not isinstance(call, str) or not CALL_ID.fullmatch(call):
            raise Refused(400, '"call" must be the call id the offer\'s answer gave')
        transcript, save = body.get("transcript"), body.get("save")
        if transcript is not None and (
            not isinstance(transcript, str) or len(transcript) > self.options.max_transcript_chars
        ):
            raise Refused(
                400, f'"transcript" must be text of at most {self.options.max_transcript_chars} chars'
            )
        if save is not None and not isinstance(save, str):
            raise Refused(400, '"save" must be a voice name')
        if not isinstance(audio, str) or not audio:
            raise Refused(400, '"audio" must be the sound file, base64-encoded')
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise Refused(400, '"audio" is not valid base64') from None
        if len(data) > self.options.max_bytes:
            raise Refused(413, f"the recording is over {self.options.max_bytes} bytes")
        samples, rate = decode_audio(data, self.options.max_seconds)
        info = await self.use(call, Recording(samples, rate, transcript, save))
        return web.json_response(info, headers={"Cache-Control": "no-store"})

    async def _read(self, request: web.Request) -> dict[str, Any]:
        """The JSON body, read in pieces and cut off past the limit (the app's own body limit is
        an offer's 64 KiB, so this route reads the stream itself)."""
        if request.content_type != "application/json":
            raise Refused(415, f"Content-Type must be application/json, got {request.content_type}")
        limit = (self.options.max_bytes * 4) // 3 + 4 + 4096  # base64 of the audio, and the rest
        too_big = Refused(413, f"the recording is over {self.options.max_bytes} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_big
        chunks, size = [], 0
        while chunk := await request.content.read(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise Refused(400, "body is not JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, 'body must be a JSON object {"call": ..., "audio": ...}')
        unknown = set(body) - _FIELDS
        if unknown:
            raise Refused(400, f"unknown fields {sorted(unknown)}; known: {', '.join(sorted(_FIELDS))}")
        return body
