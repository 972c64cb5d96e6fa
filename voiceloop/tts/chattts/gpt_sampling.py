"""What one ChatTTS GPT request asks for and gets back: sampling options, steps, results, penalty.

Split from :mod:`.gpt` (which runs the model and re-exports these names) so the request-facing
types read on their own. Defaults are the reference's; the repetition penalty is its windowed
``penalty^count`` scaling, applied by :meth:`ChatTtsGpt.generate` in the reference order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class SamplingOptions:
    """Per-request sampling; defaults are ChatTTS's code-generation defaults."""

    temperature: float | tuple[float, ...] = 0.3  # one value, or one per codebook
    top_p: float | None = 0.7
    top_k: int | None = 20
    repetition_penalty: float = 1.05
    penalty_window: int = 16  # generated tokens the penalty looks back over
    max_new_tokens: int = 2048  # 2048 steps ≈ 43.7 s of audio
    min_new_tokens: int = 0
    seed: int | None = None  # None: fresh entropy per request (never the global torch RNG)
    reseed_every_step: bool = False  # the reference's manual_seed behaviour; only for bit parity

    def __post_init__(self) -> None:
        temps = self.temperature if isinstance(self.temperature, tuple) else (self.temperature,)
        if not temps or any(t <= 0 for t in temps):
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k!r}")
        if self.repetition_penalty <= 0 or self.penalty_window < 1:
            raise ValueError("repetition_penalty must be > 0 and penalty_window >= 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens or self.max_new_tokens < 1:
            raise ValueError("need 0 <= min_new_tokens <= max_new_tokens and max_new_tokens >= 1")


# ChatTTS's refinement defaults: livelier sampling, no repetition penalty, up to 384 tokens.
REFINE_SAMPLING = SamplingOptions(
    temperature=0.7, top_p=0.7, top_k=20, repetition_penalty=1.0, max_new_tokens=384
)


@dataclass
class Step:
    """One generation step for the whole batch."""

    tokens: torch.Tensor  # code mode [B, num_vq]; text mode [B]
    hidden: torch.Tensor  # [B, hidden] float32: the state that produced ``tokens``
    alive: torch.Tensor  # [B] bool: False once a row has produced EOS (this step included)


@dataclass
class GenerationResult:
    tokens: list[torch.Tensor] = field(default_factory=list)  # per row, EOS excluded
    hiddens: list[torch.Tensor] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)  # False: hit max_new_tokens or was cancelled


def _penalize(logits: torch.Tensor, window: torch.Tensor, penalty: float) -> torch.Tensor:
    """Scale each logit by penalty^(count in the window): down for positive, further down for negative."""
    counts = F.one_hot(window, logits.shape[-1]).sum(1)
    alpha = torch.pow(penalty, counts)
    return torch.where(logits < 0, logits * alpha, logits / alpha)
