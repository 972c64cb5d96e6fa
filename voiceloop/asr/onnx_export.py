"""``voiceloop asr export-onnx``: a wav2vec2 CTC checkpoint exported as the graphs :mod:`.onnx` runs.

Two graphs, ``conv.onnx`` and ``encoder.onnx`` (``encoder.int8.onnx`` with ``--int8``), plus the
config and processor files copied verbatim and ``onnx_export.json``: the source, the versions and
the log-prob difference to torch measured on a probe at export time (a broken export fails here,
not at serving time). torch, transformers and onnxruntime are imported only when used.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .onnx import (
    CONV_FILE,
    ENCODER_FILE,
    ENCODER_INT8_FILE,
    OnnxCheckpoint,
    import_onnxruntime,
    load_metadata,
)

if TYPE_CHECKING:
    import torch

    from .model import Vocabulary, Wav2Vec2Checkpoint

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
    ort = import_onnxruntime()
    import torch
    import transformers

    from .model import ModelOptions, Wav2Vec2Checkpoint

    out = Path(out_dir).expanduser()
    checkpoint = Wav2Vec2Checkpoint.from_pretrained(model, ModelOptions(device="cpu", dtype="fp32"))
    out.mkdir(parents=True, exist_ok=True)
    for stale in (REPORT_FILE, ENCODER_INT8_FILE):  # a failed re-export must not look like a good one
        (out / stale).unlink(missing_ok=True)
    _copy_metadata(model, out)
    _, vocab, _ = load_metadata(out)
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
