"""One conversation on a shared :class:`~voiceloop.tts.chattts.engine.ChatTts`: its voice and its
cancellable, cooperative synthesis stream (split from the engine module, which re-exports it)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ...compute import CancelToken
from ..base import TtsSession
from .voice import Voice

if TYPE_CHECKING:
    from .engine import ChatTts
    from .options import ChatTtsOptions


def settings_defaults(options: ChatTtsOptions) -> dict[str, object]:
    """What a session's unset knobs are: the engine's options (``TtsEngine.settings_defaults``)."""
    sampling, temperature = options.sampling, options.sampling.temperature
    return {
        "temperature": None if isinstance(temperature, tuple) else temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "refine": options.refine,
        "refine_prompt": options.refine_control,
    }


class ChatTtsSession(TtsSession):
    """One conversation's voice: a given voice (a spec, or a decoded :class:`Voice` such as one
    made from a recording), else one random voice kept for the whole session."""

    def __init__(self, engine: ChatTts, voice: str | Voice | None = None) -> None:
        self.engine = engine
        chosen = voice if isinstance(voice, Voice) else engine.voice(voice)
        if chosen is None and engine.stats is not None:
            chosen = engine.voice(engine.random_voice())  # never a new random voice per sentence
        self.voice = chosen
        self._cancel: CancelToken | None = None

    @property
    def speaker(self) -> object:
        """The speaker vector (None for ``[empty_spk]``, e.g. a voice made from a recording)."""
        return None if self.voice is None else self.voice.speaker

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        token = self._cancel = CancelToken()
        # checked every GPT step; this session's settings as the request's (read once per piece)
        generate = functools.partial(self.engine.stream, cancel=token, **self._knobs())
        # Cooperative: paused at each GPT step, so sessions interleave (and their steps batch)
        # instead of waiting for each other's whole sentences.
        stream = self.engine.lane.stream(generate, text, self.voice, cancel=token, cooperative=True)
        async for chunk in stream:
            yield chunk

    def _knobs(self) -> dict[str, Any]:
        """:attr:`settings` as :meth:`ChatTts.stream` arguments (unset knobs: the engine's options)."""
        settings, knobs = self.settings, {}
        if settings.refine is not None:
            knobs["refine"] = settings.refine
        if settings.refine_prompt is not None:
            knobs["refine_control"] = settings.refine_prompt
        sampling = {k: getattr(settings, k) for k in ("temperature", "top_p", "top_k")}
        sampling = {k: v for k, v in sampling.items() if v is not None}
        if sampling:
            knobs["sampling"] = replace(self.engine.options.sampling, **sampling)
        report = self.on_rewrite
        if report is not None:  # from the lane's thread, queued ahead of the piece's first chunk
            loop = asyncio.get_running_loop()
            knobs["on_refined"] = lambda sentences: loop.call_soon_threadsafe(report, " ".join(sentences))
        return knobs

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()
