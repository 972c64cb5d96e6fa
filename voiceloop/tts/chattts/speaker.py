"""ChatTTS voices: the voice statistics, seeded sampling and a small on-disk voice store.

A voice is a 768-d vector shared as a *speaker string*; that codec (base16384 + raw LZMA) lives in
``speaker_string.py`` and its public names are re-exported here, so ``speaker`` stays the one
module callers import voices from.

``sample_speaker(stats, seed)`` reproduces ``torch.manual_seed(seed); chat.sample_random_speaker()``
of ChatTTS 0.2.5 on CPU, without touching the global torch RNG. Sampling depends on torch's float16
RNG path (and differs on CUDA), so persist speaker strings, not seeds.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .speaker_string import (
    _B14_BASE,
    _B14_LAST,
    SpeakerError,
    _compact,
    _describe,
    _unb14,
    b16384_decode,
    b16384_encode,
    decode_prompt_codes,
    decode_speaker,
    encode_prompt_codes,
    encode_speaker,
)
from .voice import is_voice_json, parse_voice_json

__all__ = [
    "SAMPLE_DTYPE",
    "SpeakerError",
    "SpeakerStats",
    "VoiceStore",
    "b16384_decode",
    "b16384_encode",
    "decode_prompt_codes",
    "decode_speaker",
    "default_voice_dir",
    "encode_prompt_codes",
    "encode_speaker",
    "is_voice_name",
    "resolve_voice",
    "sample_speaker",
    "sample_vector",
]


@dataclass(frozen=True, eq=False)  # tensors have no boolean ==
class SpeakerStats:
    """Per-dimension std and mean of the voice distribution (``spk_stat``), each float32 ``[dim]``."""

    std: torch.Tensor
    mean: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("std", "mean"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or not t.is_floating_point() or not t.numel():
                raise SpeakerError(f"SpeakerStats.{name} must be a 1-D float tensor, got {_describe(t)}")
            t = t.detach().to(device="cpu", dtype=torch.float32).contiguous()
            if not torch.isfinite(t).all():
                raise SpeakerError(f"SpeakerStats.{name} has non-finite values")
            object.__setattr__(self, name, t)
        if self.std.shape != self.mean.shape:
            raise SpeakerError(f"std {tuple(self.std.shape)} and mean {tuple(self.mean.shape)} differ")

    @property
    def dim(self) -> int:
        return self.std.numel()

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> SpeakerStats:
        """``[2*dim]`` tensor: first half std, second half mean (the ``asset/spk_stat.pt`` layout)."""
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or not t.numel() or t.numel() % 2:
            raise SpeakerError(f"spk_stat must be 1-D of even length (std ++ mean), got {_describe(t)}")
        std, mean = t.chunk(2)
        return cls(std=std, mean=mean)

    @classmethod
    def from_string(cls, s: str) -> SpeakerStats:
        """ChatTTS 0.2 ``config.spk_stat``: base16384 of the raw float16 bytes of std ++ mean."""
        raw = _unb14(s, "spk_stat string")
        if not raw or len(raw) % 4:
            raise SpeakerError(f"spk_stat string holds {len(raw)} bytes; expected 2*dim float16 values")
        return cls.from_tensor(torch.from_numpy(np.frombuffer(raw, dtype="<f2").astype(np.float32)))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SpeakerStats:
        """Load ``asset/spk_stat.pt`` (a plain tensor; read with ``weights_only=True``)."""
        path = Path(path)
        if not path.is_file():
            raise SpeakerError(f"speaker statistics file not found: {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors have no common type
            raise SpeakerError(f"cannot read speaker statistics {path}: {exc}") from exc
        if not isinstance(obj, torch.Tensor):
            raise SpeakerError(f"{path} holds a {type(obj).__name__}, expected a tensor std ++ mean")
        return cls.from_tensor(obj)

    def to_string(self) -> str:
        """The ChatTTS 0.2 config form (inverse of ``from_string``; float16 precision)."""
        both = torch.cat([self.std, self.mean]).to(torch.float16)
        return b16384_encode(both.numpy().astype("<f2").tobytes())


# The reference samples in the dtype of its stats, which ChatTTS 0.2 keeps as float16:
#   torch.randn(dim, dtype=float16).mul_(std).add_(mean)   (each op rounds to float16)
# Change SAMPLE_DTYPE (and nothing else) if golden strings from the reference say otherwise.
SAMPLE_DTYPE = torch.float16
_MAX_SEED = 2**64 - 1


def _generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
        return gen
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise SpeakerError(f"seed must be an int in [0, 2**64), got {seed!r}")
    gen.manual_seed(seed)
    return gen


def sample_vector(stats: SpeakerStats, seed: int | None) -> torch.Tensor:
    """Voice ``randn * std + mean`` in SAMPLE_DTYPE, from a private generator (global RNG untouched)."""
    std = stats.std.to(SAMPLE_DTYPE)
    mean = stats.mean.to(SAMPLE_DTYPE)
    noise = torch.randn(stats.dim, generator=_generator(seed), dtype=SAMPLE_DTYPE)
    return noise.mul_(std).add_(mean)


def sample_speaker(stats: SpeakerStats, seed: int | None) -> str:
    """A random voice's string; a seed matches ChatTTS's ``manual_seed`` + ``sample_random_speaker``."""
    return encode_speaker(sample_vector(stats, seed))


# ---------------------------------------------------------------------------------------------------
# Named voices on disk, and the one function that turns any user spec into a speaker string.

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SUFFIX = ".txt"


def default_voice_dir() -> Path:
    """``$VOICELOOP_HOME/voices``, else ``~/.local/share/voiceloop/voices``."""
    home = os.environ.get("VOICELOOP_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".local" / "share" / "voiceloop"
    return base / "voices"


def is_voice_name(name: object) -> bool:
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None and ".." not in name


class VoiceStore:
    """Voices saved by name, one per ``<name>.txt`` (plain text, easy to share): a speaker string, or
    the one-line JSON of a voice made from a recording (:mod:`.voice`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_voice_dir()

    def path(self, name: str) -> Path:
        if not is_voice_name(name):
            raise SpeakerError(
                f"invalid voice name {name!r}: use 1-64 letters, digits, '-', '_' or '.', "
                "starting with a letter or digit (no path separators, no '..')"
            )
        return self.root / f"{name}{_SUFFIX}"

    def __contains__(self, name: object) -> bool:
        return is_voice_name(name) and self.path(name).is_file()  # type: ignore[arg-type]

    def save(self, name: str, speaker: str) -> Path:
        """Validate ``speaker`` and store it under ``name`` (replacing an existing voice). Written to
        a temporary file and renamed: a failed save leaves no half-written voice."""
        path = self.path(name)
        compact = _checked(speaker, None, "voice")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(compact + "\n", encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def load(self, name: str) -> str:
        path = self.path(name)
        if not path.is_file():
            raise SpeakerError(f"no voice named {name!r} in {self.root}; saved voices: {self._listing()}")
        text = path.read_text(encoding="utf-8")
        return text.strip() if is_voice_json(text) else _compact(text, f"voice file {path}")

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        stems = (p.name[: -len(_SUFFIX)] for p in self.root.iterdir() if p.name.endswith(_SUFFIX))
        return sorted(n for n in stems if is_voice_name(n) and (self.root / f"{n}{_SUFFIX}").is_file())

    def delete(self, name: str) -> None:
        path = self.path(name)
        if not path.is_file():
            raise SpeakerError(f"no voice named {name!r} in {self.root}; saved voices: {self._listing()}")
        path.unlink()

    def _listing(self) -> str:
        return ", ".join(self.names()) or "(none)"


_FORMS = (
    "accepted voice forms: 'seed:<int>' (sample from the model's spk_stat), the name of a saved voice, "
    "a path to a .txt file holding a speaker string, a ChatTTS speaker string pasted directly, "
    "or a voice made from a recording (its JSON, see 'voiceloop tts voice save NAME --from-audio')"
)


def resolve_voice(
    spec: str | None, stats: SpeakerStats | None, store: VoiceStore | None = None
) -> str | None:
    """Turn a user's voice spec into a speaker string; ``None`` means a random voice per call."""
    if spec is None:
        return None
    if not isinstance(spec, str) or not spec.strip():
        raise SpeakerError(f"empty voice spec; {_FORMS}")
    text = spec.strip()
    dim = stats.dim if stats is not None else None
    if text[:5].lower() == "seed:":
        try:
            seed = int(text[5:].strip())
        except ValueError:
            raise SpeakerError(f"voice {spec!r}: 'seed:' must be followed by an integer") from None
        if stats is None:
            raise SpeakerError(f"voice {spec!r}: the model has no spk_stat to sample voices by seed")
        return sample_speaker(stats, seed)
    if is_voice_json(text):
        return _checked(text, dim, "voice JSON")
    store = store if store is not None else VoiceStore()
    if text in store:
        return _checked(store.load(text), dim, f"saved voice {text!r}")
    if text.lower().endswith((_SUFFIX, ".json")) or "/" in text or os.sep in text:
        path = Path(text).expanduser()
        try:
            found = path.is_file()
        except OSError:  # e.g. a name too long for the file system
            found = False
        if not found:
            known = f"; saved voices: {store._listing()}" if is_voice_name(text) else ""
            raise SpeakerError(f"voice {spec!r}: no such file{known}; {_FORMS}")
        try:
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpeakerError(f"voice file {path} cannot be read as text: {exc}") from exc
        return _checked(content, dim, f"voice file {path}")
    if any(_B14_BASE <= ord(c) <= _B14_LAST for c in text):
        return _checked(text, dim, "pasted speaker string")
    if is_voice_name(text):
        raise SpeakerError(
            f"no voice named {text!r} in {store.root}; saved voices: {store._listing()}; {_FORMS}"
        )
    raise SpeakerError(f"cannot understand voice {spec!r}; {_FORMS}")


def _checked(speaker: str, dim: int | None, what: str) -> str:
    """The validated voice text: a compacted speaker string, or a voice JSON (kept as written)."""
    if is_voice_json(speaker):
        text = speaker.strip()
        try:
            parse_voice_json(text, dim)
        except SpeakerError as exc:
            raise SpeakerError(f"{what}: {exc}") from exc
        return text
    compact = _compact(speaker, what)
    try:
        decode_speaker(compact, dim)
    except SpeakerError as exc:
        raise SpeakerError(f"{what}: {exc}") from exc
    return compact
