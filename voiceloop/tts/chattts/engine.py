"""The ChatTTS engine: text in, 24 kHz int16 audio out, streamed while the GPT still generates.

Per request: normalise the text (numbers, punctuation, tags) → split into sentences → optionally
refine → per sentence, generate codes step by step and hand each step's hidden state (or codes) to
a bounded-context streaming decoder, which emits audio every few steps. One loaded engine is shared
by many sessions; all compute runs on the engine's :class:`~voiceloop.compute.ComputeLane`: each
session's generation is a cooperative stream there, paused at every GPT step, and concurrent
sessions' single-position steps run as one batched forward.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from ...allocator import tune_for_inference
from ...compute import CancelToken, ComputeLane, ModelOptions
from ...ortgraph import GraphLoadError, available
from ..base import TtsEngine, TtsSession
from . import assets
from .decoder import CodeDecoder, HiddenDecoder
from .gpt import REFINE_SAMPLING, ChatTtsGpt, SamplingOptions
from .gpt_onnx import OrtLlama
from .llama import KvCache, LeanLlama
from .normalize import normalize, split_sentences
from .play_through import PlayThrough
from .speaker import SpeakerStats, VoiceStore, decode_speaker, resolve_voice, sample_speaker
from .stream_decode import StreamDecodeOptions, StreamingDecoder, WaveDecoder
from .vocos import Vocos

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
SAMPLES_PER_STEP = 512  # one GPT step = 2 mel frames at hop 256
STEPS_PER_SECOND = SAMPLE_RATE / SAMPLES_PER_STEP  # 46.875: real time


@dataclass
class ChatTtsOptions:
    """How the engine computes and speaks; every default is what the live loop uses."""

    model: ModelOptions = field(default_factory=ModelOptions)  # device, dtype, int8, threads
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    stream: StreamDecodeOptions = field(default_factory=StreamDecodeOptions)
    decoder: Literal["hidden", "dvae"] = "hidden"  # hidden: ChatTTS's default (and better) path
    refine: bool = False  # text refinement costs seconds on a CPU: off in the live loop
    refine_control: str = "[oral_2][laugh_0][break_6]"  # the reference's refine prompt
    refine_sampling: SamplingOptions = field(default_factory=lambda: replace(REFINE_SAMPLING))
    speed_prompt: str = "[speed_5]"
    normalize_text: bool = True
    max_sentence_chars: int = 100  # longer texts are split so each GPT run stays well under its limit
    verify_sha256: bool = False
    #: run concurrent sessions' GPT steps as one batched forward (False: one at a time, interleaved)
    batch_sessions: bool = True
    #: the GPT's transformer: "onnx" (onnxruntime, CPU fp32/int8: faster per step than torch, see
    #: benchmarks/gpt_step.py), "torch", or "auto" = onnx on the CPU when onnxruntime is installed,
    #: torch elsewhere
    gpt_backend: Literal["auto", "torch", "onnx"] = "auto"
    #: "fast": every piece as soon as it is decoded (first audio earliest; below ~2x real time the
    #: first pieces leave gaps). "smooth": a reply's first audio waits until the measured speed says
    #: the rest can follow without gaps (voiceloop/tts/chattts/play_through.py), at most 1 s; pair it
    #: with ``stream=SMOOTH_SCHEDULE`` (slowly growing pieces) as ``--tts-start smooth`` does.
    start: Literal["fast", "smooth"] = "fast"

    def __post_init__(self) -> None:
        if self.decoder not in ("hidden", "dvae"):
            raise ValueError(f"decoder must be 'hidden' or 'dvae', got {self.decoder!r}")
        if self.max_sentence_chars < 8:
            raise ValueError("max_sentence_chars must be >= 8")
        if self.gpt_backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"gpt_backend must be auto, torch or onnx, got {self.gpt_backend!r}")
        if self.start not in ("fast", "smooth"):
            raise ValueError(f"start must be fast or smooth, got {self.start!r}")

    def resolved_gpt_backend(self) -> str:
        """``gpt_backend`` with "auto" decided for this machine and these model options."""
        if self.gpt_backend != "auto":
            return self.gpt_backend
        cpu = self.model.resolve_device().type == "cpu" and self.model.dtype == "fp32"
        return "onnx" if cpu and available() else "torch"


@dataclass
class PreparedText:
    sentences: list[str]
    unsupported: tuple[str, ...]


class ChatTts(TtsEngine):
    """A loaded ChatTTS-compatible model (see module docstring)."""

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        gpt: ChatTtsGpt,
        vocos: Vocos,
        hidden_decoder: HiddenDecoder | None,
        code_decoder: CodeDecoder | None,
        stats: SpeakerStats | None,
        options: ChatTtsOptions,
        voices: VoiceStore | None = None,
    ) -> None:
        self.gpt = gpt
        self.vocos = vocos
        self.hidden_decoder = hidden_decoder
        self.code_decoder = code_decoder
        self.stats = stats
        self.options = options
        self.voice_store = voices or VoiceStore()
        if next(vocos.parameters()).device.type == "cpu":
            tune_for_inference()  # per-step buffers stay in the heap (see voiceloop.allocator)
        threads = options.model.threads
        self.lane = ComputeLane(
            "tts",
            setup=(lambda: torch.set_num_threads(threads)) if threads else None,
            batching=options.batch_sessions,
        )

    @classmethod
    def from_pretrained(
        cls, name: str = assets.DEFAULT_REPO, options: ChatTtsOptions | None = None
    ) -> ChatTts:
        """Load the official layout from a local directory or a hub id (cached after the first download)."""
        options = options or ChatTtsOptions()
        root = assets.resolve_root(str(name))
        if options.verify_sha256:
            assets.verify(root)
        device = options.model.resolve_device()
        try:
            gpt = ChatTtsGpt.load(root, options.model, backend=options.resolved_gpt_backend())
        except GraphLoadError as exc:
            if options.gpt_backend != "auto":
                raise
            log.warning("%s; the GPT runs on torch instead", exc)
            gpt = ChatTtsGpt.load(root, options.model, backend="torch")
        # The decoders and vocoder are small and convolutional: float32 everywhere but GPUs.
        dtype = options.model.torch_dtype if device.type != "cpu" else torch.float32
        hidden = HiddenDecoder.from_file(root / assets.DECODER, device=device, dtype=dtype)
        code = None
        if options.decoder == "dvae":
            code = CodeDecoder.from_file(root / assets.DVAE, device=device, dtype=dtype)
        vocos = Vocos.from_file(root / assets.VOCOS, device=device)
        stat_file = root / assets.SPK_STAT
        stats = SpeakerStats.load(stat_file) if stat_file.is_file() else None
        return cls(gpt, vocos, hidden, code, stats, options)

    # -- text ----------------------------------------------------------------------------------

    def is_known(self, char: str) -> bool:
        """Whether the tokenizer represents ``char`` (not as [UNK])."""
        ids = self.gpt.tokenizer(char, add_special_tokens=False)["input_ids"]
        return bool(ids) and self.gpt.tokenizer.unk_token_id not in ids

    def prepare(self, text: str) -> PreparedText:
        """Normalise and split; characters the model cannot say are reported, never a crash."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if self.options.normalize_text:
            norm = normalize(text, is_known=self.is_known)
            body, unsupported = norm.text, norm.unsupported
        else:
            body, unsupported = text, ()
        if unsupported:
            log.warning("cannot pronounce and removed: %s", " ".join(unsupported))
        sentences = [s for s in split_sentences(body, self.options.max_sentence_chars) if _speakable(s)]
        return PreparedText(sentences, unsupported)

    def refine_text(self, text: str, seed: int | None = None) -> str:
        """The refinement pass on its own (usable ahead of time, e.g. for canned replies)."""
        sampling = replace(self.options.refine_sampling, seed=seed)
        prepared = self.prepare(text)
        if not prepared.sentences:
            return ""
        refined, _ = self.gpt.refine(prepared.sentences, self.options.refine_control, sampling)
        return " ".join(refined)

    # -- voices --------------------------------------------------------------------------------

    def speaker(self, voice: str | None) -> torch.Tensor | None:
        """A voice spec (``seed:N``, a saved name, a speaker string or file) → speaker vector."""
        spk = resolve_voice(voice, self.stats, self.voice_store)
        return None if spk is None else decode_speaker(spk)

    def random_voice(self) -> str | None:
        """A fresh voice from the model's speaker statistics (None if the assets lack them)."""
        return None if self.stats is None else sample_speaker(self.stats, None)

    # -- synthesis (run these on the lane from async code) -------------------------------------

    def stream(
        self,
        text: str,
        speaker: torch.Tensor | None = None,
        *,
        refine: bool | None = None,
        seed: int | None = None,
        cancel: CancelToken | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield int16 chunks as they are decoded; stops within one GPT step of ``cancel``."""
        prepared = self.prepare(text)
        sentences = prepared.sentences
        if sentences and (self.options.refine if refine is None else refine):
            refined, _ = self.gpt.refine(
                sentences,
                self.options.refine_control,
                replace(self.options.refine_sampling, seed=seed),
                forward=self._forward,
            )
            sentences = [r for r in refined if _speakable(r)]
        gate = None
        if self.options.start == "smooth":
            gate = PlayThrough(
                self.options.stream, step_audio_s=1 / STEPS_PER_SECOND, sample_rate=SAMPLE_RATE
            )
        for index, sentence in enumerate(sentences):
            sampling = replace(self.options.sampling, seed=None if seed is None else seed + index)
            prompt = self.gpt.code_prompt([sentence], speaker, self.options.speed_prompt)
            decoder = StreamingDecoder(self._decode_fn(), self.options.stream)
            first = True
            for step in self.gpt.generate(prompt, sampling, cancel=cancel, forward=self._forward):
                if first and gate is not None:
                    gate.sentence()  # after the prompt's prefill: the per-step cost starts here
                first = False
                if not bool(step.alive[0]):
                    break
                item = step.hidden[0] if self.options.decoder == "hidden" else step.tokens[0]
                if gate is None:
                    pieces = decoder.push(item[None])
                else:  # the gate forecasts from the decode cost too
                    decoded, started = decoder.decoded_steps, time.perf_counter()
                    pieces = decoder.push(item[None])
                    decode_s = time.perf_counter() - started if pieces else 0.0
                    pieces = gate.step(pieces, decode_s, decoder.decoded_steps - decoded)
                for piece in pieces:
                    yield _to_int16(piece)
                if cancel is not None and cancel.cancelled:
                    return
            if cancel is not None and cancel.cancelled:
                return
            tail = [decoder.finish()]
            for piece in tail if gate is None else gate.flush(tail):
                if len(piece):
                    yield _to_int16(piece)

    def synthesize(
        self,
        texts: list[str],
        speaker: torch.Tensor | None = None,
        *,
        refine: bool | None = None,
        seed: int | None = None,
    ) -> list[np.ndarray]:
        """Offline: every text generated in one GPT batch, each decoded whole (exact, no joins)."""
        prepared = [self.prepare(t).sentences for t in texts]
        flat = [s for sentences in prepared for s in sentences]
        if flat and (self.options.refine if refine is None else refine):
            flat, _ = self.gpt.refine(
                flat, self.options.refine_control, replace(self.options.refine_sampling, seed=seed)
            )
        waves: list[np.ndarray] = []
        if flat:
            result = self.gpt.run(
                self.gpt.code_prompt(flat, speaker, self.options.speed_prompt),
                replace(self.options.sampling, seed=seed),
            )
            items = result.hiddens if self.options.decoder == "hidden" else result.tokens
            decode = self._decode_fn()
            waves = [_to_int16(decode(x)) if len(x) else np.zeros(0, np.int16) for x in items]
        out, at = [], 0
        for sentences in prepared:
            parts = waves[at : at + len(sentences)]
            at += len(sentences)
            out.append(np.concatenate(parts) if parts else np.zeros(0, np.int16))
        return out

    # -- sessions: cooperative streams on the lane, their GPT steps batched ---------------------

    def _forward(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: KvCache, valid: torch.Tensor | None
    ) -> torch.Tensor:
        """A GPT forward in the calling thread. On the lane, a single-position step of a batch-1
        sequence is a batch call: in a cooperative stream (a session) it waits for the round and
        runs together with the other sessions' steps."""
        if embeds.shape[:2] == (1, 1) and valid is None and self.lane.on_lane():
            return self.lane.batch_call(self._gpt_steps, (embeds, positions, cache))
        return self.gpt.llama(embeds, positions, cache, valid)

    def _gpt_steps(self, rows: list[tuple[torch.Tensor, torch.Tensor, KvCache]]) -> list[torch.Tensor]:
        llama = self.gpt.llama
        assert isinstance(llama, LeanLlama | OrtLlama)
        if len(rows) == 1:
            embeds, positions, cache = rows[0]
            return [llama(embeds, positions, cache)]
        return llama.forward_rows(rows)

    def _decode_fn(self) -> WaveDecoder:
        """Per-utterance items ``[T, D]`` → float32 wave, through the configured decoder + Vocos."""
        if self.options.decoder == "hidden":
            return WaveDecoder(self.hidden_decoder, self.vocos)
        if self.code_decoder is None:
            raise RuntimeError("decoder='dvae' needs the engine loaded with that option")
        return WaveDecoder(self.code_decoder, self.vocos)

    def warm_up(self) -> None:
        """A few GPT steps and one decode on the lane: first-call costs (allocations, kernel choice,
        thread pools) are paid before the first reply instead of during it."""

        def work() -> None:
            prompt = self.gpt.code_prompt(["你好"], None, self.options.speed_prompt)
            result = self.gpt.run(prompt, SamplingOptions(seed=0, max_new_tokens=6, min_new_tokens=6))
            items = result.hiddens[0] if self.options.decoder == "hidden" else result.tokens[0]
            self._decode_fn().decode(items)

        self.lane.call(work)

    def session(self, voice: str | None = None) -> ChatTtsSession:
        return ChatTtsSession(self, voice)

    @property
    def device(self) -> str:
        return str(self.gpt.device)

    @property
    def lanes(self) -> list[ComputeLane]:
        return [self.lane]

    def check_voice(self, voice: str) -> None:
        self.speaker(voice)

    def close(self) -> None:
        self.lane.close()

    def voice_names(self) -> list[str]:
        return self.voice_store.names()

    @property
    def seed_voices(self) -> bool:
        return self.stats is not None  # seed:N samples from the model's speaker statistics


class ChatTtsSession(TtsSession):
    """One conversation's voice: a given voice, else one random voice kept for the whole session."""

    def __init__(self, engine: ChatTts, voice: str | None = None) -> None:
        self.engine = engine
        vector = engine.speaker(voice)
        if vector is None and engine.stats is not None:
            vector = engine.speaker(engine.random_voice())  # never a new random voice per sentence
        self.speaker = vector
        self._cancel: CancelToken | None = None

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        token = self._cancel = CancelToken()
        generate = functools.partial(self.engine.stream, cancel=token)  # checked every GPT step
        # Cooperative: paused at each GPT step, so sessions interleave (and their steps batch)
        # instead of waiting for each other's whole sentences.
        stream = self.engine.lane.stream(generate, text, self.speaker, cancel=token, cooperative=True)
        async for chunk in stream:
            yield chunk

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()


def _speakable(text: str) -> bool:
    """Anything besides tags, punctuation and spaces (the GPT needs something to say)."""
    import re

    return bool(re.sub(r"\[[a-z_0-9]+\]|[\s，。、,.!?！？；;：:]", "", text))


def _to_int16(wave: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)
