"""Chunked, stateful streaming recognition on a wav2vec2 CTC checkpoint.

Every encoder layer attends over its whole input, so a chunk's outputs depend on context. Each
step encodes the new chunk C and a lookahead R, and keeps only the C part:

    frames:  ... committed ... | L (context) | C (committed now) | R (provisional) |

* The left context L is not re-encoded: each layer attends to the keys/values the L frames had
  when they were committed (``cache_context``; cheaper at the defaults with the same agreement
  with the offline pass, measured by ``benchmarks/asr_streaming.py``). With
  ``cache_context=False`` (and on the ONNX backend) every step re-encodes ``[L | C | R]`` instead.
* The conv feature encoder is strictly local (a frame sees 400 samples), so its output — about
  half of the compute — is cached per utterance and no audio goes through it twice. That needs
  fixed input normalisation: the per-utterance statistics are frozen at the first window
  (about C + R seconds of speech); running statistics measured better than per-window ones.
* C frames are committed (their text never changes); R frames give a provisional tail. Together
  they form the partial transcript (``stable_len`` marks the committed prefix).
* At end of utterance the rest is encoded with L context (cached or re-encoded) and committed.
  An utterance shorter than the first window is decoded in one pass with its own statistics —
  exactly offline.
* If compute falls behind, one step commits every due chunk at once (a wider window, up to
  ``max_window_s``), so the stream catches up instead of queueing.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import numpy as np
import torch

from ..audio import int16_to_float
from ..compute import ComputeLane
from ..frames import CharInfo, FinalTranscript, PartialTranscript
from .base import AsrCapabilities, AsrEngine, AsrSession
from .ctc import StreamingGreedyDecoder, greedy_decode
from .encoder import EncoderResult, EncoderStep, KeyValues
from .model import DEFAULT_MODEL, ModelOptions, Wav2Vec2Checkpoint
from .options import StreamingOptions


class Wav2Vec2Engine(AsrEngine):
    """A loaded checkpoint plus its compute lane; open one session per stream."""

    def __init__(self, checkpoint: Wav2Vec2Checkpoint, options: StreamingOptions | None = None) -> None:
        self.checkpoint = checkpoint
        self.options = options or StreamingOptions()
        self.sample_rate = checkpoint.sample_rate
        self.lane = ComputeLane("asr", setup=checkpoint.apply_threads)
        #: whether steps attend to cached keys/values (the checkpoint must support it)
        self.caches_context = self.options.cache_context and hasattr(checkpoint, "encode_steps")
        #: streaming steps skipped because their stream fell behind real time (partials paused)
        self.shed_steps = 0

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_MODEL,
        model_options: ModelOptions | None = None,
        options: StreamingOptions | None = None,
    ) -> Wav2Vec2Engine:
        return cls(Wav2Vec2Checkpoint.from_pretrained(name_or_path, model_options), options)

    def session(self) -> Wav2Vec2Session:
        return Wav2Vec2Session(self)

    @property
    def device(self) -> str:
        return str(getattr(self.checkpoint, "device", "cpu"))  # ONNX checkpoints run on the CPU

    @property
    def capabilities(self) -> AsrCapabilities:
        return AsrCapabilities(streaming_partials=True, preview_final=True)

    def warm_up(self) -> None:
        self.lane.call(self.transcribe, np.zeros(self.sample_rate, np.int16))

    @property
    def lanes(self) -> list[ComputeLane]:
        return [self.lane]

    def close(self) -> None:
        self.lane.close()

    def step_many(self, states: list[StreamState]) -> list[bool]:
        """:meth:`StreamState.step` for several streams with one batched encoder pass (on the lane)."""
        windows = [state.plan() for state in states]
        due = [(state, w) for state, w in zip(states, windows, strict=True) if w is not None]
        outputs = self.encode([w for _, w in due])
        for (state, window), output in zip(due, outputs, strict=True):
            state.apply(window, output)
        return [w is not None for w in windows]

    def encode(self, windows: list[Window]) -> list[EncoderResult]:
        """One encoder pass over several streams' windows (on the lane)."""
        layer = self.options.embed_layer
        if self.caches_context:
            steps = [EncoderStep(w.hidden, w.context, w.past) for w in windows]
            return self.checkpoint.encode_steps(steps, layer=layer, key_values=True)
        outputs = self.checkpoint.encode_many([w.hidden for w in windows], layer=layer)
        return [EncoderResult(log_probs, states, None) for log_probs, states in outputs]

    # -- offline helpers (run them on the lane from async code: ``await engine.lane.run(...)``) ----
    def transcribe(self, audio: np.ndarray) -> FinalTranscript:
        """Whole-input recognition; long inputs go through the streaming windows (bounded memory)."""
        samples = _as_float(audio)
        if len(samples) / self.sample_rate <= self.options.max_window_s:
            log_probs = self.checkpoint.log_probs(samples)
            text, chars = greedy_decode(log_probs, self.checkpoint.vocab)
            return FinalTranscript(text=text, chars=chars, start=0.0, end=len(samples) / self.sample_rate)
        stream = StreamState(self)
        stream.add(samples)
        return stream.finish()

    def embed(self, audio: np.ndarray, *, layer: int = -1, pooling: str = "mean") -> np.ndarray:
        """Hidden states of ``layer`` at 50 Hz (``pooling="none"``: [T, H]) or their mean ([H])."""
        if pooling not in ("mean", "none"):
            raise ValueError(f"pooling must be 'mean' or 'none', got {pooling!r}")
        ckpt = self.checkpoint
        samples = ckpt.normalize(_as_float(audio))
        with torch.inference_mode():
            hidden = ckpt.project(ckpt.conv_features(samples))
            _, states = ckpt.encode(hidden, layer=layer)
        assert states is not None
        out = states.numpy()
        return out.mean(axis=0) if pooling == "mean" else out


def _as_float(audio: np.ndarray) -> np.ndarray:
    """int16 or float mono 16 kHz audio as float32, with clear errors for anything else."""
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"audio must be a numpy array, got {type(audio).__name__}")
    if audio.ndim != 1:
        raise ValueError(
            f"audio must be mono 1-D (16 kHz), got shape {audio.shape}; downmix and resample first"
        )
    if audio.dtype == np.int16:
        return int16_to_float(audio)
    if audio.dtype in (np.float32, np.float64):
        if not np.isfinite(audio).all():
            raise ValueError("audio contains NaN or inf")
        return audio.astype(np.float32, copy=False)
    raise ValueError(f"audio must be int16 or float32/float64, got {audio.dtype}")


class StreamState:
    """One utterance's streaming state (pure compute; runs on the engine's lane)."""

    def __init__(self, engine: Wav2Vec2Engine) -> None:
        self.engine = engine
        self.ckpt = engine.checkpoint
        opts = engine.options
        frame = self.ckpt.conv_stride / self.ckpt.sample_rate
        self.frame_s = frame
        self.chunk = max(1, round(opts.chunk_s / frame))
        self.left = round(opts.left_s / frame)
        self.right = round(opts.right_s / frame)
        self.max_window = round(opts.max_window_s / frame)
        self.cache = opts.cache_conv and self.ckpt.local_conv
        self.cached_context = engine.caches_context
        # frames on each side the positional convolution reads (for the features before a step)
        self.reach = self.ckpt.encoder.pos_reach if self.cached_context else 0
        self.past: KeyValues | None = None  # committed frames' keys/values (last L frames)
        self._audio = np.zeros(16_000, np.float32)  # grows by doubling: appends stay O(1) amortised
        self._samples = 0
        self.stats: tuple[float, float] | None = None
        self.features = torch.zeros(0)  # conv features (before the per-frame projection), cached
        self.decoder = StreamingGreedyDecoder(self.ckpt.vocab, frame_s=frame)
        self.preview: tuple[str, list[CharInfo], int] = ("", [], 0)
        self.embed_sum: np.ndarray | None = None
        self.embed_frames = 0

    @property
    def committed(self) -> int:
        return self.decoder.committed_frames

    @property
    def audio(self) -> np.ndarray:
        """The utterance's samples so far (a view)."""
        return self._audio[: self._samples]

    def add(self, samples: np.ndarray) -> None:
        end = self._samples + len(samples)
        if end > len(self._audio):
            grown = np.zeros(max(end, 2 * len(self._audio)), np.float32)
            grown[: self._samples] = self._audio[: self._samples]
            self._audio = grown
        self._audio[self._samples : end] = samples
        self._samples = end

    def due(self) -> bool:
        """A chunk and its lookahead are available."""
        return self.ckpt.frames_for(self._samples) >= self.committed + self.chunk + self.right

    # -- features --------------------------------------------------------------------------
    def _freeze_stats(self) -> None:
        if self.stats is None:
            audio = self.audio
            self.stats = (float(audio.mean()), float(np.sqrt(audio.var() + 1e-7)))

    def _normalized(self, start_sample: int, end_sample: int) -> np.ndarray:
        segment = self.audio[start_sample:end_sample]
        if not self.ckpt.do_normalize:
            return segment
        mean, std = self.stats  # type: ignore[misc]
        return (segment - mean) / std

    def _window_features(self, first: int, last: int) -> torch.Tensor:
        """Projected features of frames [first, last); conv output is computed once per frame."""
        stride, field = self.ckpt.conv_stride, self.ckpt.conv_receptive_field
        if not self.cache:
            audio = self._normalized(first * stride, (last - 1) * stride + field)
            return self.ckpt.project(self.ckpt.conv_features(audio))
        have = len(self.features)
        if last > have:
            audio = self._normalized(have * stride, (last - 1) * stride + field)
            new = self.ckpt.conv_features(audio)
            self.features = new if have == 0 else torch.cat([self.features, new])
        return self.ckpt.project(self.features[first:last])

    # -- steps -----------------------------------------------------------------------------
    def plan(self) -> Window | None:
        """The next step's encoder input (every due chunk at once), or None when nothing is due.

        Computes the window's features now; the encoder pass may then run batched with other
        streams' windows (:meth:`Wav2Vec2Engine.step_many`) before :meth:`apply`.
        """
        available = self.ckpt.frames_for(len(self.audio))
        start = self.committed
        chunks = (available - start - self.right) // self.chunk
        if chunks < 1:
            return None
        chunks = min(chunks, max(1, (self.max_window - self.left - self.right) // self.chunk))
        self._freeze_stats()
        return self._window(start, start + chunks * self.chunk, start + chunks * self.chunk + self.right)

    def step(self) -> bool:
        """Commit every due chunk in one encoder pass; returns whether anything was committed."""
        window = self.plan()
        if window is None:
            return False
        self._run(window)
        return True

    def fork(self) -> StreamState:
        """An independent copy (sharing the model): to finalise speculatively without ending the stream."""
        shared = (self.engine, self.ckpt, self.ckpt.vocab)
        return copy.deepcopy(self, memo={id(obj): obj for obj in shared})

    def finish(self) -> FinalTranscript:
        """Encode and commit everything left; the utterance's final transcript."""
        available = self.ckpt.frames_for(len(self.audio))
        if self.stats is None and available:  # never streamed: one pass, offline-exact
            self._freeze_stats()
        step = max(self.chunk, self.max_window - self.left)
        while self.committed < available:
            end = min(available, self.committed + step)
            self._encode(self.committed, end, end)
        embedding = None
        if self.embed_sum is not None and self.embed_frames:
            embedding = self.embed_sum / self.embed_frames
        duration = len(self.audio) / self.ckpt.sample_rate
        return FinalTranscript(
            text=self.decoder.text,
            chars=list(self.decoder.chars),
            start=0.0,
            end=duration,
            embedding=embedding,
        )

    def first_encoded(self, commit_from: int) -> int:
        """First frame a step committing from ``commit_from`` runs through the layers."""
        if self.cached_context:  # only new frames are encoded; L comes from self.past
            return commit_from
        return max(0, commit_from - self.left)

    def _window(self, commit_from: int, commit_to: int, window_end: int) -> Window:
        first = self.first_encoded(commit_from)
        context = min(commit_from, self.reach)  # reach is 0 when L is re-encoded
        with torch.inference_mode():
            hidden = self._window_features(first - context, window_end)
        return Window(first, commit_from, commit_to, hidden, context, self.past)

    def _encode(self, commit_from: int, commit_to: int, window_end: int) -> None:
        self._run(self._window(commit_from, commit_to, window_end))

    def _run(self, window: Window) -> None:
        self.apply(window, self.engine.encode([window])[0])

    def apply(self, window: Window, result: EncoderResult) -> None:
        """Commit the window's chunk frames and refresh the provisional tail from its outputs."""
        lp = result.log_probs.numpy()
        keep = slice(window.commit_from - window.first, window.commit_to - window.first)
        self.decoder.commit(lp[keep])
        self.preview = self.decoder.hypothesis(lp[window.commit_to - window.first :])
        if result.layer_state is not None:
            kept = result.layer_state[keep].numpy().astype(np.float64)
            self.embed_sum = kept.sum(axis=0) + (0 if self.embed_sum is None else self.embed_sum)
            self.embed_frames += len(kept)
        if result.key_values is not None and self.left > 0:
            # [past | this window's frames] in one buffer (cached context: the window starts at
            # commit_from): keep the last L frames up to the chunk's end
            encoded = int(window.hidden.shape[0]) - window.context
            committed = result.key_values.prefix(result.key_values.frames - encoded + keep.stop)
            self.past = committed.newest(self.left, room=self.chunk + self.right)


@dataclass
class Window:
    """One encoder pass of a stream: frames [first, end) encoded, [commit_from, commit_to) kept.

    ``hidden`` holds projected features from ``first - context`` (the leading ``context`` frames
    only feed the positional convolution); ``past`` is the cached left context, if any.
    """

    first: int
    commit_from: int
    commit_to: int
    hidden: torch.Tensor
    context: int = 0
    past: KeyValues | None = None


#: a step (queueing included) slower than this many times the audio it commits means the stream
#: cannot keep up: it stops streaming until the end of the utterance
SHED_RTF = 2.0


class Wav2Vec2Session(AsrSession):
    """Async face of :class:`StreamState`: buffers frames, computes on the engine's lane."""

    def __init__(self, engine: Wav2Vec2Engine) -> None:
        self.engine = engine
        self.state = StreamState(engine)
        self._last_text: str | None = None
        self._behind = False  # a step ran slower than SHED_RTF: no more steps this utterance

    async def accept(self, samples: np.ndarray) -> PartialTranscript | None:
        state = self.state
        state.add(_as_float(samples))
        if not state.due():
            return None
        if self._behind:
            self.engine.shed_steps += 1
            return None
        committed, started = state.committed, time.perf_counter()
        await self.engine.lane.batch(self.engine.step_many, state)  # with other streams' steps
        spent = time.perf_counter() - started
        if spent > SHED_RTF * (state.committed - committed) * state.frame_s:
            # Behind real time (queued behind other sessions, or a slow device): shed load for the
            # rest of the utterance. Partials pause; the final encodes the rest in a few long
            # windows, near the offline cost — below streaming's overlapping windows on a CPU
            # (both measured by benchmarks/asr_streaming.py: offline vs streaming RTF).
            self._behind = True
        text, chars, stable = state.preview
        if text == self._last_text:
            return None
        self._last_text = text
        end = chars[-1].end if chars else 0.0
        return PartialTranscript(text=text, chars=list(chars), start=0.0, end=end, stable_len=stable)

    async def finalize(self) -> FinalTranscript:
        state = self.state
        try:
            return await self.engine.lane.run(state.finish)
        finally:
            self.reset()

    def finalize_preview(self) -> Awaitable[FinalTranscript]:
        # The copy is made on the lane, not here: copying the cached features is a torch op, and
        # one on the loop's thread would start a second OpenMP team (small ops then cost more, see
        # compute.share_cores). Steps of this stream queued later run after it, so it sees the
        # stream as of now plus any audio added before it starts — a final of at least this much.
        state = self.state
        return self.engine.lane.run(lambda: state.fork().finish())

    def reset(self) -> None:
        self.state = StreamState(self.engine)
        self._last_text = None
        self._behind = False
