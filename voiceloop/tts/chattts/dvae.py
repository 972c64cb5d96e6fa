"""ChatTTS's DVAE (``asset/DVAE.safetensors``): codes ↔ log-mel, by grouped residual FSQ.

A step's 4 codes give two 512-d FSQ vectors (group 0 → even frame, group 1 → odd frame), decoded by
the shared conv stack (:mod:`.mel_blocks`); encoding turns a 24 kHz voice prompt into codes. The
hidden-state decoder is in :mod:`.decoder`, which re-exports these names.

The FSQ arithmetic reproduces vector_quantize_pytorch 1.32 (what chattts 0.2.5 installs): implicit
codebook digit d ∈ 0..4 → d/2 − 1 (fastest digit first), residual level r scaled by 5^−r, input soft
clamp tanh(x/1.25)·1.25 and hard-clamped rounding when encoding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .assets import AssetError, load_strict
from .mel_blocks import ConvNeXtStack, DecodeInputError, MelFeatures, _read, _shape, _stack_config


class ResidualFSQ(nn.Module):
    """One FSQ group: project_in → R residual FSQ levels (scale levels^−r) → project_out."""

    def __init__(self, dim: int, levels: Sequence[int] = (5, 5, 5, 5), num_quantizers: int = 2) -> None:
        super().__init__()
        if any(level < 3 for level in levels):
            raise ValueError(f"FSQ levels must be >= 3, got {tuple(levels)}")
        d = len(levels)
        self.project_in = nn.Linear(dim, d)
        self.project_out = nn.Linear(d, dim)
        lv = torch.tensor(list(levels), dtype=torch.int32)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]]), 0).to(torch.int32)
        digits = (torch.arange(math.prod(levels))[:, None] // basis) % lv
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", basis, persistent=False)
        self.register_buffer("codebook", digits * (2.0 / (lv - 1)) - 1.0, persistent=False)
        scales = torch.stack([lv.float() ** -r for r in range(num_quantizers)])
        self.register_buffer("scales", scales, persistent=False)
        self.register_buffer("clamp_value", 1 + 1 / (lv.long() - 1), persistent=False)
        self.num_quantizers = num_quantizers

    def output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices [..., R] (0..prod(levels)−1) → [..., dim]."""
        codes = self.codebook[indices] * self.scales
        return self.project_out(codes.sum(dim=-2))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., dim] → indices [..., R] (int64)."""
        z = self.project_in(x)
        z = (z / self.clamp_value).tanh() * self.clamp_value
        residual, step = z, 2.0 / (self.levels - 1)
        indices = []
        for scale in self.scales:
            level = self.levels - 1
            bracket = torch.floor((level * (torch.clamp(residual / scale, -1.0, 1.0) + 1) / 2.0) + 0.5)
            codes = step * bracket - 1.0
            digits = (codes + 1.0) / step
            indices.append((digits * self.basis).sum(dim=-1).round().long())
            residual = residual - codes * scale
        return torch.stack(indices, dim=-1)


class GroupedFSQ(nn.Module):
    """ChatTTS's ``GFSQ``: G groups of residual FSQ over the channel axis; state keys ``quantizer.rvqs.*``."""

    def __init__(
        self, dim: int = 1024, levels: Sequence[int] = (5, 5, 5, 5), groups: int = 2, num_quantizers: int = 2
    ) -> None:
        super().__init__()
        if dim % groups:
            raise ValueError(f"FSQ dim {dim} is not divisible by {groups} groups")
        self.groups, self.num_quantizers = groups, num_quantizers
        self.codebook_size = math.prod(levels)
        self.quantizer = nn.Module()
        self.quantizer.rvqs = nn.ModuleList(
            ResidualFSQ(dim // groups, levels, num_quantizers) for _ in range(groups)
        )

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, G·R, T] (code q = group q // R, level q % R) → features [B, dim, T]."""
        per_group = codes.transpose(1, 2).unflatten(2, (self.groups, self.num_quantizers))
        outs = [rvq.output_from_indices(per_group[:, :, g]) for g, rvq in enumerate(self.quantizer.rvqs)]
        return torch.cat(outs, dim=-1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """features [B, dim, T] → codes [B, G·R, T] (the inverse layout of :meth:`embed`)."""
        chunks = x.transpose(1, 2).chunk(self.groups, dim=-1)
        ind = torch.stack([rvq.quantize(c) for rvq, c in zip(self.quantizer.rvqs, chunks, strict=True)], 2)
        return ind.flatten(2).transpose(1, 2)


class CodeDecoder(nn.Module):
    """``asset/DVAE.safetensors``: codes [B, 4, T] → log-mel [B, 100, 2T], and 24 kHz wave → codes.

    Decoding: GFSQ embedding [B, 1024, T] → even/odd frames [B, 512, 2T] → conv stack → out_conv × coef.
    Encoding (voice prompts): log-mel (clip 1e-5) / coef → downsample ×2 → encoder stack → FSQ indices.
    """

    def __init__(
        self,
        dim: int = 512,
        hidden: int = 256,
        bn_dim: int = 128,
        n_layer: int = 12,
        enc_dim: int = 1024,
        levels: Sequence[int] = (5, 5, 5, 5),
        groups: int = 2,
        num_quantizers: int = 2,
        n_mels: int = 100,
        n_fft: int = 1024,
        hop_length: int = 256,
        encoder: dict[str, int] | None = None,
        decoder: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        if enc_dim != 2 * dim:
            raise ValueError(f"enc_dim ({enc_dim}) must be 2·dim ({2 * dim}): one step = two frames")
        self.dim = dim
        self.register_buffer("coef", torch.ones(1, n_mels, 1))
        self.downsample_conv = nn.Sequential(
            nn.Conv1d(n_mels, dim, 3, 1, 1), nn.GELU(), nn.Conv1d(dim, dim, 4, 2, 1), nn.GELU()
        )
        self.preprocessor_mel = MelFeatures(n_fft, hop_length, n_mels)
        stack = {"hidden": hidden, "bn_dim": bn_dim, "n_layer": n_layer}
        self.encoder = ConvNeXtStack(dim, enc_dim, **(encoder or stack))
        self.decoder = ConvNeXtStack(dim, dim, **(decoder or stack))
        self.out_conv = nn.Conv1d(dim, n_mels, 3, 1, 1, bias=False)
        self.vq_layer = GroupedFSQ(enc_dim, levels, groups, num_quantizers)
        #: One-sided receptive field of the decode path in mel frames.
        self.receptive_field = self.decoder.receptive_field + 1

    @property
    def step_dim(self) -> int:
        """Codes per step (one per codebook)."""
        return self.vq_layer.groups * self.vq_layer.num_quantizers

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.ndim != 3 or codes.shape[1] != self.step_dim:
            raise DecodeInputError(f"codes must be [B, {self.step_dim}, T], got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise DecodeInputError(f"codes must be an integer tensor, got {codes.dtype}")
        size = self.vq_layer.codebook_size
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= size):
            raise DecodeInputError(f"codes must lie in 0..{size - 1} (EOS {size} is not audio)")
        feats = self.vq_layer.embed(codes.long())
        frames = feats.unflatten(1, (2, self.dim)).permute(0, 2, 3, 1).flatten(2)
        return self.out_conv(self.decoder(frames)) * self.coef

    def decode(self, steps: torch.Tensor) -> torch.Tensor:
        """Per-step code rows [B, T, 4] → log-mel [B, n_mels, 2T]."""
        return self(steps.transpose(1, 2))

    @torch.inference_mode()
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """24 kHz wave [N] or [B, N] → codes [4, T] or [B, 4, T], T = (N // 256 + 1) // 2 (int64)."""
        if wave.ndim not in (1, 2) or not wave.dtype.is_floating_point:
            raise DecodeInputError(f"wave must be float [N] or [B, N], got {wave.dtype} {tuple(wave.shape)}")
        if wave.shape[-1] <= self.preprocessor_mel.n_fft // 2:
            raise DecodeInputError(f"wave too short to encode: {wave.shape[-1]} samples")
        batch = wave if wave.ndim == 2 else wave[None]
        mel = self.preprocessor_mel(batch.to(self.coef.dtype)) / self.coef
        codes = self.vq_layer(self.encoder(self.downsample_conv(mel)))
        return codes if wave.ndim == 2 else codes[0]

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, torch.Tensor], label: str = "DVAE", levels: Sequence[int] = (5, 5, 5, 5)
    ) -> CodeDecoder:
        """Build with dims read from the tensor shapes (levels and residual depth are not stored)."""
        enc, dec = _stack_config(state, "encoder.", label), _stack_config(state, "decoder.", label)
        groups = len({k.split(".")[3] for k in state if k.startswith("vq_layer.quantizer.rvqs.")})
        proj = _shape(state, "vq_layer.quantizer.rvqs.0.project_in.weight", label)
        if proj[0] != len(levels):
            raise AssetError(f"{label}: FSQ codebook dim {proj[0]} does not fit levels {tuple(levels)}")
        model = cls(
            dim=dec.pop("idim"),
            enc_dim=enc.pop("odim"),
            levels=levels,
            groups=groups,
            n_mels=_shape(state, "out_conv.weight", label)[0],
            n_fft=_shape(state, "preprocessor_mel.mel_spec.spectrogram.window", label)[0],
            encoder={k: v for k, v in enc.items() if k != "idim"},
            decoder={k: v for k, v in dec.items() if k != "odim"},
        )
        load_strict(model, state, label)
        return model

    @classmethod
    def from_file(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> CodeDecoder:
        """Load ``asset/DVAE.safetensors`` (every key: encoder, mel buffers, VQ projections, decoder)."""
        return cls.from_state_dict(_read(path), str(path)).to(device=device, dtype=dtype).eval()
