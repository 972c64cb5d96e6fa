"""The ChatTTS engine: text in, 24 kHz int16 audio out, streamed while the GPT still generates.

Per request: normalise the text (numbers, punctuation, tags) → split into sentences → optionally
refine → per sentence, generate codes step by step and hand each step's hidden state (or codes) to
a bounded-context streaming decoder, which emits audio every few steps. One loaded engine is shared
by many sessions; all compute runs on the engine's :class:`~voiceloop.compute.ComputeLane`: each
session's generation is a cooperative stream there, paused at every GPT step, and concurrent
sessions' single-position steps run as one batched forward.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ...allocator import tune_for_inference
from ...compute import CancelToken, ComputeLane
from ...ortgraph import GraphLoadError
from ..base import TtsEngine
from . import assets
from .clone import ClonedVoice, Transcribe, VoiceCloner
from .decoder import CodeDecoder, HiddenDecoder
from .gpt import ChatTtsGpt, Prompt, SamplingOptions
from .gpt_onnx import OrtLlama
from .llama import KvCache, LeanLlama
from .normalize import normalize, split_sentences
from .options import ChatTtsOptions
from .play_through import PlayThrough
from .session import ChatTtsSession, settings_defaults
from .speaker import SpeakerStats, VoiceStore, decode_speaker, resolve_voice, sample_speaker
from .stream_decode import StreamingDecoder, WaveDecoder
from .vocos import Vocos
from .voice import Voice, is_voice_json, parse_voice_json

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
SAMPLES_PER_STEP = 512  # one GPT step = 2 mel frames at hop 256
STEPS_PER_SECOND = SAMPLE_RATE / SAMPLES_PER_STEP  # 46.875: real time


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
        self.root: Path | None = None  # the asset directory (from_pretrained): the DVAE for cloning
        self._cloner: VoiceCloner | None = None
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
        engine = cls(gpt, vocos, hidden, code, stats, options)
        engine.root = root
        return engine

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
        if spk is not None and is_voice_json(spk):
            return parse_voice_json(spk).speaker
        return None if spk is None else decode_speaker(spk)

    def voice(self, voice: str | None) -> Voice | None:
        """Any voice spec → what generation conditions on (a speaker and/or a recording's prompt)."""
        spk = resolve_voice(voice, self.stats, self.voice_store)
        if spk is None:
            return None
        dim = None if self.stats is None else self.stats.dim
        return parse_voice_json(spk, dim) if is_voice_json(spk) else Voice(speaker=decode_speaker(spk, dim))

    def voice_from_audio(
        self,
        samples: np.ndarray,
        rate: int,
        transcript: str | None = None,
        *,
        transcribe: Transcribe | None = None,
    ) -> ClonedVoice:
        """A voice from a recording (int16 or float, any rate and channel count), as ChatTTS's
        ``sample_audio_speaker`` + ``txt_smp``. Without ``transcript``, ``transcribe(samples, rate)``
        makes one (``voiceloop.Agent`` passes its ASR engine). Nothing is saved: use the result's
        ``voice`` per session (``session(voice=...)``) or ``voice_store.save(name, result.voice)``.
        Raises :class:`~.clone.VoiceCloneError` for recordings that cannot work; see its warnings."""
        if self._cloner is None:
            dvae = self.code_decoder
            if dvae is None:
                if self.root is None:
                    raise RuntimeError(
                        "voice_from_audio needs the engine loaded by from_pretrained (the DVAE)"
                    )
                device = next(self.vocos.parameters()).device
                dvae = CodeDecoder.from_file(self.root / assets.DVAE, device=device)
            self._cloner = VoiceCloner(dvae, lambda text: normalize(text, is_known=self.is_known).text)
        cloner = self._cloner
        return cloner.clone(
            samples,
            rate,
            transcript,
            transcribe=transcribe,
            encode=lambda w: self.lane.call(cloner.encode, w),
        )

    def random_voice(self) -> str | None:
        """A fresh voice from the model's speaker statistics (None if the assets lack them)."""
        return None if self.stats is None else sample_speaker(self.stats, None)

    # -- synthesis (run these on the lane from async code) -------------------------------------

    def _code_prompt(self, texts: list[str], voice: torch.Tensor | Voice | None) -> Prompt:
        """The GPT prompt for ``texts`` in ``voice`` (a bare tensor is a speaker vector)."""
        if not isinstance(voice, Voice):
            return self.gpt.code_prompt(texts, voice, self.options.speed_prompt)
        return self.gpt.code_prompt(
            texts,
            voice.speaker,
            self.options.speed_prompt,
            prompt_codes=voice.prompt_codes,
            prompt_text=voice.prompt_text,
        )

    def stream(
        self,
        text: str,
        speaker: torch.Tensor | Voice | None = None,
        *,
        refine: bool | None = None,
        seed: int | None = None,
        cancel: CancelToken | None = None,
        sampling: SamplingOptions | None = None,
        refine_control: str | None = None,
        on_refined: Callable[[list[str]], None] | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield int16 chunks as they are decoded; stops within one GPT step of ``cancel``.

        ``sampling`` / ``refine_control``: this request's, instead of the options' (a session's
        settings); ``on_refined`` is told the refined sentences before their first audio.

        ``speaker``: a speaker vector or a :class:`Voice` (e.g. one made from a recording: its
        prompt codes lengthen every sentence's prefill, then steps cost the same)."""
        prepared = self.prepare(text)
        sentences = prepared.sentences
        if sentences and (self.options.refine if refine is None else refine):
            refined, _ = self.gpt.refine(
                sentences,
                self.options.refine_control if refine_control is None else refine_control,
                replace(self.options.refine_sampling, seed=seed),
                forward=self._forward,
            )
            sentences = [r for r in refined if _speakable(r)]
            if on_refined is not None:
                on_refined(sentences)
        gate = None
        if self.options.start == "smooth":
            gate = PlayThrough(
                self.options.stream, step_audio_s=1 / STEPS_PER_SECOND, sample_rate=SAMPLE_RATE
            )
        code_sampling = self.options.sampling if sampling is None else sampling
        for index, sentence in enumerate(sentences):
            sampling = replace(code_sampling, seed=None if seed is None else seed + index)
            prompt = self._code_prompt([sentence], speaker)
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
        speaker: torch.Tensor | Voice | None = None,
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
                self._code_prompt(flat, speaker),
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

    def session(self, voice: str | Voice | None = None) -> ChatTtsSession:
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

    #: a session's knobs (the page's panel): code sampling and the refinement pass
    synthesis_settings = frozenset({"temperature", "top_p", "top_k", "refine", "refine_prompt"})

    def settings_defaults(self) -> dict[str, object]:
        return settings_defaults(self.options)


def _speakable(text: str) -> bool:
    """Anything besides tags, punctuation and spaces (the GPT needs something to say)."""
    import re

    return bool(re.sub(r"\[[a-z_0-9]+\]|[\s，。、,.!?！？；;：:]", "", text))


def _to_int16(wave: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)
