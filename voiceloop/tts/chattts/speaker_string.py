"""ChatTTS speaker strings: the byte formats that carry a voice or an audio prompt as text.

A ChatTTS voice is a 768-d vector, shared between users as a *speaker string*: the vector's float16
bytes, LZMA-compressed (raw LZMA2 stream, preset 9 | extreme) and written in base16384 (CJK
characters). Strings made here are byte-identical to ChatTTS 0.2.x ones, so voices pasted from
ChatTTS users work, and voices made here work there. Audio-prompt codes (``spk_smp``) use the same
codec. Pure format code: voice statistics, seeded sampling and the voice store are in ``speaker.py``.
"""

from __future__ import annotations

import lzma
import math

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
