"""A ChatTTS voice from a recording: the reference's ``sample_audio_speaker`` plus the checks it lacks.

ChatTTS 0.2.5 clones a voice by encoding a 24 kHz mono float recording (its web UI decodes files to
float32 in [-1, 1] and averages the channels) with the DVAE encoder: log-mel (``torch.stft`` and the
filterbank stored in ``DVAE.safetensors``, clip 1e-5) ÷ ``coef`` → downsample ×2 → encoder → grouped
residual FSQ → codes ``[4, T]`` at 46.875 steps/s (:meth:`CodeDecoder.encode`). The codes travel as
``spk_smp`` (:func:`encode_prompt_codes`), and generation puts them after ``[Ptts]`` with the
recording's transcript ``txt_smp`` before the text, so the GPT continues in that voice. Those steps
here are bit-identical to the reference (tests/test_tts_voice_clone.py, golden values).

What this module adds: int16/float/multi-channel/any-rate input (downmix like the reference's web UI,
resample with soxr), typed errors for recordings that cannot work (silent, shorter than 1 s, longer
than 30 s) and warnings for ones that will work badly (clipped, quiet, long silences, an odd
transcript length). The transcript is given, or made by a ``transcribe`` callable the caller passes
in — the loop's ASR engine — so the TTS layer never imports the ASR layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soxr
import torch

from . import assets
from .dvae import CodeDecoder
from .speaker_string import SpeakerError, encode_prompt_codes
from .voice import voice_json

RATE = 24_000
STEPS_PER_SECOND = RATE / 512  # one DVAE code step = 2 mel frames at hop 256
MIN_SECONDS = 1.0
#: ChatTTS's GPT was trained on 4096 positions: a 30 s prompt takes 1407 of them, a sentence's text
#: and the reference's 2048 generated steps need most of the rest (docs/tts.md, "Voices from a recording").
MAX_SECONDS = 30.0
_SILENT_PEAK = 10 ** (-50 / 20)  # below -50 dBFS nothing usable was recorded
_QUIET_PEAK = 10 ** (-26 / 20)
_FRAME_S = 0.02
_SOUND_RANGE_DB = 35.0  # a frame within this of the loudest one counts as sound
_LONG_SILENCE_S = 1.0
_FULL_SCALE = 0.999
_MAX_CHANNELS = 8

#: ``transcribe(samples, rate) -> text``: float32 mono samples at ``rate`` (24 kHz here) to words.
Transcribe = Callable[[np.ndarray, int], str]


class VoiceCloneError(SpeakerError):
    """A recording that cannot become a voice. ``problem`` names the check: ``bad_samples``,
    ``bad_rate``, ``silent``, ``too_short``, ``too_long`` or ``no_transcript``."""

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class PreparedAudio:
    """A recording as the DVAE encoder takes it: float32 mono 24 kHz, never rescaled."""

    wave: np.ndarray
    seconds: float
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class ClonedVoice:
    """The result of :meth:`ChatTts.voice_from_audio`. ``voice`` is the voice spec to use: pass it
    as ``session(voice=...)`` or ``--voice``, or save it (``VoiceStore.save``); nothing is on disk
    until then. ``spk_smp`` / ``transcript`` are what the reference calls ``spk_smp`` / ``txt_smp``."""

    voice: str
    spk_smp: str
    transcript: str
    transcript_source: Literal["given", "asr"]
    seconds: float
    prompt_steps: int
    warnings: tuple[str, ...]


def prepare_audio(
    samples: np.ndarray, rate: int, *, min_seconds: float = MIN_SECONDS, max_seconds: float = MAX_SECONDS
) -> PreparedAudio:
    """Check and convert a recording: int16 (÷32768) or float in [-1, 1]; ``[N]``, ``[N, C]`` or
    ``[C, N]`` (channels averaged); any rate (soxr to 24 kHz). Raises :class:`VoiceCloneError`."""
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or not 4000 <= int(rate) <= 384_000:
        raise VoiceCloneError("bad_rate", f"sample rate must be an integer in 4000..384000 Hz, got {rate!r}")
    rate = int(rate)
    wave, warnings = _mono_float(samples)
    seconds = len(wave) / rate
    if seconds < min_seconds:
        raise VoiceCloneError(
            "too_short", f"the recording is {seconds:.2f} s long; a voice needs at least {min_seconds:g} s"
        )
    if seconds > max_seconds:
        raise VoiceCloneError(
            "too_long",
            f"the recording is {seconds:.1f} s long; at most {max_seconds:g} s fit the model's context "
            "(5-10 s of clear speech is best: trim it)",
        )
    warnings += _level_checks(wave, rate, min_seconds)
    if rate != RATE:
        warnings.append(f"resampled from {rate} Hz to {RATE} Hz")
        if rate < 16_000:
            warnings.append(
                f"recorded at {rate} Hz: nothing above {rate // 2} Hz, the voice will sound muffled"
            )
        wave = soxr.resample(wave, rate, RATE, quality="HQ").astype(np.float32)
    return PreparedAudio(np.ascontiguousarray(wave, dtype=np.float32), seconds, tuple(warnings))


def _mono_float(samples: np.ndarray) -> tuple[np.ndarray, list[str]]:
    try:
        array = np.asarray(samples)
    except Exception as exc:  # ragged lists and the like
        raise VoiceCloneError("bad_samples", f"samples are not an array: {exc}") from exc
    warnings: list[str] = []
    if array.dtype == np.int16:
        wave = array.astype(np.float32) / 32768.0
    elif array.dtype == np.int32:
        wave = (array.astype(np.float64) / 2**31).astype(np.float32)
    elif array.dtype.kind == "f":
        wave = array.astype(np.float32)
        if not np.isfinite(wave).all():
            raise VoiceCloneError("bad_samples", "samples hold NaN or infinite values")
        peak = float(np.abs(wave).max()) if wave.size else 0.0
        if peak > 1.0 + 1e-6:
            raise VoiceCloneError(
                "bad_samples",
                f"float samples must lie in [-1, 1] (peak {peak:.3g}): integer PCM passed as float? "
                "pass int16 arrays as int16",
            )
    else:
        raise VoiceCloneError("bad_samples", f"samples must be int16, int32 or float, got {array.dtype}")
    if wave.ndim == 2:
        channels_last = wave.shape[1] <= _MAX_CHANNELS
        if not channels_last and wave.shape[0] > _MAX_CHANNELS:
            raise VoiceCloneError(
                "bad_samples", f"samples of shape {wave.shape}: expected [N], [N, C] or [C, N]"
            )
        channels = wave.shape[1] if channels_last else wave.shape[0]
        wave = wave.mean(axis=1 if channels_last else 0, dtype=np.float32)
        if channels > 1:
            warnings.append(f"downmixed {channels} channels to mono (their average)")
    elif wave.ndim != 1:
        raise VoiceCloneError("bad_samples", f"samples must be 1-D or 2-D, got shape {wave.shape}")
    return wave, warnings


def _level_checks(wave: np.ndarray, rate: int, min_seconds: float) -> list[str]:
    """Silence is an error; clipping, a quiet level and long silent ends are warnings."""
    peak = float(np.abs(wave).max())
    if peak < _SILENT_PEAK:
        raise VoiceCloneError(
            "silent", f"the recording is silent (peak {_dbfs(peak)} dBFS): was the microphone muted?"
        )
    frame = max(1, int(rate * _FRAME_S))
    usable = len(wave) // frame * frame
    rms = np.sqrt(np.mean(wave[:usable].astype(np.float64).reshape(-1, frame) ** 2, axis=1) + 1e-20)
    sound = 20 * np.log10(rms) > 20 * np.log10(rms.max()) - _SOUND_RANGE_DB
    active = float(sound.sum()) * _FRAME_S
    if active < min_seconds / 2:
        raise VoiceCloneError(
            "silent",
            f"only {active:.2f} s of the recording holds sound; a voice needs about {min_seconds:g} s",
        )
    warnings = []
    clipped = int(np.count_nonzero(np.abs(wave) >= _FULL_SCALE))
    if clipped >= 10 and clipped > 1e-3 * len(wave):
        warnings.append(
            f"clipped: {100 * clipped / len(wave):.2f} % of the samples are at full scale "
            "(distortion becomes part of the voice); record at a lower level"
        )
    if peak < _QUIET_PEAK:
        warnings.append(f"quiet: the peak is {_dbfs(peak)} dBFS; record closer to the microphone")
    lead = int(np.argmax(sound)) * _FRAME_S
    trail = int(np.argmax(sound[::-1])) * _FRAME_S
    for where, seconds in (("starts", lead), ("ends", trail)):
        if seconds >= _LONG_SILENCE_S:
            warnings.append(
                f"{where} with {seconds:.1f} s of silence: trim it (it becomes part of the voice)"
            )
    return warnings


def _dbfs(peak: float) -> str:
    return f"{20 * np.log10(max(peak, 1e-10)):.0f}"


def _speech_units(text: str) -> int:
    """CJK characters plus Latin words: a rough syllable count for the transcript-length check."""
    cjk = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff")
    latin = sum(1 for word in "".join(" " if "\u4e00" <= ch <= "\u9fff" else ch for ch in text).split())
    return cjk + latin


class VoiceCloner:
    """Recording → :class:`ClonedVoice` with one DVAE (the engine holds one per loaded model).

    ``normalize_text`` turns a transcript into what the tokenizer gets (the engine passes its own
    text normaliser, so ``txt_smp`` reads like the text it will speak); None keeps it as given.
    """

    def __init__(self, dvae: CodeDecoder, normalize_text: Callable[[str], str] | None = None) -> None:
        self.dvae = dvae
        self.normalize_text = normalize_text

    @classmethod
    def from_pretrained(cls, root: Path, device: str | torch.device = "cpu") -> VoiceCloner:
        """The DVAE and the tokenizer only (for ``voiceloop tts voice save --from-audio``: no GPT)."""
        from transformers import AutoTokenizer

        from .normalize import normalize

        tokenizer = AutoTokenizer.from_pretrained(str(root / assets.TOKENIZER_DIR))

        def is_known(char: str) -> bool:  # as ChatTts.is_known: the tokenizer has it (not [UNK])
            ids = tokenizer(char, add_special_tokens=False)["input_ids"]
            return bool(ids) and tokenizer.unk_token_id not in ids

        dvae = CodeDecoder.from_file(root / assets.DVAE, device=device)
        return cls(dvae, lambda text: normalize(text, is_known=is_known).text)

    def encode(self, wave: np.ndarray) -> torch.Tensor:
        """24 kHz float32 mono → codes ``[4, T]`` (the reference's ``dvae.sample_audio``)."""
        device = self.dvae.coef.device
        return self.dvae.encode(torch.from_numpy(np.ascontiguousarray(wave)).to(device)).cpu()

    def transcript(
        self, text: str | None, wave: np.ndarray, transcribe: Transcribe | None
    ) -> tuple[str, Literal["given", "asr"]]:
        """The given transcript, else the ``transcribe`` callable's, normalised; never empty."""
        source: Literal["given", "asr"] = "given"
        if text is None or not text.strip():
            if transcribe is None:
                raise VoiceCloneError(
                    "no_transcript",
                    "no transcript given and no ASR to make one: pass the exact words of the recording",
                )
            text, source = transcribe(wave, RATE), "asr"
            if not isinstance(text, str) or not text.strip():
                raise VoiceCloneError(
                    "no_transcript", "the ASR heard no words in the recording; pass its transcript instead"
                )
        words = " ".join(text.split())
        if self.normalize_text is not None:
            words = self.normalize_text(words).strip()
        if not words:
            raise VoiceCloneError("no_transcript", f"the transcript {text!r} has nothing the model can read")
        return words, source

    def clone(
        self,
        samples: np.ndarray,
        rate: int,
        transcript: str | None = None,
        *,
        transcribe: Transcribe | None = None,
        encode: Callable[[np.ndarray], torch.Tensor] | None = None,
    ) -> ClonedVoice:
        """Check, transcribe if needed, encode; ``encode`` runs :meth:`encode` elsewhere (a lane)."""
        prepared = prepare_audio(samples, rate)
        text, source = self.transcript(transcript, prepared.wave, transcribe)
        warnings = list(prepared.warnings)
        units, seconds = _speech_units(text), prepared.seconds
        if units > 9 * seconds:
            warnings.append(
                f"the transcript has {units} syllables/words for {seconds:.1f} s of audio: it must be "
                "exactly what is said, no more"
            )
        elif units < 0.5 * seconds:
            warnings.append(
                f"the transcript has {units} syllables/words for {seconds:.1f} s of audio: it must be "
                "everything that is said"
            )
        codes = (encode or self.encode)(prepared.wave)
        spk_smp = encode_prompt_codes(codes)
        voice = voice_json(spk_smp, text, seconds=round(seconds, 2), transcript_from=source)
        return ClonedVoice(voice, spk_smp, text, source, seconds, int(codes.shape[1]), tuple(warnings))
