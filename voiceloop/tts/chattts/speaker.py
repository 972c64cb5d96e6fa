"""ChatTTS voices: the speaker-string format, seeded sampling and a small on-disk voice store.

A ChatTTS voice is a 768-d vector, shared between users as a *speaker string*: the vector's float16
bytes, LZMA-compressed (raw LZMA2 stream, preset 9 | extreme) and written in base16384 (CJK
characters). Strings made here are byte-identical to ChatTTS 0.2.x ones, so voices pasted from
ChatTTS users work, and voices made here work there.

``sample_speaker(stats, seed)`` reproduces ``torch.manual_seed(seed); chat.sample_random_speaker()``
of ChatTTS 0.2.5 on CPU, without touching the global torch RNG. Sampling depends on torch's float16
RNG path (and differs on CUDA), so persist speaker strings, not seeds.
"""

from __future__ import annotations

import lzma
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class SpeakerError(ValueError):
    """A speaker string, voice name or voice spec cannot be used."""


# ---------------------------------------------------------------------------------------------------
# base16384: 7 bytes -> 4 characters of 14 bits (+ U+4E00); a partial last group of r bytes gives
# ceil(8r/14) characters followed by the marker U+3D00 + r.

_B14_BASE = 0x4E00
_B14_LAST = _B14_BASE + 0x3FFF
_B14_MARK = 0x3D00
_MASK14 = 0x3FFF


def _tail_chars(r: int) -> int:
    return math.ceil(8 * r / 14)


def b16384_encode(data: bytes) -> str:
    """Encode bytes as base16384 text, bit-exact with the ``pybase16384`` package."""
    data = bytes(data)
    out: list[str] = []
    full = len(data) - len(data) % 7
    for i in range(0, len(data), 7):
        group = data[i : i + 7]
        n = int.from_bytes(group.ljust(7, b"\0"), "big")
        chars = [chr(_B14_BASE + ((n >> shift) & _MASK14)) for shift in (42, 28, 14, 0)]
        if i < full:
            out.extend(chars)
        else:
            out.extend(chars[: _tail_chars(len(group))])
            out.append(chr(_B14_MARK + len(group)))
    return "".join(out)


def b16384_decode(text: str) -> bytes:
    """Decode base16384 text; any character or length that an encoder cannot produce is an error."""
    if not isinstance(text, str):
        raise SpeakerError(f"base16384 input must be str, got {type(text).__name__}")
    r = 0
    body = text
    if text and _B14_MARK < ord(text[-1]) <= _B14_MARK + 6:
        r = ord(text[-1]) - _B14_MARK
        body = text[:-1]
    for pos, ch in enumerate(body):
        if not _B14_BASE <= ord(ch) <= _B14_LAST:
            what = "a length marker before the end" if _B14_MARK < ord(ch) < 0x3D07 else "not base16384"
            raise SpeakerError(f"invalid base16384 character {ch!r} (U+{ord(ch):04X}) at {pos}: {what}")
    n_tail = _tail_chars(r) if r else 0
    n_full = len(body) - n_tail
    if n_full < 0 or n_full % 4:
        raise SpeakerError(
            f"malformed base16384 text: {len(body)} characters"
            + (f" before a {r}-byte end marker" if r else " without an end marker")
            + " is not a valid length (truncated or garbled?)"
        )
    out = bytearray()
    for i in range(0, len(body), 4):
        chars = body[i : i + 4]
        n = 0
        for ch in chars.ljust(4, chr(_B14_BASE)):
            n = (n << 14) | (ord(ch) - _B14_BASE)
        group = n.to_bytes(7, "big")
        out += group if i < n_full else group[:r]
    return bytes(out)


# ---------------------------------------------------------------------------------------------------
# LZMA raw streams, exactly as ChatTTS writes them.

_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
_MAX_SPEAKER_BYTES = 1 << 16  # 32768 fp16 values; real voices are 768
_MAX_PROMPT_BYTES = 1 << 25  # 2 x u16 codes, far beyond any audio prompt


def _lzma_pack(raw: bytes) -> bytes:
    return lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)


def _lzma_unpack(packed: bytes, what: str, limit: int) -> bytes:
    """One complete raw LZMA2 stream, nothing after it, at most ``limit`` bytes (no zip bombs)."""
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    try:
        raw = dec.decompress(packed, max_length=limit + 1)
    except lzma.LZMAError as exc:
        raise SpeakerError(f"{what} is garbled: its compressed data is invalid ({exc})") from exc
    if len(raw) > limit:
        raise SpeakerError(f"{what} decompresses to more than {limit} bytes")
    if not dec.eof:
        raise SpeakerError(f"{what} is truncated: its compressed data ends early")
    if dec.unused_data:
        raise SpeakerError(f"{what} has {len(dec.unused_data)} stray bytes after its compressed data")
    return raw


def _compact(text: str, what: str) -> str:
    """Drop whitespace (strings get wrapped when pasted) and reject empty input."""
    if not isinstance(text, str):
        raise SpeakerError(f"{what} must be str, got {type(text).__name__}")
    compact = "".join(text.split())
    if not compact:
        raise SpeakerError(f"{what} is empty")
    return compact


def _unb14(text: str, what: str) -> bytes:
    try:
        return b16384_decode(_compact(text, what))
    except SpeakerError as exc:
        raise SpeakerError(f"not a valid {what}: {exc}") from exc


# ---------------------------------------------------------------------------------------------------
# Speaker vectors.


def encode_speaker(vec: torch.Tensor) -> str:
    """Speaker vector -> ChatTTS speaker string (float16 bytes, LZMA raw, base16384)."""
    if not isinstance(vec, torch.Tensor) or vec.dim() != 1 or not vec.is_floating_point() or vec.numel() == 0:
        raise SpeakerError(f"a speaker vector must be a non-empty 1-D float tensor, got {_describe(vec)}")
    half = vec.detach().to(device="cpu", dtype=torch.float16)
    if not torch.isfinite(half).all():
        raise SpeakerError("speaker vector has non-finite values (or values beyond the float16 range)")
    raw = half.numpy().astype("<f2").tobytes()
    return b16384_encode(_lzma_pack(raw))


def decode_speaker(s: str, dim: int | None = None) -> torch.Tensor:
    """Speaker string -> float32 ``[dim]``; whitespace is ignored, anything else malformed is an error."""
    raw = _lzma_unpack(_unb14(s, "speaker string"), "speaker string", _MAX_SPEAKER_BYTES)
    if not raw or len(raw) % 2:
        raise SpeakerError(f"speaker string holds {len(raw)} bytes, not a whole number of float16 values")
    values = torch.from_numpy(np.frombuffer(raw, dtype="<f2").astype(np.float32))
    if dim is not None and values.numel() != dim:
        raise SpeakerError(f"speaker string holds a {values.numel()}-d voice, the model expects {dim}-d")
    if not torch.isfinite(values).all():
        raise SpeakerError("speaker string holds non-finite values (garbled?)")
    return values


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


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
# Audio-prompt codes (``spk_smp``): u16 shape header (2 values) + LZMA raw u16 data, base16384.


def encode_prompt_codes(codes: torch.Tensor) -> str:
    """DVAE codes ``[num_vq, T]`` -> ChatTTS ``spk_smp`` string."""
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2:
        raise SpeakerError(f"prompt codes must be a 2-D tensor [num_vq, T], got {_describe(codes)}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise SpeakerError(f"prompt codes must be integers, got {codes.dtype}")
    if max(codes.shape) > 0xFFFF:
        raise SpeakerError(f"prompt codes shape {tuple(codes.shape)} exceeds the format's 65535 limit")
    arr = codes.detach().cpu().to(torch.int64).numpy()
    if arr.size and (arr.min() < 0 or arr.max() > 0xFFFF):
        raise SpeakerError(f"prompt codes must lie in [0, 65535], got [{arr.min()}, {arr.max()}]")
    header = np.asarray(arr.shape, dtype="<u2").tobytes()
    return b16384_encode(header + _lzma_pack(arr.astype("<u2").tobytes()))


def decode_prompt_codes(s: str) -> torch.Tensor:
    """ChatTTS ``spk_smp`` string -> int64 codes ``[num_vq, T]``."""
    data = _unb14(s, "prompt code string")
    if len(data) < 4:
        raise SpeakerError(f"prompt code string is truncated: {len(data)} bytes, shape header needs 4")
    rows, cols = (int(v) for v in np.frombuffer(data[:4], dtype="<u2"))
    raw = _lzma_unpack(data[4:], "prompt code string", _MAX_PROMPT_BYTES)
    if len(raw) != 2 * rows * cols:
        raise SpeakerError(
            f"prompt code string holds {len(raw) // 2} codes but its header says {rows}x{cols} (garbled?)"
        )
    return torch.from_numpy(np.frombuffer(raw, dtype="<u2").astype(np.int64)).view(rows, cols)


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
    """Voices saved by name, one speaker string per ``<name>.txt`` (plain text, easy to share)."""

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
        """Validate ``speaker`` and store it under ``name`` (replacing an existing voice)."""
        path = self.path(name)
        compact = _compact(speaker, "speaker string")
        decode_speaker(compact)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(compact + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def load(self, name: str) -> str:
        path = self.path(name)
        if not path.is_file():
            raise SpeakerError(f"no voice named {name!r} in {self.root}; saved voices: {self._listing()}")
        return _compact(path.read_text(encoding="utf-8"), f"voice file {path}")

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
    "a path to a .txt file holding a speaker string, or a ChatTTS speaker string pasted directly"
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
    store = store if store is not None else VoiceStore()
    if text in store:
        return _checked(store.load(text), dim, f"saved voice {text!r}")
    if text.lower().endswith(_SUFFIX) or "/" in text or os.sep in text:
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
    compact = _compact(speaker, what)
    try:
        decode_speaker(compact, dim)
    except SpeakerError as exc:
        raise SpeakerError(f"{what}: {exc}") from exc
    return compact
