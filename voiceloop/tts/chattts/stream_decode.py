"""Chunked streaming decode of GPT steps to audio: every step decoded once, with bounded context.

Time base: one GPT step = 2 mel frames = 512 samples at 24 kHz. An offline decode of T steps gives
512·T − 256 samples (the centred ISTFT drops the last half hop). The streaming decoder cuts the same
signal into pieces: for each chunk it decodes a window of ``left_context`` steps before the first
sample it still owes, the chunk, and ``lookahead`` steps after it, and keeps only the chunk's samples.
Total work is O(n) (each window is bounded); the pieces concatenate to exactly the offline length.

With ``left_context`` and ``lookahead`` >= :func:`exact_context` (52 steps for the official models:
decoder ±75 frames, Vocos ±27 frames, ISTFT overlap) every kept sample sees its whole receptive field
and the stream equals the offline decode bit for bit. Smaller values trade exactness for latency; a
short crossfade then hides the seam between neighbouring windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SAMPLES_PER_STEP = 512
#: Samples a centred ISTFT drops at the end of the utterance (half a hop of 256).
END_TRIM = SAMPLES_PER_STEP // 2

#: Per-step rows [W, D] (hidden states or codes) → float32 wave of 512·W − 256 samples.
DecodeFn = Callable[[torch.Tensor], "np.ndarray | torch.Tensor"]


class StreamDecodeError(ValueError):
    """Bad options, items of the wrong shape, a decode_fn of the wrong length, or use after finish()."""


@dataclass(frozen=True)
class StreamDecodeOptions:
    """Chunking of :class:`StreamingDecoder` (all sizes in GPT steps of 21.3 ms, except ``crossfade``).

    Attributes:
        first_chunk: steps in the first piece; it is decoded once ``first_chunk + lookahead`` steps
            are in, so TTFA ≈ (first_chunk + lookahead) GPT steps + one window decode.
        chunk: steps per later piece (bigger = fewer windows, less redundant context work).
        grow: later pieces grow from ``first_chunk`` by ``growth`` per piece up to ``chunk`` (4, 8,
            16, 32, 32, … by default). A player starts on a short first piece; the next piece must be
            generated before that one has played, which a full-size second piece never is.
            Doubling keeps that true while generation runs at ≥ 2x real time and keeps the steady
            state cheap; slower generation needs slower growth (see ``play_through.py``).
        growth: the factor between consecutive piece sizes while they grow (≥ 1).
        lookahead: steps of right context decoded but not yet emitted (the latency/quality knob).
        left_context: steps of already-emitted context re-decoded in front of each window.
        crossfade: samples (0..256) held back at the end of each piece and blended linearly into the
            next window's version of them; a no-op when both versions agree (exact context).
    """

    first_chunk: int = 4
    chunk: int = 32
    lookahead: int = 8
    left_context: int = 16
    crossfade: int = 256
    grow: bool = True
    growth: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.grow, bool):
            raise StreamDecodeError(f"grow must be a bool, got {self.grow!r}")
        if isinstance(self.growth, bool) or not isinstance(self.growth, int | float) or not self.growth >= 1:
            raise StreamDecodeError(f"growth must be a number >= 1, got {self.growth!r}")
        for name in ("first_chunk", "chunk", "lookahead", "left_context", "crossfade"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise StreamDecodeError(f"{name} must be a non-negative integer, got {value!r}")
        if self.first_chunk < 1 or self.chunk < 1:
            raise StreamDecodeError("first_chunk and chunk must be at least 1 step")
        if self.crossfade > END_TRIM:
            raise StreamDecodeError(f"crossfade must be at most {END_TRIM} samples, got {self.crossfade}")


def exact_context(mel_decoder: Any, vocos: Any) -> int:
    """Steps of left/right context that make streaming exact: 52 for the official models.

    A sample in step t depends on mel frames 2t−1 … 2t+3 through the ISTFT (n_fft = 4·hop) and on
    ±R more frames through the convs, R = decoder + Vocos backbone receptive fields.
    """
    frames = mel_decoder.receptive_field + vocos.receptive_field
    return (frames + 1) // 2


def piece_size(options: StreamDecodeOptions, index: int) -> int:
    """Steps in piece ``index`` (0 = the first) of an utterance's schedule."""
    if index == 0:
        return options.first_chunk
    if not options.grow:
        return options.chunk
    grown = options.first_chunk * float(options.growth) ** min(index, 64)
    return min(options.chunk, max(options.first_chunk, round(grown)))


class StreamingDecoder:
    """Turns per-step items pushed as they are generated into float32 wave pieces.

    ``decode_fn`` maps per-step rows [W, D] to 512·W − 256 samples (e.g. :class:`WaveDecoder`, or
    :class:`~voiceloop.tts.chattts.onnx.OnnxDecoder`'s ``decode``). One instance per utterance: call
    :meth:`push` while generating and :meth:`finish` once at the end. Not thread-safe.
    """

    def __init__(self, decode_fn: DecodeFn, options: StreamDecodeOptions | None = None) -> None:
        self.decode_fn = decode_fn
        self.options = options or StreamDecodeOptions()
        self._buffer: torch.Tensor | None = None  # steps [base, n)
        self._base = 0
        self._steps = 0
        self._next = self.options.first_chunk  # step boundary of the next piece
        self._pieces = 0  # pieces scheduled so far (for the growing schedule)
        self._done = 0  # samples emitted
        self._pending = np.zeros(0, np.float32)  # held samples [done, done + len)
        self._finished = False
        self.windows = 0  #: windows decoded so far (for cost accounting)
        self.decoded_steps = 0  #: steps passed to decode_fn so far, context included

    @property
    def steps(self) -> int:
        """Steps pushed so far."""
        return self._steps

    @property
    def samples_emitted(self) -> int:
        return self._done

    @property
    def finished(self) -> bool:
        return self._finished

    def push(self, items: torch.Tensor | np.ndarray | Sequence[Any]) -> list[np.ndarray]:
        """Add steps ([D] or [n, D]); return the pieces that became due (possibly none)."""
        if self._finished:
            raise StreamDecodeError("push() after finish(): use a new StreamingDecoder per utterance")
        rows = self._as_rows(items)
        if rows.shape[0] == 0:
            return []
        self._buffer = rows if self._buffer is None else torch.cat([self._buffer, rows])
        self._steps += rows.shape[0]
        pieces = []
        lookahead = self.options.lookahead
        while self._steps >= self._next + lookahead:
            piece = self._emit(self._next, self._next + lookahead, final=False)
            self._pieces += 1
            self._next += self.next_chunk()
            if piece.size:
                pieces.append(piece)
        return pieces

    def next_chunk(self) -> int:
        """Size in steps of the piece after the ones scheduled so far (the schedule: :func:`piece_size`)."""
        return piece_size(self.options, max(self._pieces, 1))

    def finish(self) -> np.ndarray:
        """Flush the rest of the utterance (no lookahead needed: the true end is known)."""
        if self._finished:
            raise StreamDecodeError("finish() called twice")
        self._finished = True
        if self._steps == 0:
            return np.zeros(0, np.float32)
        piece = self._emit(self._steps, self._steps, final=True)
        self._buffer = None
        return piece

    # -- internals ---------------------------------------------------------------------------------

    def _as_rows(self, items: torch.Tensor | np.ndarray | Sequence[Any]) -> torch.Tensor:
        rows = items if isinstance(items, torch.Tensor) else torch.as_tensor(np.asarray(items))
        if rows.ndim == 1:
            rows = rows[None]
        if rows.ndim != 2:
            raise StreamDecodeError(f"items must be one step [D] or steps [n, D], got {tuple(rows.shape)}")
        if self._buffer is not None and rows.shape[1] != self._buffer.shape[1]:
            raise StreamDecodeError(f"step width changed from {self._buffer.shape[1]} to {rows.shape[1]}")
        return rows.detach().clone()

    def _emit(self, boundary: int, right: int, final: bool) -> np.ndarray:
        """Decode the window for samples [done, target) and return what is final of them."""
        sps, opts = SAMPLES_PER_STEP, self.options
        target = sps * right - END_TRIM if final else min(sps * boundary, sps * right - END_TRIM)
        if target <= self._done:  # nothing new (then nothing is held either)
            return np.zeros(0, np.float32)
        start = max(0, self._done // sps - opts.left_context)
        assert self._buffer is not None and start >= self._base
        window = self._buffer[start - self._base : right - self._base]
        wave = self._decode(window)
        seg = wave[self._done - sps * start : target - sps * start].copy()
        held = self._pending.size
        if held and not np.array_equal(seg[:held], self._pending):
            ramp = np.arange(1, held + 1, dtype=np.float32) / np.float32(held + 1)
            seg[:held] = self._pending * (1 - ramp) + seg[:held] * ramp
        cut = seg.size if final else max(0, seg.size - opts.crossfade)
        out, self._pending = seg[:cut], seg[cut:]
        self._done += out.size
        keep = max(0, self._done // sps - opts.left_context)
        if keep > self._base:
            self._buffer = self._buffer[keep - self._base :]
            self._base = keep
        return out

    def _decode(self, window: torch.Tensor) -> np.ndarray:
        self.windows += 1
        self.decoded_steps += window.shape[0]
        wave = self.decode_fn(window)
        if isinstance(wave, torch.Tensor):
            wave = wave.detach().cpu().numpy()
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        expected = SAMPLES_PER_STEP * window.shape[0] - END_TRIM
        if wave.size != expected:
            raise StreamDecodeError(
                f"decode_fn returned {wave.size} samples for {window.shape[0]} steps, expected {expected}"
            )
        return wave


class WaveDecoder:
    """A mel decoder (:class:`HiddenDecoder` or :class:`CodeDecoder`) + :class:`Vocos`: steps → wave.

    The offline decode and the ``decode_fn`` of :class:`StreamingDecoder`.
    """

    def __init__(self, mel_decoder: Any, vocos: Any) -> None:
        self.mel_decoder = mel_decoder
        self.vocos = vocos
        self.context = exact_context(mel_decoder, vocos)

    @torch.inference_mode()
    def decode(self, steps: torch.Tensor | np.ndarray) -> np.ndarray:
        """Per-step rows [T, D] or [B, T, D] → float32 wave [512·T − 256] or [B, 512·T − 256]."""
        rows = steps if isinstance(steps, torch.Tensor) else torch.as_tensor(np.asarray(steps))
        single = rows.ndim == 2
        batch = rows[None] if single else rows
        if batch.ndim != 3 or batch.shape[1] == 0:
            raise StreamDecodeError(f"steps must be [T, D] or [B, T, D] with T >= 1, got {tuple(rows.shape)}")
        param = self.mel_decoder.out_conv.weight
        kind = param.dtype if batch.dtype.is_floating_point else torch.long
        mel = self.mel_decoder.decode(batch.to(param.device, kind))
        wave = self.vocos.decode(mel).cpu().numpy()
        return wave[0] if single else wave

    __call__ = decode


def stream_vs_offline(
    decode_fn: DecodeFn, steps: torch.Tensor, options: StreamDecodeOptions | None = None, push_size: int = 1
) -> dict[str, Any]:
    """Stream ``steps`` through a :class:`StreamingDecoder` and compare with one offline decode.

    Returns lengths, piece count, windows and redundant work, max |diff| and the diff's RMS relative
    to the signal's: the numbers to quote when choosing options.
    """
    options = options or StreamDecodeOptions()
    offline = np.asarray(decode_fn(steps), dtype=np.float32).reshape(-1)
    stream = StreamingDecoder(decode_fn, options)
    pieces: list[np.ndarray] = []
    for i in range(0, steps.shape[0], push_size):
        pieces += stream.push(steps[i : i + push_size])
    pieces.append(stream.finish())
    streamed = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    same = streamed.size == offline.size
    diff = streamed - offline if same else np.zeros(0, np.float32)
    signal_rms = float(np.sqrt(np.mean(offline.astype(np.float64) ** 2))) if offline.size else 0.0
    return {
        "options": options,
        "steps": int(steps.shape[0]),
        "offline_samples": int(offline.size),
        "stream_samples": int(streamed.size),
        "pieces": sum(1 for p in pieces if p.size),
        "first_piece_samples": int(next((p.size for p in pieces if p.size), 0)),
        "windows": stream.windows,
        "work_ratio": stream.decoded_steps / max(1, int(steps.shape[0])),
        "max_abs_diff": float(np.abs(diff).max()) if diff.size else (0.0 if same else float("inf")),
        "rel_rms": float(np.sqrt(np.mean(diff.astype(np.float64) ** 2)) / signal_rms) if diff.size else 0.0,
    }
