"""A lean Llama decoder for step-by-step generation, built from a loaded ``LlamaModel``'s weights.

Why not call ``LlamaModel`` each step: at batch 1 on a CPU its per-step overhead (mask building,
cache concatenation, three separate q/k/v and two gate/up projections) is a large part of the step
next to the int8 matrix products (``benchmarks/gpt_step.py`` times both stacks side by side).
This module computes the same function with q/k/v and gate/up fused into one linear each (fewer,
larger int8 products), a preallocated key/value cache that grows by doubling (no per-step
concatenation), and masks only when a batch is left-padded. It shares no
code with transformers beyond reading the weights; parity is checked against the reference goldens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class _Layer(nn.Module):
    def __init__(self, hidden: int, inner: int, eps: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.o = nn.Linear(hidden, hidden, bias=False)
        self.gate_up = nn.Linear(hidden, 2 * inner, bias=False)
        self.down = nn.Linear(inner, hidden, bias=False)
        self.norm_in = nn.Parameter(torch.ones(hidden))
        self.norm_post = nn.Parameter(torch.ones(hidden))
        self.eps = eps


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm: statistics in float32, scale applied in the input dtype (one fused op for fp32)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), -1)
    return x * cos + rotated * sin


#: attention for one layer: (layer index, q, k, v [B, heads, T, head_dim]) -> [B, heads, T, head_dim]
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class KvCache:
    """Keys/values per layer in preallocated ``[B, heads, capacity, head_dim]`` buffers."""

    def __init__(
        self, layers: int, batch: int, heads: int, head_dim: int, dtype: torch.dtype, device
    ) -> None:
        self.length = 0
        self.capacity = 0
        self.shape = (batch, heads, 0, head_dim)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.layers, self.dtype, self.device = layers, dtype, device

    def reserve(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        capacity = max(256, self.capacity * 2, needed)
        b, h, _, d = self.shape
        for store in (self.keys, self.values):
            for i in range(self.layers):
                grown = torch.empty(b, h, capacity, d, dtype=self.dtype, device=self.device)
                if store[i:]:
                    grown[:, :, : self.length] = store[i][:, :, : self.length]
                    store[i] = grown
                else:
                    store.append(grown)
        self.capacity = capacity


class LeanLlama(nn.Module):
    """The same function as ``LlamaModel(inputs_embeds=...)`` → ``last_hidden_state``, for generation."""

    def __init__(self, config) -> None:
        super().__init__()
        self.hidden = int(config.hidden_size)
        self.heads = int(config.num_attention_heads)
        if int(getattr(config, "num_key_value_heads", self.heads)) != self.heads:
            raise ValueError("LeanLlama supports multi-head attention only (num_key_value_heads == heads)")
        self.head_dim = self.hidden // self.heads
        self.eps = float(config.rms_norm_eps)
        self.layers = nn.ModuleList(
            _Layer(self.hidden, int(config.intermediate_size), self.eps)
            for _ in range(config.num_hidden_layers)
        )
        self.norm = nn.Parameter(torch.ones(self.hidden))
        theta = float(getattr(config, "rope_theta", None) or 10000.0)
        inv_freq = 1.0 / theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @classmethod
    @torch.no_grad()
    def from_llama(cls, llama: nn.Module) -> LeanLlama:
        """Copy (fusing) the weights of a float ``LlamaModel`` (before any quantization)."""
        lean = cls(llama.config)
        for mine, theirs in zip(lean.layers, llama.layers, strict=True):
            attn, mlp = theirs.self_attn, theirs.mlp
            mine.qkv.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
            mine.o.weight.copy_(attn.o_proj.weight)
            mine.gate_up.weight.copy_(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
            mine.down.weight.copy_(mlp.down_proj.weight)
            mine.norm_in.copy_(theirs.input_layernorm.weight)
            mine.norm_post.copy_(theirs.post_attention_layernorm.weight)
        lean.norm.copy_(llama.norm.weight)
        return lean.to(llama.norm.weight.dtype)

    def new_cache(self, batch: int, dtype: torch.dtype, device) -> KvCache:
        return KvCache(len(self.layers), batch, self.heads, self.head_dim, dtype, device)

    @torch.inference_mode()
    def forward(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: KvCache, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run ``embeds`` [B, T, hidden] at ``positions`` [B, T] after what ``cache`` holds.

        ``valid`` [B, cache.length + T] marks real (non-padding) key positions; None means all real.
        Returns the final-normed hidden states [B, T, hidden].
        """
        steps = embeds.shape[1]
        start = cache.length
        cache.reserve(start + steps)
        end = start + steps
        mask = None
        if steps > 1 or valid is not None:
            keys = torch.arange(end, device=embeds.device)
            queries = torch.arange(start, end, device=embeds.device)
            allowed = keys[None, :] <= queries[:, None]  # causal [T, end]
            if valid is not None:
                allowed = allowed[None] & valid[:, None, :end].bool()  # [B, T, end]
                allowed = allowed | ~allowed.any(-1, keepdim=True)  # fully padded query rows: avoid NaN
                mask = allowed[:, None]
            else:
                mask = allowed

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            key_store, value_store = cache.keys[index], cache.values[index]
            key_store[:, :, start:end] = k
            value_store[:, :, start:end] = v
            return F.scaled_dot_product_attention(
                q, key_store[:, :, :end], value_store[:, :, :end], attn_mask=mask
            )

        out = self._stack(embeds, positions, attend)
        cache.length = end
        return out

    @torch.inference_mode()
    def forward_rows(self, rows: list[tuple[torch.Tensor, torch.Tensor, KvCache]]) -> list[torch.Tensor]:
        """One new position for each of several independent sequences, in one pass.

        ``rows`` holds (embeds [1, 1, hidden], positions [1, 1], a batch-1 cache) per sequence —
        concurrent sessions' generation steps. The linear layers (nearly all of a step's cost, and
        memory-bound at batch 1) run once on all rows; attention runs per row over its own cache,
        so sequences of any lengths batch without padding. Returns [1, 1, hidden] per row.
        """
        caches = [cache for _, _, cache in rows]
        for cache in caches:
            if cache.shape[0] != 1:
                raise ValueError("forward_rows takes batch-1 caches only")
            cache.reserve(cache.length + 1)

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            attended = []
            for row, cache in enumerate(caches):
                at = cache.length
                key_store, value_store = cache.keys[index], cache.values[index]
                key_store[:, :, at : at + 1] = k[row : row + 1]
                value_store[:, :, at : at + 1] = v[row : row + 1]
                attended.append(
                    F.scaled_dot_product_attention(
                        q[row : row + 1], key_store[:, :, : at + 1], value_store[:, :, : at + 1]
                    )
                )
            return torch.cat(attended)

        x = torch.cat([embeds for embeds, _, _ in rows])
        out = self._stack(x, torch.cat([pos for _, pos, _ in rows]), attend)
        for cache in caches:
            cache.length += 1
        return [out[row : row + 1] for row in range(len(rows))]

    def _stack(self, x: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        """The layers on ``x`` [B, T, hidden]; ``attend(layer, q, k, v)`` (q, k rotated) does the
        attention against whatever cache layout the caller keeps. Final-normed output."""
        batch, steps, _ = x.shape
        freqs = positions[..., None].float() * self.inv_freq
        angles = torch.cat((freqs, freqs), -1)[:, None]  # [B, 1, T, head_dim]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        for index, layer in enumerate(self.layers):
            h = rms_norm(x, layer.norm_in, self.eps)
            qkv = layer.qkv(h).view(batch, steps, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k = _rotate(qkv[:2], cos, sin)  # q and k rotated together: half the small ops
            attended = attend(index, q, k, qkv[2])
            x = x + layer.o(attended.transpose(1, 2).reshape(batch, steps, self.hidden))
            h = rms_norm(x, layer.norm_post, self.eps)
            gate, up = layer.gate_up(h).chunk(2, -1)
            x = x + layer.down(F.silu(gate) * up)
        return rms_norm(x, self.norm, self.eps)
