"""Smart Turn v3 (``pipecat-ai/smart-turn-v3``, BSD-2): is the user's turn complete?

The released model is one ONNX graph: a Whisper-tiny encoder (4 layers, width 384) over an
80-bin log-mel spectrogram of the last 8 s of 16 kHz audio, attention pooling and a small
classifier, ending in a sigmoid. Input ``input_features`` ``[batch, 80, 800]``, output the
probability ``[batch, 1]`` that the turn is complete. Audio shorter than 8 s is zero-padded on
the left; the waveform is normalised to zero mean and unit variance before the spectrogram
(transformers' ``WhisperFeatureExtractor(chunk_length=8)`` computes exactly that).
The hub repo holds several versions; ``smart-turn-v3.2-cpu.onnx`` (int8, 8.7 MB) is the newest CPU one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import UserError
from ..frames import FRAME_MS
from ..hub import from_hub, looks_like_path

DEFAULT_MODEL = "pipecat-ai/smart-turn-v3"
DEFAULT_FILE = "smart-turn-v3.2-cpu.onnx"
RATE = 16000
WINDOW_SECONDS = 8
MEL_BINS, MEL_FRAMES = 80, 800


class TurnModelError(UserError, ValueError):
    """Bad audio or options for the turn model, or a file that is not a Smart Turn graph."""


class TurnModelNotAvailable(UserError, FileNotFoundError):
    """No such file or directory, and not in (or not downloadable to) the hub cache."""


@dataclass
class TurnOptions:
    """When the VAD asks the turn model, and what it does with the answer.

    The model only ever shortens the wait: a turn it hears as complete ends after ``check_ms``
    of quiet; otherwise the VAD's own hangover (``VadOptions.end_silence_ms``, or
    ``incomplete_silence_ms`` when set) decides as without a model.
    """

    #: Quiet after the utterance's last loud frame before the model is asked (``Endpointer.quiet_frames``:
    #: silence plus WebRTC's quiet tail). pipecat pairs Smart Turn with a 200 ms VAD stop.
    check_ms: int = 200
    #: Probability at or above which the turn counts as complete (the model's own cut is 0.5).
    threshold: float = 0.5
    #: Silence that ends a turn the model heard as unfinished; None: ``end_silence_ms``. Longer
    #: values let users pause mid-sentence (pipecat waits up to 3 s); past ~0.5 s the ASR gives up
    #: its early final (``asr.stage.HOLD_FRAMES``) and finishes with a plain final pass.
    incomplete_silence_ms: int | None = None
    #: A verdict later than this is not waited for (counted in ``turn.timeouts``); the hangover decides.
    timeout_ms: int = 500

    def __post_init__(self) -> None:
        for name in ("check_ms", "timeout_ms"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise TurnModelError(f"TurnOptions.{name} must be a positive int (ms), got {value!r}")
        if not isinstance(self.threshold, (int, float)) or not 0.0 < float(self.threshold) <= 1.0:
            raise TurnModelError(f"TurnOptions.threshold must be in (0, 1], got {self.threshold!r}")
        m = self.incomplete_silence_ms
        if m is not None and (type(m) is not int or m <= self.check_ms):
            raise TurnModelError(
                f"TurnOptions.incomplete_silence_ms must be an int > check_ms or None, got {m!r}"
            )

    def check_frames(self, end_silence_ms: int) -> int:
        """Quiet frames (20 ms) before the check; it must come before the VAD's own end of speech."""
        frames = -(-self.check_ms // FRAME_MS)
        if frames * FRAME_MS >= end_silence_ms:
            raise TurnModelError(
                f"TurnOptions.check_ms ({self.check_ms} ms) must be shorter than VadOptions.end_silence_ms "
                f"({end_silence_ms} ms): the turn check must come before the VAD's end of speech"
            )
        return frames


class TurnModel(Protocol):
    """Anything that maps an utterance's audio (16 kHz mono) to P(turn complete)."""

    def probability(self, audio: np.ndarray) -> float: ...


def _guidance(source: str, reason: str) -> str:
    return (
        f"turn model {source!r} is not available: {reason}. To use a local file, download it elsewhere "
        f"with `hf download {DEFAULT_MODEL} {DEFAULT_FILE} --local-dir DIR`, copy DIR here and pass "
        f"DIR or DIR/{DEFAULT_FILE} (e.g. --turn-model DIR)"
    )


def resolve_file(source: str = DEFAULT_MODEL, filename: str | None = None) -> Path:
    """An ONNX file: ``source`` itself, ``source/filename`` in a directory, or from the hub."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / (filename or DEFAULT_FILE)
        if candidate.is_file():
            return candidate
        found = sorted(path.glob("smart-turn-v3*.onnx"))
        if filename is None and found:
            cpu = [p for p in found if p.stem.endswith("-cpu")]
            return (cpu or found)[-1]  # the newest version, its CPU build if there is one
        raise TurnModelNotAvailable(
            _guidance(source, f"{str(path)!r} holds no {filename or 'smart-turn-v3*.onnx'}")
        )
    if looks_like_path(source) or source.endswith(".onnx"):
        raise TurnModelNotAvailable(_guidance(source, f"no such file or directory {str(path)!r}"))
    from huggingface_hub import hf_hub_download

    name = filename or DEFAULT_FILE
    return from_hub(
        source,
        lambda local_only: Path(hf_hub_download(source, name, local_files_only=local_only)),
        lambda reason: TurnModelNotAvailable(_guidance(source, reason)),
    )


class SmartTurnModel:
    """A Smart Turn v3 ONNX graph on onnxruntime (CPU), with the model's own feature extraction."""

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - the onnx extra is installed in CI
            raise TurnModelError("the turn model needs onnxruntime: pip install 'voiceloop[onnx]'") from exc
        from transformers import WhisperFeatureExtractor

        if type(threads) is not int or threads < 1:
            raise TurnModelError(f"threads must be a positive int, got {threads!r}")
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise TurnModelError(f"{str(self.path)!r} is not a loadable ONNX graph: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        shape = list(inputs[0].shape) if len(inputs) == 1 else []
        if len(shape) != 3 or shape[1:] != [MEL_BINS, MEL_FRAMES] or not outputs:
            got = [(i.name, i.shape) for i in inputs]
            raise TurnModelError(f"{str(self.path)!r} is not a Smart Turn v3 graph: inputs {got}")
        self._input = inputs[0].name
        self._features = WhisperFeatureExtractor(chunk_length=WINDOW_SECONDS)

    @classmethod
    def from_pretrained(
        cls, source: str = DEFAULT_MODEL, *, filename: str | None = None, threads: int = 1
    ) -> SmartTurnModel:
        """Load from an .onnx file, a directory holding one, or a hub id (cached download)."""
        return cls(resolve_file(source, filename), threads=threads)

    def features(self, audio: np.ndarray) -> np.ndarray:
        """``[1, 80, 800]`` log-mel features of the last 8 s (left-padded with silence)."""
        if not isinstance(audio, np.ndarray) or audio.ndim != 1:
            raise TurnModelError("turn model audio must be a 1-D numpy array (16 kHz mono)")
        if audio.dtype == np.int16:
            x = audio.astype(np.float32) / 32768.0
        elif audio.dtype in (np.float32, np.float64):
            x = audio.astype(np.float32, copy=False)
        else:
            raise TurnModelError(f"turn model audio must be int16 or float, got {audio.dtype}")
        n = RATE * WINDOW_SECONDS
        x = x[-n:] if len(x) >= n else np.concatenate([np.zeros(n - len(x), np.float32), x])
        out: Any = self._features(
            x,
            sampling_rate=RATE,
            return_tensors="np",
            padding="max_length",
            max_length=n,
            truncation=True,
            do_normalize=True,
        )
        return out.input_features.astype(np.float32).reshape(1, MEL_BINS, MEL_FRAMES)

    def probability(self, audio: np.ndarray) -> float:
        """P(the turn is complete) for 16 kHz mono audio ending now (int16 or float in [-1, 1])."""
        result = self._session.run(None, {self._input: self.features(audio)})[0]
        return float(np.asarray(result).reshape(-1)[0])
