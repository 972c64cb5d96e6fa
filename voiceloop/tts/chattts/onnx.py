"""ONNX export of the hidden-state decode path, and an onnxruntime runner with the torch interface.

The graph is ``Decoder`` + Vocos backbone + head up to the spectrum: hidden states
``[B, T, 768]`` → ``magnitude`` and ``phase`` ``[B, 513, 2T]`` (batch and time axes dynamic). The
ISTFT stays outside (``torch.istft`` does not export): :class:`OnnxDecoder` runs it in numpy
(:func:`~voiceloop.tts.chattts.vocos.istft_numpy`), so inference needs onnxruntime and numpy only.
The sidecar ``chattts_decoder_onnx.json`` holds the ISTFT window and hop, the receptive field (for
:class:`~voiceloop.tts.chattts.stream_decode.StreamingDecoder` context sizing) and the wave
difference to torch measured at export time.

torch is imported only by the exporter; onnxruntime only by the runner.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import UserError
from .assets import DECODER, VOCOS
from .decoder import DecodeInputError
from .vocos import istft_numpy

if TYPE_CHECKING:
    import torch

    from .decoder import HiddenDecoder
    from .vocos import Vocos

ONNX_FILE = "chattts_decoder.onnx"
REPORT_FILE = "chattts_decoder_onnx.json"
#: The TorchScript exporter's range; 17 is the first opset with a native LayerNormalization.
MIN_OPSET, MAX_OPSET = 17, 20
#: An fp32 export further than this from torch (in wave samples) is broken, not imprecise.
FP32_TOLERANCE = 1e-3
PROBE_STEPS = 37


class OnnxRuntimeMissing(UserError, ImportError):
    """onnxruntime is an optional extra."""


class OnnxExportError(UserError, ValueError):
    """Bad export arguments, or an export whose output disagrees with torch."""


class OnnxModelError(UserError, ValueError):
    """An export directory without the graph or its sidecar."""


def _check_opset(opset: object) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxExportError(f"opset must be an integer from {MIN_OPSET} to {MAX_OPSET}, got {opset!r}")


def _spectrum_graph(decoder: HiddenDecoder, vocos: Vocos) -> torch.nn.Module:
    import torch

    class SpectrumGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder, self.vocos = decoder, vocos

        def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.vocos.spectrum(self.decoder(hidden))

    return SpectrumGraph().eval()


def export_onnx(model_root: Path, out_dir: Path, opset: int = MIN_OPSET) -> Path:
    """Export ``asset/Decoder.safetensors`` + ``asset/Vocos.safetensors`` under ``model_root``.

    Writes ``out_dir/chattts_decoder.onnx`` and its JSON sidecar; returns the ``.onnx`` path.
    Uses the TorchScript-tracing exporter (``dynamo=False``: the torch.export-based one needs the
    separate onnxscript package).
    """
    from .decoder import HiddenDecoder
    from .vocos import Vocos

    _check_opset(opset)
    root = Path(model_root).expanduser()
    decoder = HiddenDecoder.from_file(root / DECODER)
    vocos = Vocos.from_file(root / VOCOS)
    return export_modules(decoder, vocos, Path(out_dir), opset=opset, source=str(root))


def export_modules(
    decoder: HiddenDecoder, vocos: Vocos, out_dir: Path, opset: int = MIN_OPSET, source: str = ""
) -> Path:
    """Export already-loaded fp32 modules (see :func:`export_onnx`) and check parity with torch."""
    import torch

    from .stream_decode import WaveDecoder, exact_context

    _check_opset(opset)
    decoder, vocos = decoder.float().cpu().eval(), vocos.float().cpu().eval()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    path = out / ONNX_FILE
    example = torch.zeros(1, 16, decoder.step_dim)
    kwargs: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # torch >= 2.9 defaults to the torch.export-based exporter
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # input checks: constant for valid shapes
        torch.onnx.export(
            _spectrum_graph(decoder, vocos),
            (example,),
            str(path),
            input_names=["hidden"],
            output_names=["magnitude", "phase"],
            dynamic_axes={
                "hidden": {0: "batch", 1: "steps"},
                "magnitude": {0: "batch", 2: "frames"},
                "phase": {0: "batch", 2: "frames"},
            },
            opset_version=opset,
            do_constant_folding=True,
            **kwargs,
        )
    report = {
        "source": source,
        "opset": opset,
        "torch": torch.__version__,
        "exporter": "torch.onnx.export, TorchScript tracing (dynamo=False), dynamic batch and time axes",
        "step_dim": decoder.step_dim,
        "n_fft": vocos.head.n_fft,
        "hop_length": vocos.head.hop_length,
        "sample_rate": vocos.sample_rate,
        "context_steps": exact_context(decoder, vocos),
        "window": [float(v) for v in vocos.head.istft.window.float().numpy()],
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    probe = torch.randn(PROBE_STEPS, decoder.step_dim, generator=torch.Generator().manual_seed(0))
    expected = WaveDecoder(decoder, vocos).decode(probe)
    got = OnnxDecoder(path).decode(probe.numpy())
    diff = float(np.abs(got - expected).max())
    report["probe_steps"], report["max_abs_diff"] = PROBE_STEPS, diff
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if not diff <= FP32_TOLERANCE:
        raise OnnxExportError(
            f"ONNX wave differs from torch by {diff:.3g} (> {FP32_TOLERANCE}); export broken"
        )
    return path


class OnnxDecoder:
    """Hidden states → 24 kHz float32 wave on onnxruntime (CPU): the ``decode`` of the torch path.

    ``decode`` is a valid ``decode_fn`` for :class:`~voiceloop.tts.chattts.stream_decode.StreamingDecoder`.
    Sessions are thread-safe, so one instance serves many streams.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise OnnxRuntimeMissing(
                "the ONNX decoder needs onnxruntime: pip install 'voiceloop[onnx]'"
            ) from exc
        file = Path(path).expanduser()
        if file.is_dir():
            file = file / ONNX_FILE
        sidecar = file.with_name(REPORT_FILE)
        if not file.is_file() or not sidecar.is_file():
            raise OnnxModelError(
                f"{file}: missing {file.name} or {REPORT_FILE}; run the ChatTTS ONNX export first"
            )
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        self.step_dim = int(meta["step_dim"])
        self.hop_length = int(meta["hop_length"])
        self.sample_rate = int(meta["sample_rate"])
        self.window = np.asarray(meta["window"], dtype=np.float32)
        #: Steps of left/right context that make streaming exact (the torch receptive field).
        self.context = int(meta["context_steps"])
        self.report = meta
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])

    def spectrum(self, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """hidden [B, T, step_dim] → (magnitude, phase) [B, n_fft/2+1, 2T]."""
        mag, phase = self.session.run(None, {"hidden": np.ascontiguousarray(hidden, dtype=np.float32)})
        return mag, phase

    def decode(self, hidden: Any) -> np.ndarray:
        """hidden [T, step_dim] or [B, T, step_dim] → wave [512·T − 256] or [B, 512·T − 256]."""
        if hasattr(hidden, "detach"):
            hidden = hidden.detach().cpu().float().numpy()
        rows = np.asarray(hidden, dtype=np.float32)
        single = rows.ndim == 2
        batch = rows[None] if single else rows
        if batch.ndim != 3 or batch.shape[-1] != self.step_dim or batch.shape[1] == 0:
            raise DecodeInputError(
                f"hidden states must be [T, {self.step_dim}] or [B, T, {self.step_dim}] with T >= 1, "
                f"got {rows.shape}"
            )
        wave = istft_numpy(*self.spectrum(batch), self.window, self.hop_length)
        return wave[0] if single else wave

    __call__ = decode
