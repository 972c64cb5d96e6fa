"""The conv feature encoder as strided matmuls, time-major (CPU streaming and offline passes).

The stock module runs each of the seven conv layers channel-major and transposes around every
per-frame LayerNorm, so each layer copies its whole activation twice (``[1, 512, T]`` clones to
feed the next conv): on a streaming step's 0.64 s of new audio those copies were a large share of
the conv stack's time. Here each conv layer is one matmul instead: the layer's input windows
(kernel x channels, strided by the conv stride, read in place from the time-major activation) as
rows, times the conv weight flattened to ``[kernel * in, out]``; the norm runs over channels
without transposes. Same arithmetic up to float summation order, and faster on 2 cores (the step
and offline costs: ``benchmarks/asr_streaming.py``).

With ``int8=True`` (``ModelOptions(quantize="int8", int8_conv=True)``) the matmuls are dynamic
int8 as the encoder's linears are (on 2 AVX2 cores an int8 matmul of a layer's size ran well
above torch's conv1d rate); it rounds activations to 8 bits per call, so it stays opt-in. The
first layer (one input channel, kernel 10) stays a conv1d: its matmul would be ten wide. Only
checkpoints whose conv layers are normalised per frame (``feat_extract_norm="layer"``, the default
model's) take this path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..quantize import int8_linears


class MatmulConvFeatures:
    """Shares the checkpoint's norms and activations; holds matmul copies of conv layers 1..n.

    The copies are taken once, here: after training the conv layers, load a new checkpoint.
    """

    def __init__(self, feature_encoder: nn.Module, *, int8: bool = False) -> None:
        layers = list(feature_encoder.conv_layers)
        self.int8 = int8
        self.first = layers[0]
        self.layers: list[tuple[nn.Module, nn.Module, int, int, nn.Module]] = []
        for layer in layers[1:]:
            conv: nn.Conv1d = layer.conv
            kernel, stride = int(conv.kernel_size[0]), int(conv.stride[0])
            out_ch, in_ch, _ = conv.weight.shape
            linear = nn.Linear(
                kernel * in_ch, out_ch, bias=conv.bias is not None, device=conv.weight.device
            ).to(conv.weight.dtype)
            with torch.no_grad():  # rows hold (tap, channel) pairs, tap-major
                linear.weight.copy_(conv.weight.permute(0, 2, 1).reshape(out_ch, kernel * in_ch))
                if conv.bias is not None:
                    linear.bias.copy_(conv.bias)
            linear.requires_grad_(False)
            if int8:
                linear = int8_linears(nn.Sequential(linear), rows=400)[0]
            self.layers.append((linear, layer.layer_norm, kernel, stride, layer.activation))

    @staticmethod
    def supports(feature_encoder: nn.Module, config: object) -> bool:
        """Per-frame ("layer") norm in every conv layer: what this stack reproduces."""
        return getattr(config, "feat_extract_norm", None) == "layer" and len(feature_encoder.conv_layers) > 1

    @torch.inference_mode()
    def __call__(self, samples: torch.Tensor) -> torch.Tensor:
        """``[1, samples]`` -> ``[frames, channels]`` (time-major, as ``conv_features``)."""
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
