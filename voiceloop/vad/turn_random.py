"""Random-weight Smart Turn v3 graphs in the released file layout, for tests and benchmarks.

Same architecture and compute as the real model (Whisper-tiny encoder: 4 layers, width 384,
6 heads, FFN 1536, 400 positions; attention pooling 384→256→1; classifier 384→256, LayerNorm,
GELU, 256→64, GELU, 64→1; sigmoid), exported to ONNX with the official input name and shape.
``bias`` shifts the final logit: +8 makes a model that hears every turn as complete, -8 none.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

from .smart_turn import DEFAULT_FILE, MEL_BINS, MEL_FRAMES


def build_module(
    *, layers: int = 4, width: int = 384, heads: int = 6, ffn: int = 1536, bias: float = 0.0, seed: int = 0
):
    """The torch module (random weights) that :func:`write_random_smart_turn` exports."""
    import torch
    from torch import nn
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(seed)
    config = WhisperConfig(
        num_mel_bins=MEL_BINS,
        d_model=width,
        encoder_layers=layers,
        encoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        max_source_positions=MEL_FRAMES // 2,
        decoder_layers=1,
    )

    class SmartTurn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = WhisperEncoder(config)
            self.pool_attention = nn.Sequential(nn.Linear(width, 256), nn.Tanh(), nn.Linear(256, 1))
            self.classifier = nn.Sequential(
                nn.Linear(width, 256),
                nn.LayerNorm(256),
                nn.GELU(),
                nn.Dropout(0.1),
                nn.Linear(256, 64),
                nn.GELU(),
                nn.Dropout(0.1),
                nn.Linear(64, 1),
            )
            with torch.no_grad():
                self.classifier[-1].bias.fill_(bias)

        def forward(self, input_features: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_features).last_hidden_state  # [B, 400, width]
            weights = torch.softmax(self.pool_attention(hidden), dim=1)
            pooled = (hidden * weights).sum(dim=1)
            return torch.sigmoid(self.classifier(pooled))

    return SmartTurn().eval()


def write_random_smart_turn(
    directory: str | Path, *, filename: str = DEFAULT_FILE, int8: bool | None = None, **kwargs
) -> Path:
    """Export a random Smart Turn graph as ``directory/filename``; returns the file's path.

    ``int8`` (default: when the name ends in ``-cpu.onnx``, like the released CPU build) applies
    onnxruntime's dynamic int8 quantization to the weights, so the graph costs what the real one does.
    """
    import torch

    module = build_module(**kwargs)
    path = Path(directory) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    if int8 is None:
        int8 = filename.endswith("-cpu.onnx")
    target, path = path, (path.with_suffix(".fp32.onnx") if int8 else path)
    extra = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer notes
        torch.onnx.export(
            module,
            (torch.zeros(1, MEL_BINS, MEL_FRAMES),),
            str(path),
            input_names=["input_features"],
            output_names=["probability"],
            dynamic_axes={"input_features": {0: "batch"}, "probability": {0: "batch"}},
            opset_version=17,
            do_constant_folding=True,
            **extra,
        )
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(path), str(target), weight_type=QuantType.QInt8)
        path.unlink()
    return target
