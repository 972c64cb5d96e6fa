"""An exported wav2vec2 CTC checkpoint on onnxruntime: a backend for the streaming engine.

The export (:mod:`.onnx_export`) splits the model where
:class:`~voiceloop.asr.model.Wav2Vec2Checkpoint` is split, so
:class:`~voiceloop.asr.streaming.Wav2Vec2Engine` runs on it unchanged, conv caching included:

* ``conv.onnx``: normalised audio ``[1, samples]`` -> conv features ``[1, frames, conv_dim]``;
* ``encoder.onnx``: conv features ``[1, frames, conv_dim]`` -> float32 log-probs ``[1, frames, V]``
  (feature projection + transformer + CTC head + log_softmax); ``encoder.int8.onnx`` is its
  dynamically quantized twin (``--int8``).

Both time axes are dynamic. Normalisation stays in Python because the streaming engine freezes
the statistics per utterance. The vocabulary and feature extractor load from the config and
processor files next to the graphs, without the torch weights. onnxruntime and transformers
are imported only when a model loads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError
from .base import conv_frames, normalize_audio

if TYPE_CHECKING:
    import onnxruntime
    import torch

    from .model import Vocabulary

CONV_FILE = "conv.onnx"
ENCODER_FILE = "encoder.onnx"
ENCODER_INT8_FILE = "encoder.int8.onnx"


class OnnxRuntimeMissing(UserError, ImportError):
    """onnxruntime is an optional extra; the CLI prints this as one line that says how to install it."""


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise OnnxRuntimeMissing("the ONNX backend needs onnxruntime: pip install 'voiceloop[onnx]'") from exc
    return onnxruntime


def _conv_geometry(conv_kernel: list[int], conv_stride: list[int]) -> tuple[int, int]:
    """(total stride, receptive field) of the unpadded conv stack, as the torch checkpoint computes."""
    field, jump = 1, 1
    for kernel, stride in zip(conv_kernel, conv_stride, strict=True):
        field, jump = field + (kernel - 1) * jump, jump * stride
    return math.prod(conv_stride), field


class OnnxCheckpoint:
    """An exported model on onnxruntime (CPU) with the checkpoint API the streaming engine uses.

    Differences from the torch checkpoint: :meth:`project` is the identity, because the feature
    projection lives inside ``encoder.onnx`` (so the engine's cached "conv features" are the
    encoder graph's input), and :meth:`encode` returns no hidden states (``layer`` must be None;
    embeddings need the torch backend). Sessions are thread-safe, so one instance serves many
    streams, like the torch checkpoint.
    """

    def __init__(
        self,
        conv_session: onnxruntime.InferenceSession,
        encoder_session: onnxruntime.InferenceSession,
        vocab: Vocabulary,
        *,
        name: str,
        config: dict[str, Any],
        sample_rate: int = 16000,
        do_normalize: bool = True,
        threads: int | None = None,
        int8: bool = False,
    ) -> None:
        import torch

        self.conv_session = conv_session
        self.encoder_session = encoder_session
        self.vocab = vocab
        self.name = name
        self.sample_rate = int(sample_rate)
        self.do_normalize = bool(do_normalize)
        self.threads = threads
        self.int8 = int8
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.conv_stride, self.conv_receptive_field = _conv_geometry(
            config["conv_kernel"], config["conv_stride"]
        )
        # GroupNorm ("group") normalises the first conv layer over time, so frames see the whole input.
        self.local_conv = config["feat_extract_norm"] == "layer"
        self.conv_dim = int(config["conv_dim"][-1])
        self.hidden_size = int(config["hidden_size"])
        self.num_layers = int(config["num_hidden_layers"])
        self.vocab_size = int(config["vocab_size"])
        self._check_graphs()

    @classmethod
    def from_directory(
        cls, path: str | Path, *, threads: int | None = None, int8: bool | None = None
    ) -> OnnxCheckpoint:
        """Load an ``export-onnx`` directory.

        ``int8``: None uses ``encoder.int8.onnx`` when the export made one (``--int8`` asked for
        it) and ``encoder.onnx`` otherwise; True/False insist on that encoder. ``threads`` sets
        onnxruntime's intra-op threads (None: onnxruntime's default, one per physical core).
        """
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        ort = import_onnxruntime()
        directory = Path(path).expanduser()
        conv_path, encoder_path = _graph_paths(directory, int8)
        config, vocab, extractor = load_metadata(directory)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime picks
        options.inter_op_num_threads = 1  # the graphs are sequential chains
        options.log_severity_level = 3  # errors only: the optimizer's notes are not actionable
        providers = ["CPUExecutionProvider"]
        conv = ort.InferenceSession(str(conv_path), options, providers=providers)
        encoder = ort.InferenceSession(str(encoder_path), options, providers=providers)
        return cls(
            conv,
            encoder,
            vocab,
            name=str(path),
            config=config,
            sample_rate=extractor.sampling_rate,
            do_normalize=extractor.do_normalize,
            threads=threads,
            int8=encoder_path.name == ENCODER_INT8_FILE,
        )

    def _check_graphs(self) -> None:
        """Catch ONNX files that do not belong to this config.json before they decode garbage."""
        conv_width = self.conv_session.get_outputs()[0].shape[-1]
        vocab_width = self.encoder_session.get_outputs()[0].shape[-1]
        expected = {
            "conv output width": (conv_width, self.conv_dim),
            "vocab size": (vocab_width, self.vocab_size),
        }
        for what, (graph, config) in expected.items():
            if isinstance(graph, int) and graph != config:
                raise ValueError(
                    f"{self.name}: ONNX {what} is {graph} but config.json says {config}; re-export"
                )

    def apply_threads(self) -> None:
        """No-op: onnxruntime's threads are fixed per session (``threads`` at load time)."""

    def normalize(self, audio: np.ndarray) -> np.ndarray:
        """Zero-mean unit-variance like ``Wav2Vec2FeatureExtractor``, exactly as the torch backend."""
        return normalize_audio(audio, self.do_normalize)

    def frames_for(self, n_samples: int) -> int:
        """Conv output frames for ``n_samples`` (the conv layers are unpadded)."""
        return conv_frames(n_samples, self.conv_receptive_field, self.conv_stride)

    def _conv(self, audio: np.ndarray) -> np.ndarray:
        samples = np.ascontiguousarray(audio, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"audio must be 1-D, got shape {samples.shape}")
        if self.frames_for(len(samples)) == 0:
            return np.zeros((0, self.conv_dim), np.float32)
        return self.conv_session.run(None, {"audio": samples[None]})[0][0]

    def _encode(self, features: np.ndarray) -> np.ndarray:
        if features.ndim != 2 or features.shape[1] != self.conv_dim:
            raise ValueError(
                f"expected conv features [frames, {self.conv_dim}], got shape {tuple(features.shape)} "
                "(on the ONNX backend project() is the identity: pass conv_features() output)"
            )
        if features.shape[0] == 0:
            return np.zeros((0, self.vocab_size), np.float32)
        batch = np.ascontiguousarray(features, dtype=np.float32)[None]
        return self.encoder_session.run(None, {"features": batch})[0][0]

    def conv_features(self, audio: np.ndarray) -> torch.Tensor:
        """Normalised 1-D samples -> ``[T, conv_dim]`` float32 CPU conv features."""
        import torch

        return torch.from_numpy(self._conv(audio))

    def project(self, conv: torch.Tensor) -> torch.Tensor:
        """Identity: ``encoder.onnx`` starts with the projection, so it takes conv features."""
        return conv

    def encode(
        self, hidden: torch.Tensor, *, layer: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conv features ``[T, conv_dim]`` -> (float32 CPU log-probs ``[T, V]``, None)."""
        if layer is not None:
            raise ValueError(
                "hidden-state embeddings (layer / embed_layer) need the torch backend: the ONNX "
                "encoder only outputs log-probs"
            )
        import torch

        features = hidden.detach().to("cpu", torch.float32).numpy()
        return torch.from_numpy(self._encode(features)), None

    def encode_many(
        self, hiddens: list[torch.Tensor], *, layer: int | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """One :meth:`encode` per window: the exported encoder graph takes no padding mask."""
        return [self.encode(hidden, layer=layer) for hidden in hiddens]

    def log_probs(self, audio: np.ndarray) -> np.ndarray:
        """Offline one pass over a whole utterance: float32 ``[T, V]`` log-probabilities."""
        return self._encode(self._conv(self.normalize(audio)))


def _graph_paths(directory: Path, int8: bool | None) -> tuple[Path, Path]:
    """(conv, encoder) graph paths, with errors that say how to produce what is missing."""
    export = f"export one with `voiceloop asr export-onnx MODEL {directory}`"
    if not directory.is_dir():
        raise FileNotFoundError(f"no ONNX model directory {str(directory)!r}; {export}")
    conv, fp32, quantized = (directory / name for name in (CONV_FILE, ENCODER_FILE, ENCODER_INT8_FILE))
    graphs = [CONV_FILE] if not conv.is_file() else []
    if not (fp32.is_file() or quantized.is_file()):
        graphs.append(ENCODER_FILE)
    if graphs:
        torch_files = ("pytorch_model.bin", "model.safetensors")
        hint = (
            " (it looks like a PyTorch checkpoint: use --backend torch)"
            if any((directory / f).is_file() for f in torch_files)
            else ""
        )
        raise FileNotFoundError(f"{str(directory)!r} lacks {' and '.join(graphs)}{hint}; {export}")
    missing = [name for name in ("config.json", "vocab.json") if not (directory / name).is_file()]
    if not any(
        (directory / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")
    ):
        missing.append("preprocessor_config.json")
    if missing:
        raise FileNotFoundError(f"{str(directory)!r} lacks {', '.join(missing)}; re-{export}")
    if int8 is None:
        return conv, quantized if quantized.is_file() else fp32
    encoder = quantized if int8 else fp32
    if not encoder.is_file():
        how = f"re-export with `voiceloop asr export-onnx MODEL {directory}{' --int8' if int8 else ''}`"
        raise FileNotFoundError(f"{str(directory)!r} lacks {encoder.name}; {how}")
    return conv, encoder


def load_metadata(directory: Path) -> tuple[dict[str, Any], Vocabulary, Any]:
    """(config dict, vocabulary, feature extractor) from the non-weight files, read as the torch path does."""
    from transformers import Wav2Vec2Config, Wav2Vec2Processor

    from .model import Vocabulary

    # Through transformers, not raw JSON: keys a config.json omits get the architecture defaults.
    config = Wav2Vec2Config.from_pretrained(str(directory), local_files_only=True).to_dict()
    processor = Wav2Vec2Processor.from_pretrained(str(directory), local_files_only=True)
    head, pad = int(config["vocab_size"]), config.get("pad_token_id")
    vocab = Vocabulary.from_processor(processor.tokenizer, size=head, blank_id=pad)
    return config, vocab, processor.feature_extractor
