"""ChatTTS's mel decoders: GPT hidden states → log-mel (``Decoder.safetensors``) and codes ↔ log-mel (DVAE).

Both are the same conv stack (two k3 convs, 12 dilated ConvNeXt blocks, a 1×1 out conv) followed by
``out_conv`` (k3 → 100 mel bands) and a per-band ``coef``. One GPT step carries two mel frames: a
768-d hidden state splits into two 384-d frames; a step's 4 codes give two 512-d FSQ vectors (group 0
→ even frame, group 1 → odd frame). The output is a natural-log magnitude mel at 93.75 frames/s, the
input Vocos expects. Module and parameter names follow the official files key for key, so loading is
strict (:func:`~voiceloop.tts.chattts.assets.load_strict`).

This module holds the hidden-state decoder. The shared stack lives in :mod:`.mel_blocks` and the
DVAE in :mod:`.dvae`, whose names are re-exported here, so ``decoder`` stays the one import for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .assets import load_strict
from .dvae import CodeDecoder, GroupedFSQ, ResidualFSQ
from .mel_blocks import ConvNeXtStack, DecodeInputError, _read, _shape, _stack_config

__all__ = ["CodeDecoder", "DecodeInputError", "GroupedFSQ", "HiddenDecoder", "ResidualFSQ"]


class HiddenDecoder(nn.Module):
    """``asset/Decoder.safetensors``: GPT last hidden states [B, T, 2·dim] → log-mel [B, n_mels, 2T].

    Frame 2t is h_t[:dim] and frame 2t+1 is h_t[dim:] (ChatTTS's view(B,2,dim,T).permute(0,2,3,1)).
    """

    def __init__(
        self,
        dim: int = 384,
        hidden: int = 512,
        bn_dim: int = 128,
        n_layer: int = 12,
        n_mels: int = 100,
        kernel: int = 7,
        dilation: int = 2,
        intermediate: int | None = None,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        out = out_dim or dim
        self.register_buffer("coef", torch.ones(1, n_mels, 1))
        self.decoder = ConvNeXtStack(dim, out, hidden, bn_dim, n_layer, kernel, dilation, intermediate)
        self.out_conv = nn.Conv1d(out, n_mels, 3, 1, 1, bias=False)
        #: One-sided receptive field in mel frames.
        self.receptive_field = self.decoder.receptive_field + 1

    @property
    def step_dim(self) -> int:
        """Width of one per-step input row (the GPT hidden size)."""
        return 2 * self.dim

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.ndim != 3 or hidden.shape[-1] != 2 * self.dim:
            raise DecodeInputError(f"hidden states must be [B, T, {2 * self.dim}], got {tuple(hidden.shape)}")
        frames = hidden.transpose(1, 2).unflatten(1, (2, self.dim)).permute(0, 2, 3, 1).flatten(2)
        return self.out_conv(self.decoder(frames)) * self.coef

    def decode(self, steps: torch.Tensor) -> torch.Tensor:
        """Per-step rows [B, T, 768] → log-mel [B, n_mels, 2T] (the streaming decoder's uniform entry)."""
        return self(steps)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], label: str = "Decoder") -> HiddenDecoder:
        """Build with dims read from the tensor shapes, then load strictly."""
        stack = _stack_config(state, "decoder.", label)
        model = cls(
            dim=stack.pop("idim"),
            out_dim=stack.pop("odim"),
            n_mels=_shape(state, "out_conv.weight", label)[0],
            **stack,
        )
        load_strict(model, state, label)
        return model

    @classmethod
    def from_file(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> HiddenDecoder:
        """Load ``asset/Decoder.safetensors`` (eval mode, on ``device`` in ``dtype``)."""
        return cls.from_state_dict(_read(path), str(path)).to(device=device, dtype=dtype).eval()
