"""Audio edge handling: validation, format conversion, streaming resampling and rechunking.

All incoming audio passes through :class:`InputAdapter`, so the rest of the library only sees
canonical 16 kHz mono int16 frames; output stays at the TTS rate until :class:`OutputAdapter`
at the device. Resampling is stateful (``soxr.ResampleStream``) so any chunking gives the same
signal as a one-shot resample: no clicks at chunk boundaries.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import soxr

from voiceloop.frames import FRAME_SAMPLES, INPUT_RATE

MIN_RATE = 8_000
MAX_RATE = 192_000
#: Sample rates accepted anywhere in the library (``rate in SUPPORTED_RATES`` is O(1)).
SUPPORTED_RATES = range(MIN_RATE, MAX_RATE + 1)
MAX_CHANNELS = 8

_ACCEPTED_DTYPES = (np.dtype(np.int16), np.dtype(np.float32), np.dtype(np.float64))
_INT16_SCALE = 32768.0


def _require_int(value: Any, what: str) -> int:
    """Reject floats/bools/strings; ValueError (not TypeError) so callers catch one exception type."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def check_rate(rate: Any, *, what: str = "sample rate") -> int:
    """Return ``rate`` as an int, or raise ValueError: a bad rate fails late and obscurely in soxr."""
    rate = _require_int(rate, what)
    if rate <= 0:
        raise ValueError(f"{what} must be positive, got {rate}")
    if rate not in SUPPORTED_RATES:
        raise ValueError(f"{what} {rate} Hz is out of range [{MIN_RATE}, {MAX_RATE}]")
    return rate


def check_pcm(x: Any, *, what: str = "audio") -> np.ndarray:
    """Validate a PCM buffer and return it unchanged.

    Bad audio (wrong dtype, channel-first layout, NaNs) otherwise turns into silent noise or
    garbage transcripts far from its source, so it is rejected at the edge with a clear message.
    Accepts int16/float32/float64, shaped (samples,) or (samples, channels) with 1..8 channels.
    """
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(x).__name__}")
    if x.dtype not in _ACCEPTED_DTYPES:
        raise ValueError(f"{what} has unsupported dtype {x.dtype}; expected int16, float32 or float64")
    if x.ndim not in (1, 2):
        raise ValueError(f"{what} must be 1-D (samples,) or 2-D (samples, channels), got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{what} is empty (shape {x.shape})")
    if x.ndim == 2:
        n, ch = x.shape
        if ch > MAX_CHANNELS:
            if n <= MAX_CHANNELS:
                raise ValueError(
                    f"{what} shape {x.shape} looks channel-first; expected (samples, channels), "
                    "transpose it (x.T)"
                )
            raise ValueError(f"{what} has {ch} channels (shape {x.shape}); at most {MAX_CHANNELS} supported")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf")
    return x


def int16_to_float(x: np.ndarray) -> np.ndarray:
    """int16 -> float32 in [-1, 1) (divide by 32768, so the round trip is exact); floats -> float32."""
    if x.dtype == np.int16:
        return x.astype(np.float32) / np.float32(_INT16_SCALE)
    return x.astype(np.float32, copy=False)


def float_to_int16(x: np.ndarray) -> np.ndarray:
    """float -> int16 with the same 32768 scale as :func:`int16_to_float`, rounded and clipped.

    Clipping before the cast matters: +1.0 * 32768 would otherwise wrap around to -32768.
    """
    if x.dtype == np.int16:
        return x
    y = np.rint(np.asarray(x, dtype=np.float64) * _INT16_SCALE)
    return np.clip(y, -32768, 32767).astype(np.int16)


def downmix(x: np.ndarray) -> np.ndarray:
    """(samples, channels) -> (samples,) by averaging, keeping the dtype; 1-D passes through.

    int16 is averaged in float64 and rounded, so summing full-scale channels cannot overflow.
    """
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise ValueError(f"downmix expects 1-D or 2-D (samples, channels) audio, got shape {x.shape}")
    if x.dtype == np.int16:
        return np.rint(x.mean(axis=1, dtype=np.float64)).astype(np.int16)
    return x.mean(axis=1, dtype=np.float64).astype(x.dtype)


class StreamResampler:
    """Stateful mono resampler: chunked output equals a one-shot resample of the whole signal.

    int16 in -> int16 out, float in -> float32 out (soxr runs in float32). Equal rates pass
    through untouched, so canonical-rate sources pay nothing. Call :meth:`flush` at end of
    stream to get the filter's held-back tail; after that the resampler is ready for a new stream.
    """

    def __init__(self, in_rate: int, out_rate: int, *, quality: str = "HQ") -> None:
        self.in_rate = check_rate(in_rate, what="input rate")
        self.out_rate = check_rate(out_rate, what="output rate")
        self.passthrough = self.in_rate == self.out_rate
        self._stream: soxr.ResampleStream | None = None
        if not self.passthrough:
            self._stream = soxr.ResampleStream(
                self.in_rate, self.out_rate, 1, dtype="float32", quality=quality
            )
        self._int_out = False
        self._dirty = False

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Resample one chunk; output may be shorter than expected while the filter fills."""
        if isinstance(chunk, np.ndarray) and chunk.ndim == 1 and chunk.size == 0:  # streams may stall
            return np.zeros(0, dtype=np.int16 if chunk.dtype == np.int16 else np.float32)
        x = check_pcm(chunk, what="resampler input")
        if x.ndim == 2 and x.shape[1] != 1:  # mono by design: multi-channel input is downmixed first
            raise ValueError(f"resampler input must be mono, got shape {x.shape}; downmix it first")
        x = x.reshape(-1)
        self._int_out = x.dtype == np.int16
        if self._stream is None:
            return x.copy() if self._int_out else x.astype(np.float32)  # copy: never alias input
        self._dirty = True
        y = self._stream.resample_chunk(np.ascontiguousarray(int16_to_float(x)))
        return float_to_int16(y) if self._int_out else y

    def flush(self) -> np.ndarray:
        """End of stream: return the held-back tail and make the resampler ready for a new stream."""
        dtype = np.int16 if self._int_out else np.float32
        if self._stream is None or not self._dirty:
            return np.zeros(0, dtype=dtype)
        y = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream.clear()
        self._dirty = False
        return float_to_int16(y) if self._int_out else y.astype(np.float32, copy=False)

    def reset(self) -> None:
        """Drop all buffered state (e.g. after a barge-in) without emitting the tail."""
        if self._stream is not None:
            self._stream.clear()
        self._dirty = False

    @property
    def delay(self) -> float:
        """Output samples currently held back by the filter (latency added by resampling)."""
        return 0.0 if self._stream is None else float(self._stream.delay())


class Rechunker:
    """Cuts a stream of arbitrary-length 1-D chunks into exact ``frame_samples`` frames.

    Small pushes are only appended to a list; the pending pieces are joined once a frame is
    complete, so total work stays linear however tiny the pushes are. Returned frames are fresh
    arrays, never views of the caller's buffers.
    """

    def __init__(self, frame_samples: int) -> None:
        frame_samples = _require_int(frame_samples, "frame_samples")
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, got {frame_samples}")
        self.frame_samples = frame_samples
        self._parts: list[np.ndarray] = []
        self._pending = 0
        self._dtype: np.dtype | None = None

    @property
    def pending(self) -> int:
        """Samples buffered that do not yet make a full frame."""
        return self._pending

    def push(self, x: np.ndarray) -> list[np.ndarray]:
        """Add samples; return every frame completed by them (possibly none)."""
        if not isinstance(x, np.ndarray) or x.ndim != 1:
            shape = getattr(x, "shape", type(x).__name__)
            raise ValueError(f"rechunker input must be a 1-D numpy array, got {shape}")
        if x.size == 0:
            return []
        if self._dtype is None:
            self._dtype = x.dtype
        elif x.dtype != self._dtype:
            raise ValueError(f"rechunker input dtype changed from {self._dtype} to {x.dtype}")
        self._parts.append(x)
        self._pending += len(x)
        if self._pending < self.frame_samples:
            return []
        buf = np.concatenate(self._parts)
        n_frames = len(buf) // self.frame_samples
        cut = n_frames * self.frame_samples
        frames = list(buf[:cut].reshape(n_frames, self.frame_samples))
        rest = buf[cut:]
        self._parts = [rest.copy()] if len(rest) else []  # copy so the big buffer can be freed
        self._pending = len(rest)
        return frames

    def flush(self, pad: bool = True) -> list[np.ndarray]:
        """Return the remainder as a last frame (zero-padded to full size if ``pad``), or []."""
        if self._pending == 0:
            return []
        rest = np.concatenate(self._parts)
        self.reset()
        return [np.pad(rest, (0, self.frame_samples - len(rest))) if pad else rest]

    def reset(self) -> None:
        """Discard pending samples."""
        self._parts = []
        self._pending = 0
        self._dtype = None


class PlayoutFifo:
    """int16 pieces queued for playback, read out in blocks of any size (the sinks' buffer).

    Not thread-safe: a sink fed from a device callback holds its own lock around it.
    """

    def __init__(self) -> None:
        self._pieces: deque[np.ndarray] = deque()
        self._head = 0  # samples of _pieces[0] already read
        self.buffered = 0  #: samples queued and not yet read

    def push(self, samples: np.ndarray) -> None:
        self._pieces.append(samples.copy())  # the writer may reuse its buffer
        self.buffered += len(samples)

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` from the front of the queue; returns how many samples it got (the rest of
        ``out`` is left as it was)."""
        copied, wanted, pieces = 0, len(out), self._pieces
        while copied < wanted and pieces:
            head = pieces[0]
            k = min(len(head) - self._head, wanted - copied)
            out[copied : copied + k] = head[self._head : self._head + k]
            copied += k
            self._head += k
            if self._head == len(head):
                pieces.popleft()
                self._head = 0
        self.buffered -= copied
        return copied

    def clear(self) -> int:
        """Drop everything queued; returns how many samples that was."""
        dropped = self.buffered
        self._pieces.clear()
        self._head = self.buffered = 0
        return dropped


class InputAdapter:
    """The single entry point that turns any incoming audio into canonical int16 frames.

    validate -> downmix -> float32 -> resample (stateful) -> int16 -> rechunk. File, microphone
    and WebRTC (48 kHz stereo) sources all use it, so format bugs are fixed in one place.
    """

    def __init__(
        self,
        in_rate: int,
        channels: int,
        *,
        out_rate: int = INPUT_RATE,
        frame_samples: int = FRAME_SAMPLES,
    ) -> None:
        self.in_rate = check_rate(in_rate, what="input rate")
        self.out_rate = check_rate(out_rate, what="output rate")
        channels = _require_int(channels, "channels")
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be in [1, {MAX_CHANNELS}], got {channels}")
        self.channels = channels
        self._resampler = StreamResampler(self.in_rate, self.out_rate)
        self._rechunker = Rechunker(frame_samples)
        self.frame_samples = self._rechunker.frame_samples

    def push(self, x: np.ndarray) -> list[np.ndarray]:
        """Feed captured audio (1-D mono or (samples, channels)); return completed int16 frames."""
        x = check_pcm(x, what="input audio")
        ch = 1 if x.ndim == 1 else x.shape[1]
        if ch != self.channels:
            hint = f"; for interleaved data use x.reshape(-1, {self.channels})" if x.ndim == 1 else ""
            raise ValueError(
                f"input audio has {ch} channel(s) (shape {x.shape}), adapter expects {self.channels}{hint}"
            )
        y = self._resampler.process(int16_to_float(downmix(x)))
        return self._rechunker.push(float_to_int16(y)) if len(y) else []

    def flush(self) -> list[np.ndarray]:
        """End of stream: emit the resampler tail and the zero-padded last frame; ready for reuse."""
        tail = self._resampler.flush()
        frames = self._rechunker.push(float_to_int16(tail)) if len(tail) else []
        return frames + self._rechunker.flush(pad=True)

    def reset(self) -> None:
        """Drop all buffered audio without emitting it."""
        self._resampler.reset()
        self._rechunker.reset()


class OutputAdapter:
    """TTS-rate int16 mono -> device-rate int16 mono, stateful across chunks of one reply.

    Call :meth:`reset` after a barge-in flush so the next reply does not start with the filter
    tail of the interrupted one.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._resampler = StreamResampler(in_rate, out_rate)
        self.in_rate = self._resampler.in_rate
        self.out_rate = self._resampler.out_rate

    def process(self, x: np.ndarray) -> np.ndarray:
        """Convert one chunk of synthesized audio for the device."""
        if isinstance(x, np.ndarray) and x.dtype != np.int16:
            raise ValueError(f"output audio must be int16, got dtype {x.dtype}")
        return self._resampler.process(x)

    def flush(self) -> np.ndarray:
        """End of reply: return the held-back tail (int16)."""
        return float_to_int16(self._resampler.flush())

    def reset(self) -> None:
        """Forget buffered audio (barge-in)."""
        self._resampler.reset()
