"""The streaming TTS engine interface.

A :class:`TtsEngine` is a loaded model shared by many pipelines; each pipeline opens a
:class:`TtsSession` (voice and any cross-piece state). Compute runs off the event loop.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TtsCapabilities:
    """What an engine can do, for callers (the CLI, the page) that offer options per engine."""

    streaming: bool = True  # audio arrives while a piece is still being synthesized
    voices: bool = False  # session(voice=...) selects among several voices (:meth:`TtsEngine.voices`)
    seed_voices: bool = False  # session(voice="seed:N") gives a reproducible voice per integer N
    #: the :class:`SynthesisSettings` fields its sessions act on (the page shows only those controls)
    settings: frozenset[str] = field(default_factory=frozenset)


#: tags a refine prompt may hold: ChatTTS's prosody controls for its refinement pass
REFINE_TAG = re.compile(r"\[(?:oral_[0-9]|laugh_[0-2]|break_[0-7])\]")
MAX_REFINE_PROMPT_CHARS = 80
#: the ranges a caller (a page) may ask for; ChatTTS's own web UI stays well inside them
TEMPERATURE_RANGE = (0.01, 1.5)
TOP_P_RANGE = (0.05, 1.0)
TOP_K_RANGE = (1, 100)


@dataclass(frozen=True)
class SynthesisSettings:
    """One session's synthesis knobs; None leaves a knob at the engine's own default.

    Validated here (ValueError naming the field), so a session never holds a value its engine would
    choke on mid-sentence. Which knobs an engine acts on: ``TtsEngine.capabilities.settings``.
    """

    temperature: float | None = None  # code sampling temperature
    top_p: float | None = None
    top_k: int | None = None
    refine: bool | None = None  # rewrite the text with prosody tags before speaking it
    refine_prompt: str | None = None  # the refinement's control tags, e.g. "[oral_2][laugh_0][break_6]"

    def __post_init__(self) -> None:
        for name, (low, high) in (("temperature", TEMPERATURE_RANGE), ("top_p", TOP_P_RANGE)):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high
            ):
                raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
        k = self.top_k
        if k is not None and (
            isinstance(k, bool) or not isinstance(k, int) or not TOP_K_RANGE[0] <= k <= TOP_K_RANGE[1]
        ):
            raise ValueError(f"top_k must be an integer in [{TOP_K_RANGE[0]}, {TOP_K_RANGE[1]}], got {k!r}")
        if self.refine is not None and not isinstance(self.refine, bool):
            raise ValueError(f"refine must be true or false, got {self.refine!r}")
        prompt = self.refine_prompt
        if prompt is not None:
            if not isinstance(prompt, str) or len(prompt) > MAX_REFINE_PROMPT_CHARS:
                raise ValueError(
                    f"refine_prompt must be a string of at most {MAX_REFINE_PROMPT_CHARS} characters"
                )
            rest = REFINE_TAG.sub("", prompt)
            if rest.strip():
                raise ValueError(
                    f"refine_prompt {prompt!r}: only tags [oral_0-9], [laugh_0-2] and [break_0-7], "
                    f"e.g. [oral_2][laugh_0][break_6]; not {rest.strip()[:20]!r}"
                )

    def given(self) -> frozenset[str]:
        """The knobs set (not left at the engine's default)."""
        return frozenset(f.name for f in fields(self) if getattr(self, f.name) is not None)

    def merged(self, changes: dict[str, Any]) -> SynthesisSettings:
        """These settings with ``changes`` applied (None resets a knob); validated again."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(
                f"unknown settings {sorted(unknown)}; known: {', '.join(f.name for f in fields(self))}"
            )
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TtsSession(ABC):
    """Text pieces in, int16 mono audio chunks (at the engine's rate) out."""

    #: this session's knobs (:meth:`configure`); an engine reads them at the start of each piece
    settings: SynthesisSettings = SynthesisSettings()
    #: when set, told the text the engine will actually speak whenever it rewrites a piece (ChatTTS's
    #: refinement), before that piece's first audio; called on the event loop
    on_rewrite: Callable[[str], None] | None = None

    @abstractmethod
    def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        """Yield audio for one speakable piece as it is generated.

        Closing the iterator early (barge-in) must stop generation before the next chunk.
        """

    def configure(self, settings: SynthesisSettings) -> None:
        """Use ``settings`` from the next piece on (the caller checked them against the engine's
        ``capabilities.settings``; a piece being spoken keeps the settings it started with)."""
        self.settings = settings

    def cancel(self) -> None:
        """Stop any generation in flight now (called on barge-in, from the event loop)."""

    async def aclose(self) -> None:
        """Release per-session resources."""


class TtsEngine(ABC):
    """A loaded synthesis model; ``session()`` is cheap and may be called per pipeline.

    Everything the loop needs is declared here, so it never looks past this class: the output
    ``sample_rate``, the compute ``device``, ``capabilities``, ``warm_up()`` before the first turn
    and ``close()`` at the end. An engine is registered by name in the ``voiceloop.tts_engines``
    entry-point group (:mod:`voiceloop.engines`).
    """

    sample_rate: int = 24_000

    @abstractmethod
    def session(self, voice: str | None = None) -> TtsSession:
        """A new independent synthesis stream, optionally with a voice."""

    @property
    def device(self) -> str:
        """Where the engine computes ("cpu", "cuda:0", ...): the loop shares the cores on a CPU."""
        return "cpu"

    #: the :class:`SynthesisSettings` fields this engine's sessions act on (none by default)
    synthesis_settings: frozenset[str] = frozenset()

    @property
    def capabilities(self) -> TtsCapabilities:
        return TtsCapabilities(
            voices=bool(self.voices()), seed_voices=self.seed_voices, settings=self.synthesis_settings
        )

    def settings_defaults(self) -> dict[str, Any]:
        """What each of ``synthesis_settings`` is when a session leaves it alone (for display)."""
        return {}

    def voices(self) -> list[str]:
        """Voices a session may ask for by name: built-in ones and saved ones (none by default)."""
        return self.voice_names()

    def voice_names(self) -> list[str]:
        """Saved voices a session may ask for by name (``session(voice=NAME)``); none by default."""
        return []

    @property
    def seed_voices(self) -> bool:
        """Whether ``session(voice="seed:N")`` gives a reproducible voice per integer N."""
        return False

    def check_voice(self, voice: str) -> None:
        """Raise (a UserError naming what is wrong) unless ``session(voice=voice)`` would work; the
        loop calls it at load time, so a bad ``--voice`` fails before the first reply, not at it."""
        self.session(voice)

    def warm_up(self) -> None:
        """Pay first-call costs now (blocking), not during the first reply."""

    @property
    def lanes(self) -> list[Any]:
        """The :class:`~voiceloop.compute.ComputeLane` threads it computes on (none: off-process or
        trivial work); on a CPU the loop has every engine's lanes take turns (``share_cores``)."""
        return []

    def close(self) -> None:
        """Release the engine's threads and processes; no sessions after this."""
