"""The vocabulary-specific half of the ChatTTS GPT: text/code embeddings and weight-normed heads.

Key names match ``asset/Embed.safetensors``, so :meth:`ChatTtsGpt.load` loads it strictly; the
transformer itself is the stock ``LlamaModel`` (or :mod:`.llama`'s lean one), driven in :mod:`.gpt`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

NUM_VQ = 4


class Embed(nn.Module):
    """Text and code embeddings plus output heads; key names match ``asset/Embed.safetensors``."""

    def __init__(
        self, hidden: int, num_audio_tokens: int, num_text_tokens: int, num_vq: int = NUM_VQ
    ) -> None:
        super().__init__()
        self.emb_code = nn.ModuleList(nn.Embedding(num_audio_tokens, hidden) for _ in range(num_vq))
        self.emb_text = nn.Embedding(num_text_tokens, hidden)
        self.head_text = weight_norm(nn.Linear(hidden, num_text_tokens, bias=False))
        self.head_code = nn.ModuleList(
            weight_norm(nn.Linear(hidden, num_audio_tokens, bias=False)) for _ in range(num_vq)
        )

    def bake(self) -> None:
        """Fold the weight-norm parametrisation into plain weights (computed once, not per step)."""
        for head in (self.head_text, *self.head_code):
            parametrize.remove_parametrizations(head, "weight", leave_parametrized=True)

    def codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``[..., num_vq]`` code ids → summed embeddings ``[..., hidden]``."""
        return sum(emb(codes[..., q]) for q, emb in enumerate(self.emb_code))

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, hidden]`` → ``[B, num_vq, num_audio_tokens]``."""
        return torch.stack([head(hidden) for head in self.head_code], 1)
