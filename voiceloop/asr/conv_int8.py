"""The conv feature encoder with int8 matmuls (``ModelOptions(quantize="int8", int8_conv=True)``).

``quantize_dynamic`` covers ``nn.Linear`` only, so the seven conv layers (about a sixth of a
streaming step) stayed float32: torch's conv1d ran them at ~65 GMAC/s on 2 AVX2 cores, where a
dynamic int8 matmul of the same size runs at ~110. Each conv layer here is that matmul: the
layer's input windows (kernel x channels, strided by the conv stride) as rows, times the conv
weight flattened to ``[out, kernel * in]``. The stack runs time-major, so the "layer" norm (over
channels) needs no transposes. The first layer (one input channel, kernel 10) stays a float32
conv1d: its matmul would be ten wide.

Only checkpoints whose conv layers are normalised per frame (``feat_extract_norm="layer"``, the
default model's) take this path; it rounds activations to 8 bits per call as the linears do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..quantize import int8_linears


class Int8ConvFeatures:
    """Shares the checkpoint's norms and activations; holds int8 copies of conv layers 1..n."""

    def __init__(self, feature_encoder: nn.Module) -> None:
        layers = list(feature_encoder.conv_layers)
        self.first = layers[0]
        self.layers: list[tuple[nn.Module, nn.Module, int, int, nn.Module]] = []
        for layer in layers[1:]:
            conv: nn.Conv1d = layer.conv
            kernel, stride = int(conv.kernel_size[0]), int(conv.stride[0])
            out_ch, in_ch, _ = conv.weight.shape
            linear = nn.Linear(kernel * in_ch, out_ch, bias=conv.bias is not None)
            with torch.no_grad():  # rows hold (tap, channel) pairs, tap-major
                linear.weight.copy_(conv.weight.permute(0, 2, 1).reshape(out_ch, kernel * in_ch))
                if conv.bias is not None:
                    linear.bias.copy_(conv.bias)
            quantized = int8_linears(nn.Sequential(linear), rows=400)[0]
            self.layers.append((quantized, layer.layer_norm, kernel, stride, layer.activation))

    @staticmethod
    def supports(feature_encoder: nn.Module, config: object) -> bool:
        """Per-frame ("layer") norm in every conv layer: what this stack reproduces."""
        return getattr(config, "feat_extract_norm", None) == "layer" and len(feature_encoder.conv_layers) > 1

    @torch.inference_mode()
    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        """``[1, samples]`` float32 -> ``[frames, channels]`` (time-major, as ``conv_features``)."""
        x = self.first(samples[:, None])[0].transpose(0, 1).contiguous()  # [T, C]
        for linear, norm, kernel, stride, activation in self.layers:
            frames = (x.shape[0] - kernel) // stride + 1
            if frames <= 0:
                return x.new_empty(0, x.shape[1])
            channels = x.shape[1]
            rows = x.as_strided((frames, kernel * channels), (stride * channels, 1))
            x = activation(
                F.layer_norm(linear(rows), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
            )
        return x
