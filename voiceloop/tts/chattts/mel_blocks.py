"""Building blocks shared by ChatTTS's two mel decoders (:mod:`.decoder`, :mod:`.dvae`) and Vocos.

The ConvNeXt block and stack (ChatTTS's ``DVAEDecoder``), log-mel features on ``torch.stft`` with the
official window and filterbank buffers, the typed input error, and the helpers that read a
safetensors asset and size a stack from its tensor shapes. Split out so each model file holds one
model; module and parameter names follow the official files key for key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .assets import AssetError


class DecodeInputError(ValueError):
    """Decoder input of the wrong shape, type or value range."""


class ConvNeXtBlock(nn.Module):
    """1-D ConvNeXt block: depthwise (dilated) conv → per-frame LayerNorm → MLP → layer scale, residual.

    ``scale_name`` is the layer-scale parameter's key: ChatTTS's decoders call it ``weight``, Vocos
    ``gamma``. LayerNorm is per frame, so a frame's output depends only on its conv neighbourhood.
    """

    def __init__(
        self, dim: int, intermediate: int, kernel: int = 7, dilation: int = 1, scale_name: str = "weight"
    ) -> None:
        super().__init__()
        pad = dilation * (kernel // 2)
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=pad, dilation=dilation, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate, dim)
        self.scale_name = scale_name
        self.register_parameter(scale_name, nn.Parameter(torch.ones(dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).transpose(1, 2))
        y = self.pwconv2(self.act(self.pwconv1(y))) * getattr(self, self.scale_name)
        return x + y.transpose(1, 2)


class ConvNeXtStack(nn.Module):
    """ChatTTS's ``DVAEDecoder``: [B, idim, L] → [B, odim, L], same length (all convs are 'same' padded)."""

    def __init__(
        self,
        idim: int,
        odim: int,
        hidden: int = 256,
        bn_dim: int = 128,
        n_layer: int = 12,
        kernel: int = 7,
        dilation: int = 2,
        intermediate: int | None = None,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Sequential(
            nn.Conv1d(idim, bn_dim, 3, 1, 1), nn.GELU(), nn.Conv1d(bn_dim, hidden, 3, 1, 1)
        )
        inner = intermediate or 4 * hidden
        self.decoder_block = nn.ModuleList(
            ConvNeXtBlock(hidden, inner, kernel, dilation) for _ in range(n_layer)
        )
        self.conv_out = nn.Conv1d(hidden, odim, 1, bias=False)
        #: One-sided receptive field in frames (conv_in 2 + blocks), for streaming context sizing.
        self.receptive_field = 2 + n_layer * dilation * (kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_in(x)
        for block in self.decoder_block:
            y = block(y)
        return self.conv_out(y)


def htk_mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK-mel filters [n_freqs, n_mels] over 0..sr/2, unnormalised (torchaudio's defaults)."""
    freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    mel_max = 2595.0 * math.log10(1.0 + (sample_rate / 2) / 700.0)
    mels = torch.linspace(0.0, mel_max, n_mels + 2)
    edges = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    width = edges[1:] - edges[:-1]
    slopes = edges[None, :] - freqs[:, None]
    rising = -slopes[:, :-2] / width[:-1]
    falling = slopes[:, 2:] / width[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class _Buffers(nn.Module):
    """Holds named buffers only, so nested official keys (``mel_spec.spectrogram.window``) fit."""

    def __init__(self, **buffers: torch.Tensor) -> None:
        super().__init__()
        for name, value in buffers.items():
            self.register_buffer(name, value)


class MelFeatures(nn.Module):
    """Log-magnitude mel features with torchaudio ``MelSpectrogram(power=1, center=True)`` buffers.

    Computed on ``torch.stft`` with the stored window and filterbank, so no torchaudio is needed;
    the buffers come from the asset file (they are part of the official state dicts).
    """

    def __init__(self, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 100, sample_rate: int = 24000):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.mel_spec = nn.Module()
        self.mel_spec.spectrogram = _Buffers(window=torch.hann_window(n_fft))
        self.mel_spec.mel_scale = _Buffers(fb=htk_mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate))

    def forward(self, wave: torch.Tensor, clip: float = 1e-5) -> torch.Tensor:
        """wave [..., N] → log mel [..., n_mels, N // hop + 1] (reflect-padded, centred frames)."""
        window = self.mel_spec.spectrogram.window
        spec = torch.stft(
            wave.reshape(-1, wave.shape[-1]),
            self.n_fft,
            self.hop_length,
            window.shape[0],
            window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        ).abs()
        mel = torch.matmul(spec.transpose(-1, -2), self.mel_spec.mel_scale.fb).transpose(-1, -2)
        return torch.log(torch.clip(mel, min=clip)).reshape(*wave.shape[:-1], *mel.shape[-2:])


def _read(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise AssetError(f"{file}: no such asset file")
    return load_file(str(file))


def _shape(state: Mapping[str, torch.Tensor], key: str, label: str) -> tuple[int, ...]:
    if key not in state:
        raise AssetError(f"{label} does not match the expected architecture — missing key {key}")
    return tuple(state[key].shape)


def _stack_config(state: Mapping[str, torch.Tensor], prefix: str, label: str) -> dict[str, int]:
    """ConvNeXtStack constructor arguments read from the shapes under ``prefix``."""
    bn_dim, idim, _ = _shape(state, f"{prefix}conv_in.0.weight", label)
    hidden = _shape(state, f"{prefix}conv_in.2.weight", label)[0]
    odim = _shape(state, f"{prefix}conv_out.weight", label)[0]
    blocks = {k[len(prefix) :].split(".")[1] for k in state if k.startswith(f"{prefix}decoder_block.")}
    config = {"idim": idim, "odim": odim, "hidden": hidden, "bn_dim": bn_dim, "n_layer": len(blocks)}
    if blocks:
        config["kernel"] = _shape(state, f"{prefix}decoder_block.0.dwconv.weight", label)[-1]
        config["intermediate"] = _shape(state, f"{prefix}decoder_block.0.pwconv1.weight", label)[0]
    return config
