"""Engines by name: ``--asr ENGINE:MODEL`` / ``--tts ENGINE:MODEL`` → a loaded engine.

An engine is a plugin: a module with a ``load(model, settings)`` function that returns an
:class:`~voiceloop.asr.base.AsrEngine` or :class:`~voiceloop.tts.base.TtsEngine`, registered under
a name in the ``voiceloop.asr_engines`` or ``voiceloop.tts_engines`` entry-point group. A
third-party package adds one line to its own ``pyproject.toml``::

    [project.entry-points."voiceloop.tts_engines"]
    mytts = "my_package.tts:load"

and ``--tts mytts:some-model`` works without touching voiceloop. The loop never imports a concrete
engine: it asks this registry. voiceloop's own engines are registered the same way (its
pyproject), with the same table built in for a source tree that was never installed.

A spec without a known engine name is a model of the default engine (``wav2vec2`` for ASR,
``chattts`` for TTS), so ``--asr DIR`` and ``--tts 2Noise/ChatTTS`` keep working; an engine name
alone (``--tts espeak``) loads that engine's default model.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .errors import UserError

ASR_GROUP = "voiceloop.asr_engines"
TTS_GROUP = "voiceloop.tts_engines"
DEFAULT_ENGINE = {"asr": "wav2vec2", "tts": "chattts"}
#: voiceloop's own engines (also in its pyproject's entry points), for a tree that is not installed
BUILT_IN = {
    "asr": {"wav2vec2": "voiceloop.asr.wav2vec2:load"},
    "tts": {"chattts": "voiceloop.tts.chattts.plugin:load", "espeak": "voiceloop.tts.espeak:load"},
}
_GROUPS = {"asr": ASR_GROUP, "tts": TTS_GROUP}


class EngineError(UserError, ValueError):
    """An unknown engine name, or options an engine does not take."""


@dataclass(frozen=True)
class EngineSettings:
    """What the loop tells every engine it loads. ``options`` is the engine's own options object
    (``ChatTtsOptions``, ``EspeakOptions``, ...) or a dict of its named options (what CLI flags such
    as ``--tts-backend`` set); an engine refuses names it does not know (:func:`take_options`)."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | fp32 | int8 | bf16 | fp16 (auto: ModelOptions.for_precision)
    threads: int | None = None  # compute threads (None: the engine's default)
    options: Any = None


@dataclass(frozen=True)
class EngineSpec:
    """``ENGINE:MODEL`` parsed: the engine's registered name and its model (None: its default)."""

    kind: str  # "asr" | "tts"
    engine: str
    model: str | None

    def __str__(self) -> str:
        return self.engine if self.model is None else f"{self.engine}:{self.model}"


def registered(kind: str) -> dict[str, str]:
    """Engine name → ``module:function`` for ``kind`` ("asr" | "tts"): built-in, then entry points."""
    table = dict(BUILT_IN[_check_kind(kind)])
    for point in entry_points(group=_GROUPS[kind]):
        table[point.name] = point.value
    return table


def parse_spec(spec: str | None, kind: str) -> EngineSpec:
    """``"espeak:cmn"`` → (espeak, cmn); ``"espeak"`` → (espeak, None); ``"2Noise/ChatTTS"`` or a
    directory → the default engine with that model. An existing path is always a model."""
    default = DEFAULT_ENGINE[_check_kind(kind)]
    if spec is None or not spec.strip():
        return EngineSpec(kind, default, None)
    names = registered(kind)
    if not os.path.exists(spec):
        name, sep, model = spec.partition(":")
        if name in names:
            return EngineSpec(kind, name, model if sep and model else None)
        if sep and name and "/" not in name and name.isidentifier():
            known = ", ".join(sorted(names))
            raise EngineError(f"unknown {kind.upper()} engine {name!r} in {spec!r}; installed: {known}")
    return EngineSpec(kind, default, spec)


def load(spec: str | EngineSpec | None, kind: str, settings: EngineSettings | None = None) -> Any:
    """Load the engine ``spec`` names (see :func:`parse_spec`) with ``settings``."""
    parsed = spec if isinstance(spec, EngineSpec) else parse_spec(spec, kind)
    factory = _factory(parsed)
    return factory(parsed.model, settings or EngineSettings())


def take_options(engine: str, options: Any, own: type, build: Callable[..., Any]) -> Any:
    """The engine's options object: ``options`` itself when it is one (``own``), else ``build(**options)``
    from a dict of named options (None: no options), naming the engine on a name it does not take."""
    if isinstance(options, own):
        return options
    given = dict(options or {})
    try:
        return build(**given)
    except TypeError as exc:
        names = sorted(given)
        raise EngineError(f"the {engine} engine does not take these options: {names} ({exc})") from exc


def _factory(spec: EngineSpec) -> Callable[[str | None, EngineSettings], Any]:
    target = registered(spec.kind)[spec.engine]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineError(f"the {spec.engine} {spec.kind.upper()} engine cannot be imported: {exc}") from exc
    factory = getattr(module, attr or "load", None)
    if not callable(factory):
        raise EngineError(f"the {spec.engine} engine's entry point {target!r} is not a function")
    return factory


def _check_kind(kind: str) -> str:
    if kind not in _GROUPS:
        raise ValueError(f"engine kind must be 'asr' or 'tts', got {kind!r}")
    return kind
