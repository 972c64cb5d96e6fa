"""A wav2vec2 CTC checkpoint split into the stages streaming needs: conv -> projection -> encoder.

Streaming caches the strictly local conv features and runs only the transformer per step, so the
stock ``Wav2Vec2ForCTC`` is driven stage by stage here: its own conv and projection modules, and
its encoder layers through :mod:`voiceloop.asr.encoder` (which adds cached left context and
unpadded multi-stream batches). Everything — geometry, vocabulary, normalisation — is read from
the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from packaging.version import Version
from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

from ..allocator import tune_for_inference
from ..compute import ModelOptions
from ..errors import UserError
from ..hub import hub_offline, looks_like_path
from ..quantize import int8_linears
from .base import DEFAULT_MODEL, conv_frames, normalize_audio
from .conv_features import MatmulConvFeatures
from .encoder import EncoderResult, EncoderStep, LeanEncoder

# transformers renamed `torch_dtype` to `dtype` in 4.56.
_DTYPE_KW = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


class ModelNotAvailable(UserError, RuntimeError):
    """The checkpoint can't be found locally and the hub can't (or may not) be reached."""


def _guidance(name: str, reason: str, exc: BaseException | None = None) -> str:
    if exc is not None:  # keep the first line: transformers' messages run long
        reason += ": " + (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    hub_id = DEFAULT_MODEL if looks_like_path(name) else name
    return (
        f"model {name!r} is not available: {reason}. To use a local directory instead, download it "
        f"elsewhere with `hf download {hub_id} --local-dir DIR` (older huggingface_hub: "
        f"`huggingface-cli download ...`), copy DIR here and pass it as the model (--asr DIR for run, "
        f"chat and serve; --model DIR for transcribe)"
    )


@dataclass
class Vocabulary:
    """CTC output ids -> text; specials never print, the word delimiter prints as a space."""

    tokens: list[str]
    blank_id: int
    delimiter: str | None
    special_ids: frozenset[int]

    def text(self, token_id: int) -> str:
        token = self.tokens[token_id]
        if self.delimiter is not None and token == self.delimiter:
            return " "
        return "" if token_id in self.special_ids else token

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_processor(cls, tokenizer: Any, *, size: int = 0, blank_id: int | None = None) -> Vocabulary:
        """Build from a ``Wav2Vec2CTCTokenizer``.

        ``size`` pads to the CTC head's width and ``blank_id`` overrides the pad token (the model
        config's ``pad_token_id`` is what CTC training used); unused ids become silent specials.
        """
        vocab: dict[str, int] = tokenizer.get_vocab()
        tokens = [""] * max(max(vocab.values()) + 1, size)
        for token, index in vocab.items():
            tokens[index] = token
        delimiter = getattr(tokenizer, "word_delimiter_token", None)
        delimiter = delimiter if delimiter in vocab else None
        blank = blank_id if blank_id is not None else tokenizer.pad_token_id or 0
        specials = {i for i in tokenizer.all_special_ids if i is not None} | {blank}
        specials |= {i for i, token in enumerate(tokens) if not token}
        if delimiter is not None:
            specials.discard(vocab[delimiter])
        return cls(tokens=tokens, blank_id=blank, delimiter=delimiter, special_ids=frozenset(specials))


class Wav2Vec2Checkpoint:
    """A loaded CTC model, shareable by many streams (stateless methods, inference_mode)."""

    def __init__(
        self,
        model: Wav2Vec2ForCTC,
        vocab: Vocabulary,
        *,
        name: str,
        sample_rate: int = 16000,
        do_normalize: bool = True,
        threads: int | None = None,
        int8_conv: bool = False,
    ) -> None:
        self.model = model.eval()
        self.vocab = vocab
        self.name = name
        self.sample_rate = int(sample_rate)
        self.do_normalize = bool(do_normalize)
        self.threads = threads
        config = model.config
        first = next(model.wav2vec2.feature_extractor.parameters())  # the conv encoder is never quantized
        self.device: torch.device = first.device
        self.dtype: torch.dtype = first.dtype
        if self.device.type == "cpu":
            tune_for_inference()  # streaming steps reuse MBs of buffers: keep them off the kernel
        self.conv_stride = math.prod(config.conv_stride)
        field, jump = 1, 1
        for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
            field, jump = field + (kernel - 1) * jump, jump * stride
        self.conv_receptive_field = field
        # GroupNorm ("group") normalises the first conv layer over time, so frames see the whole input.
        self.local_conv = config.feat_extract_norm == "layer"
        self.conv_dim = int(config.conv_dim[-1])
        self.hidden_size = int(config.hidden_size)
        self.num_layers = int(config.num_hidden_layers)
        self.vocab_size = int(config.vocab_size)
        self.encoder = LeanEncoder(model)
        #: the conv feature encoder as time-major matmuls (CPU, per-frame-norm checkpoints), int8
        #: with ``ModelOptions.int8_conv``; None: the stock module
        self.matmul_conv: MatmulConvFeatures | None = None
        feature_encoder = model.wav2vec2.feature_extractor
        if self.device.type == "cpu" and MatmulConvFeatures.supports(feature_encoder, config):
            self.matmul_conv = MatmulConvFeatures(feature_encoder, int8=int8_conv)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = DEFAULT_MODEL, options: ModelOptions | None = None
    ) -> Wav2Vec2Checkpoint:
        """Load a local directory or hub id.

        Hub ids come from the local cache when complete (no network round trip); otherwise one quick
        reachability check precedes the download, because huggingface_hub retries an unreachable
        hub for minutes. HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE mean cache only.
        """
        options = options or ModelOptions()
        device = options.resolve_device()
        source, is_local = _resolve_source(name_or_path)
        try:
            processor, loaded = _load(source, options, local_only=True)
        except _LOAD_ERRORS as exc:
            if is_local:
                raise ModelNotAvailable(_guidance(name_or_path, "cannot load the directory", exc)) from exc
            if hub_offline():
                reason = "not in the Hugging Face cache and offline mode is on (HF_HUB_OFFLINE)"
                raise ModelNotAvailable(_guidance(name_or_path, reason)) from exc
            _probe_hub(name_or_path)
            try:
                processor, loaded = _load(source, options, local_only=False)
            except _LOAD_ERRORS as exc2:
                raise ModelNotAvailable(_guidance(name_or_path, "download failed", exc2)) from exc2
        model, info = loaded
        _check_loading_info(name_or_path, info)
        model = model.to(device).eval().requires_grad_(False)
        if options.quantize == "int8":
            int8_linears(model, rows=44)  # a streaming step encodes C + R frames (44 by default)
        head, pad = model.config.vocab_size, model.config.pad_token_id
        vocab = Vocabulary.from_processor(processor.tokenizer, size=head, blank_id=pad)
        fe = processor.feature_extractor
        rate, norm, threads = fe.sampling_rate, fe.do_normalize, options.threads
        return cls(
            model,
            vocab,
            name=name_or_path,
            sample_rate=rate,
            do_normalize=norm,
            threads=threads,
            int8_conv=options.int8_conv,
        )

    def apply_threads(self) -> None:
        """Set torch's intra-op threads for the calling compute thread (no-op when not configured)."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    def normalize(self, audio: np.ndarray) -> np.ndarray:
        """Zero-mean unit-variance like ``Wav2Vec2FeatureExtractor`` (the model was trained on that)."""
        return normalize_audio(audio, self.do_normalize)

    def frames_for(self, n_samples: int) -> int:
        """Conv output frames for ``n_samples`` (the conv layers are unpadded)."""
        return conv_frames(n_samples, self.conv_receptive_field, self.conv_stride)

    @torch.inference_mode()
    def conv_features(self, audio: np.ndarray) -> torch.Tensor:
        """Normalised 1-D samples -> ``[T, conv_dim]`` conv features on the model's device/dtype."""
        samples = np.ascontiguousarray(audio, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"audio must be 1-D, got shape {samples.shape}")
        if self.frames_for(len(samples)) == 0:
            return torch.empty(0, self.conv_dim, device=self.device, dtype=self.dtype)
        batch = torch.from_numpy(samples).to(self.device, self.dtype)[None]
        if self.matmul_conv is not None:
            return self.matmul_conv(batch)
        return self.model.wav2vec2.feature_extractor(batch)[0].transpose(0, 1)

    @torch.inference_mode()
    def project(self, conv: torch.Tensor) -> torch.Tensor:
        """``[T, conv_dim]`` -> ``[T, hidden]`` (per frame: LayerNorm + Linear, so slices project alike)."""
        conv = conv.to(self.device, self.dtype)
        if conv.shape[0] == 0:
            return torch.empty(0, self.hidden_size, device=self.device, dtype=self.dtype)
        return self.model.wav2vec2.feature_projection(conv[None])[0][0]

    @torch.inference_mode()
    def encode(
        self, hidden: torch.Tensor, *, layer: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[T, hidden]`` -> (float32 CPU log-probs ``[T, V]``, optional hidden state of ``layer``).

        ``layer`` uses transformers' ``hidden_states`` numbering: 0 is the encoder's input to its
        first block (after the positional conv), ``i`` the output of block ``i`` (1-based, before any
        final encoder LayerNorm), negative values count from the end (-1 = output of the last block).
        """
        return self.encode_many([hidden], layer=layer)[0]

    def encode_many(
        self, hiddens: list[torch.Tensor], *, layer: int | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """:meth:`encode` for several windows in one encoder pass (several streams' steps at once).

        Windows of unequal length are not padded: the linears run over all rows together and each
        window attends only to itself, so each row computes what it would alone (up to float
        rounding; int8 dynamic quantization scales activations per call).
        """
        steps = [EncoderStep(h.to(self.device, self.dtype)) for h in hiddens]
        return [(r.log_probs, r.layer_state) for r in self.encode_steps(steps, layer=layer)]

    def encode_steps(
        self, steps: list[EncoderStep], *, layer: int | None = None, key_values: bool = False
    ) -> list[EncoderResult]:
        """Streaming encoder steps: positional context, cached keys/values of earlier frames (see
        :mod:`voiceloop.asr.encoder`); ``key_values`` returns the new frames' keys/values too."""
        index = None if layer is None else self._layer_index(layer)
        return self.encoder.run(steps, layer=index, key_values=key_values)

    def log_probs(self, audio: np.ndarray) -> np.ndarray:
        """Offline one pass over a whole utterance: float32 ``[T, V]`` log-probabilities."""
        hidden = self.project(self.conv_features(self.normalize(audio)))
        return self.encode(hidden)[0].numpy()

    def _layer_index(self, layer: int) -> int:
        count = self.num_layers + 1
        if isinstance(layer, bool) or not isinstance(layer, int) or not -count <= layer < count:
            raise ValueError(f"layer must be an int in [{-count}, {count - 1}], got {layer!r}")
        return layer % count


def _resolve_source(name: str) -> tuple[str, bool]:
    """(what to hand transformers, whether it is a local directory); paths are checked here."""
    path = Path(name).expanduser()
    if path.is_dir():
        missing = [f for f in ("config.json", "vocab.json") if not (path / f).is_file()]
        if missing:  # without vocab.json the tokenizer fails with a bare TypeError
            raise ModelNotAvailable(_guidance(name, f"directory {str(path)!r} lacks {', '.join(missing)}"))
        return str(path), True
    if path.exists() or looks_like_path(name):
        raise ModelNotAvailable(_guidance(name, f"no such local directory {str(path)!r}"))
    return name, False


_LOAD_ERRORS = (OSError, HfHubHTTPError, HFValidationError)


def _load(source: str, options: ModelOptions, *, local_only: bool) -> tuple[Wav2Vec2Processor, Any]:
    """Processor, then (model, loading info) through the stock transformers classes."""
    processor = Wav2Vec2Processor.from_pretrained(source, local_files_only=local_only)
    loaded = Wav2Vec2ForCTC.from_pretrained(
        source, local_files_only=local_only, output_loading_info=True, **{_DTYPE_KW: options.torch_dtype}
    )
    return processor, loaded


def _probe_hub(name: str) -> None:
    """One short request (no retries) so an unreachable hub or unknown id fails in seconds."""
    try:
        HfApi().model_info(name, timeout=10)
    except Exception as exc:  # any failure here means the download below cannot work either
        reason = "not in the Hugging Face cache, and the hub check failed"
        raise ModelNotAvailable(_guidance(name, reason, exc)) from exc


def _check_loading_info(name: str, info: dict[str, Any]) -> None:
    """Refuse a checkpoint whose weights don't match the architecture instead of running random layers."""
    problems = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        entries = sorted(str(entry) for entry in info.get(key) or ())
        if entries:
            problems.append(f"{key.replace('_', ' ')}: {', '.join(entries)}")
    problems += [str(message) for message in info.get("error_msgs") or ()]
    if problems:
        raise ValueError(f"checkpoint {name!r} does not match Wav2Vec2ForCTC; " + "; ".join(problems))
