"""Vocos mel vocoder (log-mel 100 × 93.75 frames/s → 24 kHz wave), written from its documented architecture.

Backbone: Conv1d(100→512, k7) → LayerNorm → 8 ConvNeXt blocks (k7, 512→1536→512, layer scale
``gamma``) → LayerNorm. Head: Linear(512→1026) split into log-magnitude and phase; magnitude is
exp(·) clipped at 100; S = mag·(cos p + i·sin p); ``torch.istft`` (n_fft 1024, hop 256, Hann,
center=True) gives 256·(L−1) samples for L frames.

Two checkpoint layouts load into the same module (identical key names): ChatTTS's
``asset/Vocos.safetensors`` (dims read from shapes) and the standalone ``charactr/vocos-mel-24khz``
(``config.yaml`` + ``pytorch_model.bin``, from a hub id or a local directory). The
``feature_extractor.*`` buffers (torchaudio MelSpectrogram window and filterbank) are loaded too and
drive :meth:`Vocos.mel_spectrogram`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .assets import VOCOS, AssetError, load_strict
from .mel_blocks import ConvNeXtBlock, DecodeInputError, MelFeatures, _Buffers, _read, _shape

CHARACTR_VOCOS = "charactr/vocos-mel-24khz"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class VocosBackbone(nn.Module):
    """log-mel [B, C, L] → features [B, L, dim]; every layer is per-frame or a k7 conv (±27 frames)."""

    def __init__(
        self, input_channels: int = 100, dim: int = 512, intermediate_dim: int = 1536, num_layers: int = 8
    ):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, 7, padding=3)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.convnext = nn.ModuleList(
            ConvNeXtBlock(dim, intermediate_dim, 7, 1, scale_name="gamma") for _ in range(num_layers)
        )
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.receptive_field = 3 * (num_layers + 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(mel).transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x.transpose(1, 2))


class ISTFTHead(nn.Module):
    """features [B, L, dim] → (magnitude, phase) [B, n_fft/2+1, L] → wave via ISTFT."""

    def __init__(self, dim: int = 512, n_fft: int = 1024, hop_length: int = 256):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = _Buffers(window=torch.hann_window(n_fft))  # periodic, as in the files

    def mag_phase(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mag, phase = self.out(x).transpose(1, 2).chunk(2, dim=1)
        return torch.clip(torch.exp(mag), max=1e2), phase

    def inverse(self, mag: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """ISTFT (center=True) in float32: [B, F, L] → [B, hop·(L−1)]."""
        mag, phase = mag.float(), phase.float()
        spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))
        window = self.istft.window.float()
        return torch.istft(spec, self.n_fft, self.hop_length, self.n_fft, window, center=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inverse(*self.mag_phase(x))


class Vocos(nn.Module):
    """The ``vocos-mel-24khz`` vocoder: :meth:`decode` maps log-mel [B, 100, L] to wave [B, 256·(L−1)]."""

    def __init__(
        self,
        n_mels: int = 100,
        dim: int = 512,
        intermediate_dim: int = 1536,
        num_layers: int = 8,
        n_fft: int = 1024,
        hop_length: int = 256,
        sample_rate: int = 24000,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.feature_extractor = MelFeatures(n_fft, hop_length, n_mels, sample_rate)
        self.backbone = VocosBackbone(n_mels, dim, intermediate_dim, num_layers)
        self.head = ISTFTHead(dim, n_fft, hop_length)
        #: One-sided receptive field in mel frames (backbone convs + ISTFT overlap).
        self.receptive_field = self.backbone.receptive_field + n_fft // hop_length // 2

    @property
    def hop_length(self) -> int:
        return self.head.hop_length

    def spectrum(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log-mel [B, n_mels, L] → (magnitude, phase) [B, n_fft/2+1, L]: everything before the ISTFT."""
        n_mels = self.backbone.embed.in_channels
        if mel.ndim != 3 or mel.shape[1] != n_mels:
            raise DecodeInputError(f"mel must be [B, {n_mels}, L], got {tuple(mel.shape)}")
        return self.head.mag_phase(self.backbone(mel))

    @torch.inference_mode()
    def decode(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel [B, n_mels, L] or [n_mels, L] → float32 wave [B, 256·(L−1)] or [256·(L−1)]."""
        if mel.ndim == 2:
            return self.decode(mel[None])[0]
        if mel.shape[-1] < 2:
            raise DecodeInputError(f"need at least 2 mel frames (centred ISTFT), got {mel.shape[-1]}")
        param = self.head.out.weight
        return self.head.inverse(*self.spectrum(mel.to(param.device, param.dtype)))

    @torch.inference_mode()
    def mel_spectrogram(self, wave: torch.Tensor, clip: float = 1e-7) -> torch.Tensor:
        """24 kHz wave [..., N] → log-mel [..., n_mels, N // 256 + 1] (vocos' own features: log clip 1e-7)."""
        return self.feature_extractor(wave.to(self.head.out.weight.dtype), clip=clip)

    # -- loading -----------------------------------------------------------------------------------

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, torch.Tensor], label: str = "Vocos", hop_length: int = 256
    ) -> Vocos:
        """Build with dims read from the tensor shapes (the hop is not stored), then load strictly."""
        dim, n_mels, _ = _shape(state, "backbone.embed.weight", label)
        layers = {k.split(".")[2] for k in state if k.startswith("backbone.convnext.")}
        inner = _shape(state, "backbone.convnext.0.pwconv1.weight", label)[0] if layers else 4 * dim
        model = cls(n_mels, dim, inner, len(layers), _shape(state, "head.istft.window", label)[0], hop_length)
        load_strict(model, state, label)
        return model

    @classmethod
    def from_file(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> Vocos:
        """Load ChatTTS's ``asset/Vocos.safetensors``."""
        return cls.from_state_dict(_read(path), str(path)).to(device=device, dtype=dtype).eval()

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path = CHARACTR_VOCOS,
        revision: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Vocos:
        """Load the standalone layout: a dir or hub id with ``config.yaml`` + ``pytorch_model.bin``."""
        local = Path(source).expanduser()
        if local.is_dir():
            config_path, weights_path = local / "config.yaml", local / "pytorch_model.bin"
            for needed in (config_path, weights_path):
                if not needed.is_file():
                    raise AssetError(
                        f"{local}: missing {needed.name} (expected a vocos checkpoint directory)"
                    )
        elif isinstance(source, str) and _HUB_ID.match(source):
            from huggingface_hub import hf_hub_download

            config_path = Path(hf_hub_download(source, "config.yaml", revision=revision))
            weights_path = Path(hf_hub_download(source, "pytorch_model.bin", revision=revision))
        else:
            raise AssetError(f"{source}: neither a directory nor a hub id like {CHARACTR_VOCOS}")
        kwargs = _vocos_config(config_path)
        model = cls(**kwargs)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        load_strict(model, state, str(weights_path))
        return model.to(device=device, dtype=dtype).eval()

    @classmethod
    def load(
        cls, source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> Vocos:
        """Any source: a ``.safetensors`` file, a ChatTTS snapshot root, a vocos dir or a hub id."""
        local = Path(source).expanduser()
        if local.is_file():
            return cls.from_file(local, device, dtype)
        if local.is_dir() and (local / VOCOS).is_file():
            return cls.from_file(local / VOCOS, device, dtype)
        return cls.from_pretrained(source, device=device, dtype=dtype)


def _vocos_config(path: Path) -> dict[str, int]:
    """Constructor arguments from a vocos ``config.yaml``; anything this module cannot run is refused."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        parts = {key: config[key] for key in ("feature_extractor", "backbone", "head")}
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise AssetError(f"{path}: not a vocos config ({exc})") from exc
    expected = {
        "feature_extractor": "MelSpectrogramFeatures",
        "backbone": "VocosBackbone",
        "head": "ISTFTHead",
    }
    args: dict[str, dict[str, Any]] = {}
    for key, cls_name in expected.items():
        part = parts[key] if isinstance(parts[key], dict) else {}
        if str(part.get("class_path", "")).rsplit(".", 1)[-1] != cls_name:
            raise AssetError(f"{path}: {key} must be {cls_name}, got {part.get('class_path')!r}")
        args[key] = dict(part.get("init_args") or {})
    feat, backbone, head = args["feature_extractor"], args["backbone"], args["head"]
    for what, part in (("feature_extractor", feat), ("head", head)):
        if part.get("padding", "center") != "center":
            raise AssetError(f"{path}: only padding 'center' is supported ({what} has {part['padding']!r})")
    if backbone.get("adanorm_num_embeddings"):
        raise AssetError(f"{path}: conditional (AdaLayerNorm) backbones are not supported")
    try:
        out = {
            "n_mels": int(backbone["input_channels"]),
            "dim": int(backbone["dim"]),
            "intermediate_dim": int(backbone["intermediate_dim"]),
            "num_layers": int(backbone["num_layers"]),
            "n_fft": int(head["n_fft"]),
            "hop_length": int(head["hop_length"]),
            "sample_rate": int(feat.get("sample_rate", 24000)),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise AssetError(f"{path}: incomplete vocos config ({exc!r})") from exc
    mismatch = {
        "head dim": (int(head.get("dim", out["dim"])), out["dim"]),
        "feature n_mels": (int(feat.get("n_mels", out["n_mels"])), out["n_mels"]),
        "feature n_fft": (int(feat.get("n_fft", out["n_fft"])), out["n_fft"]),
        "feature hop": (int(feat.get("hop_length", out["hop_length"])), out["hop_length"]),
    }
    for what, (got, want) in mismatch.items():
        if got != want:
            raise AssetError(f"{path}: {what} {got} disagrees with the backbone/head ({want})")
    return out


def istft_numpy(mag: np.ndarray, phase: np.ndarray, window: np.ndarray, hop_length: int) -> np.ndarray:
    """``torch.istft(center=True)`` of mag·e^{i·phase} in numpy: [B, F, L] → float32 [B, hop·(L−1)].

    Inverse real FFT per frame × window, overlap-add, divide by the summed squared window, trim n_fft/2
    on both sides. Lets the ONNX runner produce audio without torch.
    """
    n_fft = window.shape[0]
    spec = mag.astype(np.float32) * (np.cos(phase) + 1j * np.sin(phase)).astype(np.complex64)
    frames = np.fft.irfft(spec, n=n_fft, axis=1).astype(np.float32) * window[None, :, None]
    batch, _, n_frames = frames.shape
    total = n_fft + hop_length * (n_frames - 1)
    out = np.zeros((batch, total), np.float32)
    envelope = np.zeros(total, np.float32)
    squared = (window.astype(np.float32) ** 2)[:, None]
    if n_fft % hop_length == 0:  # overlap-add as n_fft/hop shifted block sums (no per-frame loop)
        blocks = out.reshape(batch, -1, hop_length)
        env_blocks = envelope.reshape(-1, hop_length)
        for k in range(n_fft // hop_length):
            part = frames[:, k * hop_length : (k + 1) * hop_length, :].transpose(0, 2, 1)
            blocks[:, k : k + n_frames] += part
            env_blocks[k : k + n_frames] += squared[k * hop_length : (k + 1) * hop_length, 0]
    else:
        for j in range(n_frames):
            out[:, j * hop_length : j * hop_length + n_fft] += frames[:, :, j]
            envelope[j * hop_length : j * hop_length + n_fft] += squared[:, 0]
    start, length = n_fft // 2, hop_length * (n_frames - 1)
    env = envelope[start : start + length]
    if length and np.abs(env).min() < 1e-11:
        raise DecodeInputError("ISTFT window envelope vanishes: the window/hop pair is not invertible")
    return out[:, start : start + length] / env
