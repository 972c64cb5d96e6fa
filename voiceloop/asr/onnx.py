"""ONNX export of a wav2vec2 CTC checkpoint, and an onnxruntime backend for the streaming engine.

The export is split where :class:`~voiceloop.asr.model.Wav2Vec2Checkpoint` is split, so
:class:`~voiceloop.asr.streaming.Wav2Vec2Engine` runs on it unchanged, conv caching included:

* ``conv.onnx``: normalised audio ``[1, samples]`` -> conv features ``[1, frames, conv_dim]``;
* ``encoder.onnx``: conv features ``[1, frames, conv_dim]`` -> float32 log-probs ``[1, frames, V]``
  (feature projection + transformer + CTC head + log_softmax); ``encoder.int8.onnx`` is its
  dynamically quantized twin (``--int8``).

Both time axes are dynamic. Normalisation stays in Python because the streaming engine freezes
the statistics per utterance. The output directory also gets the config and processor files
(the vocabulary loads without the torch weights) and ``onnx_export.json``, which records the
source, versions and the log-prob difference to torch measured at export time.

torch, transformers and onnxruntime are imported only when used: ``voiceloop --help`` imports
this module to register ``voiceloop asr export-onnx``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError
from .base import conv_frames, normalize_audio

if TYPE_CHECKING:
    import onnxruntime
    import torch

    from .model import Vocabulary, Wav2Vec2Checkpoint

CONV_FILE = "conv.onnx"
ENCODER_FILE = "encoder.onnx"
ENCODER_INT8_FILE = "encoder.int8.onnx"
REPORT_FILE = "onnx_export.json"
#: Everything but the weights that ``Wav2Vec2Processor`` / ``Wav2Vec2Config`` may read.
METADATA_FILES = (
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
)
#: The TorchScript exporter's range; 17 is the first opset with a native LayerNormalization.
MIN_OPSET, MAX_OPSET = 17, 20
#: Probe for the export-time parity check: a length unlike the 1 s tracing example.
PROBE_SECONDS = 2.34
#: An fp32 export further than this from torch is broken (numerical noise is ~1e-6), not imprecise.
FP32_TOLERANCE = 1e-2


class OnnxRuntimeMissing(UserError, ImportError):
    """onnxruntime is an optional extra; the CLI prints this as one line that says how to install it."""


def _import_onnxruntime() -> Any:
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


# -- runtime -------------------------------------------------------------------------------------


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
        ort = _import_onnxruntime()
        directory = Path(path).expanduser()
        conv_path, encoder_path = _graph_paths(directory, int8)
        config, vocab, extractor = _load_metadata(directory)
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


def _load_metadata(directory: Path) -> tuple[dict[str, Any], Vocabulary, Any]:
    """(config dict, vocabulary, feature extractor) from the non-weight files, read as the torch path does."""
    from transformers import Wav2Vec2Config, Wav2Vec2Processor

    from .model import Vocabulary

    # Through transformers, not raw JSON: keys a config.json omits get the architecture defaults.
    config = Wav2Vec2Config.from_pretrained(str(directory), local_files_only=True).to_dict()
    processor = Wav2Vec2Processor.from_pretrained(str(directory), local_files_only=True)
    head, pad = int(config["vocab_size"]), config.get("pad_token_id")
    vocab = Vocabulary.from_processor(processor.tokenizer, size=head, blank_id=pad)
    return config, vocab, processor.feature_extractor


# -- export --------------------------------------------------------------------------------------


def _graph_modules(checkpoint: Wav2Vec2Checkpoint) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The two exported stages as modules over the stock submodules (nothing re-implemented)."""
    import torch
    from torch import nn

    model = checkpoint.model

    class ConvGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.feature_extractor = model.wav2vec2.feature_extractor

        def forward(self, audio: torch.Tensor) -> torch.Tensor:
            return self.feature_extractor(audio).transpose(1, 2)

    class EncoderGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wav2vec2, self.lm_head = model.wav2vec2, model.lm_head

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            hidden = self.wav2vec2.feature_projection(features)[0]
            states = self.wav2vec2.encoder(hidden)[0]
            if self.wav2vec2.adapter is not None:
                states = self.wav2vec2.adapter(states)
            return torch.log_softmax(self.lm_head(states).float(), dim=-1)

    # eval() matters beyond dropout: the exporter restores each module's training flag afterwards,
    # and a wrapper left in training mode would switch the shared model to training on exit.
    return ConvGraph().eval(), EncoderGraph().eval()


def _torch_export(
    module: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, io: tuple[str, str]
) -> None:
    """TorchScript-tracing export with a dynamic time axis (see :func:`export_onnx` for why)."""
    import torch

    source, target = io
    axis = "samples" if source == "audio" else "frames"
    kwargs: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # torch >= 2.9 defaults to the torch.export-based exporter
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated
        # transformers' sdpa helper turns a shape comparison into a bool while tracing; it is
        # constant (no attention mask, not causal) for every length, which the parity check confirms.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[source],
            output_names=[target],
            dynamic_axes={source: {1: axis}, target: {1: "frames"}},
            opset_version=opset,
            do_constant_folding=True,
            **kwargs,
        )


def _copy_metadata(model: str, out: Path) -> None:
    """Copy config, tokenizer and preprocessor files verbatim (exactly what the torch path loads).

    Verbatim rather than ``save_pretrained``: re-saving rewrites the layout for the installed
    transformers version, which older versions may not read back. Hub ids come from the cache,
    which loading the checkpoint has just filled.
    """
    local = Path(model).expanduser()
    if local.is_dir():
        source = local
    else:
        from huggingface_hub import snapshot_download

        source = Path(snapshot_download(model, local_files_only=True, allow_patterns=list(METADATA_FILES)))
    if source.resolve() == out.resolve():
        return  # exporting next to the torch weights: the files are already there
    for name in METADATA_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)


def _probe_audio(sample_rate: int, seconds: float, seed: int) -> np.ndarray:
    """Deterministic noise with a syllable-rate envelope: the parity check needs varied frames, not speech."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    envelope = np.abs(np.sin(np.arange(n) / sample_rate * np.pi * 3)) + 0.1
    return (rng.normal(0.0, 0.1, n) * envelope).astype(np.float32)


def _parity(
    reference: np.ndarray, vocab: Vocabulary, directory: Path, audio: np.ndarray, *, int8: bool
) -> dict[str, Any]:
    """Max |log-prob difference| of the exported graphs vs torch's, and whether greedy text agrees."""
    from .ctc import greedy_decode

    exported = OnnxCheckpoint.from_directory(directory, int8=int8).log_probs(audio)
    if reference.shape != exported.shape:
        raise RuntimeError(
            f"ONNX output shape {exported.shape} != torch {reference.shape}: the export is broken"
        )
    diff = float(np.abs(reference - exported).max()) if reference.size else 0.0
    same = greedy_decode(reference, vocab)[0] == greedy_decode(exported, vocab)[0]
    return {"max_abs_log_prob_diff": diff, "greedy_equal": bool(same)}


def export_onnx(
    model: str, out_dir: str | Path, *, int8: bool = False, opset: int = MIN_OPSET
) -> dict[str, Any]:
    """Export ``model`` (hub id or directory) to ``out_dir``; returns the report also saved as JSON.

    Uses torch's TorchScript-tracing exporter (``dynamo=False``): the torch.export-based default
    needs the separate onnxscript package, while tracing plus ``dynamic_axes`` yields graphs that
    are correct at every length (checked here on a probe of a different length than the trace).
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be an integer from {MIN_OPSET} to {MAX_OPSET}, got {opset!r}")
    ort = _import_onnxruntime()
    import torch
    import transformers

    from .model import ModelOptions, Wav2Vec2Checkpoint

    out = Path(out_dir).expanduser()
    checkpoint = Wav2Vec2Checkpoint.from_pretrained(model, ModelOptions(device="cpu", dtype="fp32"))
    out.mkdir(parents=True, exist_ok=True)
    for stale in (REPORT_FILE, ENCODER_INT8_FILE):  # a failed re-export must not look like a good one
        (out / stale).unlink(missing_ok=True)
    _copy_metadata(model, out)
    _, vocab, _ = _load_metadata(out)
    if vocab != checkpoint.vocab:
        raise RuntimeError(f"the vocabulary copied to {out} does not load like the source's; please report")

    conv_graph, encoder_graph = _graph_modules(checkpoint)
    example = torch.from_numpy(checkpoint.normalize(_probe_audio(checkpoint.sample_rate, 1.0, seed=1)))[None]
    _torch_export(conv_graph, example, out / CONV_FILE, opset, ("audio", "features"))
    with torch.no_grad():
        features = conv_graph(example)
    _torch_export(encoder_graph, features, out / ENCODER_FILE, opset, ("features", "log_probs"))

    probe = _probe_audio(checkpoint.sample_rate, PROBE_SECONDS, seed=2)
    reference = checkpoint.log_probs(probe)
    fp32 = _parity(reference, vocab, out, probe, int8=False)
    if fp32["max_abs_log_prob_diff"] > FP32_TOLERANCE:
        raise RuntimeError(
            f"the fp32 ONNX graphs differ from torch by {fp32['max_abs_log_prob_diff']:.3g} in log-prob "
            f"(> {FP32_TOLERANCE}): the export is wrong for this model, do not use {out}"
        )
    quantized = None
    if int8:
        _quantize(out / ENCODER_FILE, out / ENCODER_INT8_FILE)
        quantized = _parity(reference, vocab, out, probe, int8=True)

    import onnx

    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != REPORT_FILE)
    report: dict[str, Any] = {
        "source": model,
        "opset": opset,
        "int8": int8,
        "exporter": "torch.onnx.export, TorchScript tracing (dynamo=False), dynamic time axis",
        "graphs": {
            CONV_FILE: "audio [1, samples] (normalised) -> features [1, frames, conv_dim]",
            ENCODER_FILE: "features [1, frames, conv_dim] -> log_probs [1, frames, vocab] (float32)",
            **(
                {ENCODER_INT8_FILE: "encoder.onnx, MatMul weights int8 (7-bit range), dynamic quantization"}
                if int8
                else {}
            ),
        },
        "files": {p.name: p.stat().st_size for p in files},
        "probe_seconds": PROBE_SECONDS,
        "max_abs_log_prob_diff": fp32["max_abs_log_prob_diff"],
        "greedy_equal": fp32["greedy_equal"],
        "int8_max_abs_log_prob_diff": None if quantized is None else quantized["max_abs_log_prob_diff"],
        "int8_greedy_equal": None if quantized is None else quantized["greedy_equal"],
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


class _DropPreprocessAdvice(logging.Filter):
    """quantize_dynamic always logs advice to run its pre-processing (not needed here) on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _quantize(source: Path, target: Path) -> None:
    """int8 weights for the encoder's MatMuls (activations quantized on the fly, per call).

    ``reduce_range`` (7-bit weights) avoids the int16 saturation of the u8*s8 kernels on CPUs
    without VNNI (AVX2); on the test model it cut the log-prob error about tenfold. The conv graph
    stays float32: with conv caching its cost is paid once per audio frame, not once per window.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = _DropPreprocessAdvice()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(
            source, target, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8, reduce_range=True
        )
    finally:
        logging.getLogger().removeFilter(quiet)


# -- command line --------------------------------------------------------------------------------


def _size(n_bytes: int) -> str:
    if n_bytes < 1024:
        return f"{n_bytes} B"
    size = n_bytes / 1024
    for unit in ("KB", "MB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.2f} GB"


def cmd_export_onnx(args: argparse.Namespace) -> int:
    """``voiceloop asr export-onnx``: export, then print the files and the parity numbers."""
    report = export_onnx(args.model, args.out_dir, int8=args.int8, opset=args.opset)
    print(f"exported {report['source']} to {args.out_dir} (opset {report['opset']})")
    for name, size in report["files"].items():
        print(f"  {name:<28} {_size(size):>10}")
    print(f"  {REPORT_FILE:<28} (this report)")
    diff, same = report["max_abs_log_prob_diff"], report["greedy_equal"]
    print(f"max |log-prob diff| vs torch on a {PROBE_SECONDS} s probe: fp32 {diff:.3g}", end="")
    print(f" (greedy text {'equal' if same else 'DIFFERENT'})")
    if report["int8"]:
        print(
            f"  int8 encoder: {report['int8_max_abs_log_prob_diff']:.3g}"
            f" (greedy text {'equal' if report['int8_greedy_equal'] else 'different'}); "
            f"--backend onnx uses {ENCODER_INT8_FILE}"
        )
    print(f"use it: voiceloop transcribe --backend onnx --model {args.out_dir} FILE")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``export-onnx`` under ``voiceloop asr``."""
    parser = subparsers.add_parser(
        "export-onnx", help="export a checkpoint to ONNX (conv + encoder graphs) for --backend onnx"
    )
    parser.add_argument("model", metavar="MODEL", help="hub id or local checkpoint directory")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="output directory (created)")
    parser.add_argument(
        "--int8",
        action="store_true",
        help=f"also write {ENCODER_INT8_FILE} (int8 MatMul weights); --backend onnx then uses it",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=MIN_OPSET,
        help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (default %(default)s)",
    )
    parser.set_defaults(func=cmd_export_onnx)
    return parser
