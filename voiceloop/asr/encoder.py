"""The wav2vec2 transformer encoder, driven frame-range by frame-range for streaming.

The stock ``Wav2Vec2Encoder`` only runs a whole padded batch. Streaming wants two things it
can't do: encode several streams' windows of different lengths without padding them to the
longest (the linears see all rows at once; attention stays per stream), and attend to the
keys/values of frames encoded in an earlier step instead of re-encoding them (left context).
This module runs the checkpoint's own submodules (LayerNorms, linears — quantized or not —,
activations) in the stock order; only the loop around them and the attention call are ours.

Per encoder step the input is ``[context | frames]`` of projected features: ``context`` frames
feed only the positional convolution (it spans ``kernel // 2`` frames each side), ``frames`` go
through the layers and attend to ``past`` (per-layer keys/values of earlier frames) plus
themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Wav2Vec2ForCTC

#: steps this short (in frames) take the unfolded positional convolution on a CPU (below where
#: torch's conv1d overtakes it; a streaming step is C + R = 44)
SHORT_WINDOW_FRAMES = 96
#: output frames per unfolded block: 48 x 128 taps x 1024 channels x 4 B = 25 MB of copy
SHORT_BLOCK_FRAMES = 48


@dataclass
class KeyValues:
    """Every layer's keys and values for a run of frames: ``tensor`` is ``[layers, 2, frames, hidden]``.

    The frames sit at the front of ``buffer``, which may have room after them: an encoder step
    writes its new frames' keys/values there, so attending to past + new frames copies only the
    new ones (a per-layer ``cat`` of past and new was a visible part of a streaming step).
    """

    buffer: torch.Tensor
    frames: int = -1  # -1: the whole buffer

    def __post_init__(self) -> None:
        if self.frames < 0:
            self.frames = int(self.buffer.shape[2])

    @property
    def tensor(self) -> torch.Tensor:
        return self.buffer[:, :, : self.frames]

    @property
    def room(self) -> int:
        return int(self.buffer.shape[2]) - self.frames

    def prefix(self, frames: int) -> KeyValues:
        """The first ``frames`` frames (same buffer, no copy)."""
        return KeyValues(self.buffer, max(0, min(frames, self.frames)))

    def newest(self, keep: int, room: int = 0) -> KeyValues:
        """The last ``keep`` frames, copied into a fresh buffer with ``room`` spare frames."""
        keep = max(0, min(keep, self.frames))
        layers, _, _, hidden = self.buffer.shape
        buffer = self.buffer.new_empty(layers, 2, keep + room, hidden)
        buffer[:, :, :keep] = self.buffer[:, :, self.frames - keep : self.frames]
        return KeyValues(buffer, keep)

    def with_room(self, frames: int) -> KeyValues:
        """These frames in a buffer with room for ``frames`` more (this one when it has the room)."""
        return self if self.room >= frames else self.newest(self.frames, room=frames)

    @classmethod
    def empty(cls, layers: int, hidden: torch.Tensor, room: int) -> KeyValues:
        """No frames yet, room for ``room`` (dtype and device of ``hidden``)."""
        return cls(hidden.new_empty(layers, 2, room, hidden.shape[-1]), 0)


@dataclass
class EncoderStep:
    """One stream's encoder input: ``hidden`` is ``[context + frames, hidden_size]``."""

    hidden: torch.Tensor
    context: int = 0
    past: KeyValues | None = None

    @property
    def frames(self) -> int:
        return int(self.hidden.shape[0]) - self.context


@dataclass
class EncoderResult:
    """Per encoded frame: log-probs ``[T, V]`` (float32, CPU) and an optional hidden layer.

    ``key_values`` (when asked for) holds the step's past followed by its new frames — the past's
    own buffer, extended in place when it had room, so keeping a suffix costs one copy. A later
    step on the same past writes into that room again: copy what must outlive it.
    """

    log_probs: torch.Tensor
    layer_state: torch.Tensor | None
    key_values: KeyValues | None


class LeanEncoder:
    """Encoder + CTC head of a loaded ``Wav2Vec2ForCTC`` (shares its modules and weights)."""

    def __init__(self, model: Wav2Vec2ForCTC) -> None:
        if model.wav2vec2.adapter is not None:
            raise ValueError(
                "checkpoints with a downsampling adapter (add_adapter=true) are not supported: "
                "their outputs are not one per 20 ms frame, which streaming relies on"
            )
        config = model.config
        encoder = model.wav2vec2.encoder
        self.stable = bool(config.do_stable_layer_norm)
        self.layers = list(encoder.layers)
        self.final_norm = encoder.layer_norm
        self.head = model.lm_head
        self.heads = int(config.num_attention_heads)
        self.hidden_size = int(config.hidden_size)
        pos = encoder.pos_conv_embed
        conv = pos.conv
        with torch.no_grad():  # weight norm is re-evaluated per call in the stock module; once here
            if hasattr(conv, "weight_g"):  # the pre-parametrization weight_norm hook
                weight = torch._weight_norm(conv.weight_v, conv.weight_g, 2)
            else:
                weight = conv.weight
        self.pos_weight = weight.detach().clone()
        self._pos_matrix: torch.Tensor | None = None  # for the short-window path, made on first use
        self.pos_bias = None if conv.bias is None else conv.bias.detach()
        self.pos_groups = conv.groups
        self.pos_kernel = int(conv.kernel_size[0])
        self.pos_activation = pos.activation
        #: frames on each side the positional convolution reads
        self.pos_reach = self.pos_kernel // 2

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @torch.inference_mode()
    def run(
        self, steps: list[EncoderStep], *, layer: int | None = None, key_values: bool = False
    ) -> list[EncoderResult]:
        """Encode every step's frames in one pass; ``layer`` as in ``hidden_states`` (0 = input)."""
        sizes = [step.frames for step in steps]
        x = torch.cat([self._positional(step) for step in steps]) if steps else None
        caches = self._caches(steps, sizes, x, key_values)
        captured: torch.Tensor | None = None
        if x is not None and x.shape[0] > 0:
            if not self.stable:
                x = self.final_norm(x)
            for index, block in enumerate(self.layers):
                if layer == index:
                    captured = x
                x = self._block(block, x, caches, sizes, index)
            if layer == self.num_layers:
                captured = x
            if self.stable:
                x = self.final_norm(x)
            log_probs = torch.log_softmax(self.head(x).float(), dim=-1).cpu()
        else:
            log_probs = torch.empty(0, self.head.out_features)
        states = torch.empty(0, self.hidden_size) if captured is None else captured.float().cpu()
        results, start = [], 0
        for n, cache in zip(sizes, caches, strict=True):
            rows = slice(start, start + n)
            kv = None
            if key_values:
                assert cache is not None
                kv = KeyValues(cache.buffer, cache.frames + n)
            results.append(EncoderResult(log_probs[rows], None if layer is None else states[rows], kv))
            start += n
        return results

    def _caches(
        self, steps: list[EncoderStep], sizes: list[int], x: torch.Tensor | None, key_values: bool
    ) -> list[KeyValues | None]:
        """Per step, the keys/values its frames attend to before their own: the past, with room.

        The new frames' keys/values are written after the past (see :class:`KeyValues`). A past
        given to two steps of one call is copied for the second, so they never share that room.
        """
        caches: list[KeyValues | None] = []
        used: set[int] = set()
        for step, n in zip(steps, sizes, strict=True):
            past = step.past
            if past is None or past.frames == 0:
                if not key_values or x is None:
                    caches.append(None)
                    continue
                past = KeyValues.empty(self.num_layers, x, max(n, 0))
            elif past.buffer.data_ptr() in used:
                past = past.newest(past.frames, room=n)
            cache = past.with_room(max(n, 0))
            used.add(cache.buffer.data_ptr())
            caches.append(cache)
        return caches

    def _positional(self, step: EncoderStep) -> torch.Tensor:
        """Frames plus their convolutional position embedding (zero padding at the input's edges)."""
        hidden, context, reach = step.hidden, step.context, self.pos_reach
        if step.frames <= 0:
            return hidden[:0]
        start = max(0, context - reach)
        left_pad = reach - (context - start)
        if hidden.device.type == "cpu" and step.frames <= SHORT_WINDOW_FRAMES:
            source = F.pad(hidden[start:], (0, 0, left_pad, reach))  # [frames, H], time-major
            pos = self._positional_short(source, step.frames)
        else:
            source = hidden[start:].transpose(0, 1)[None]  # [1, H, frames]
            source = F.pad(source, (left_pad, reach))
            pos = F.conv1d(source, self.pos_weight, self.pos_bias, groups=self.pos_groups)
            pos = pos[0, :, : step.frames].transpose(0, 1)
        return hidden[context:] + self.pos_activation(pos)

    @property
    def pos_matrix(self) -> torch.Tensor:
        """The positional conv weights as one matrix per group: ``[groups, kernel * in, out]``."""
        if self._pos_matrix is None:
            out_ch, group_in, kernel = self.pos_weight.shape
            groups = self.pos_groups
            self._pos_matrix = (
                self.pos_weight.view(groups, out_ch // groups, group_in, kernel)
                .permute(0, 3, 2, 1)
                .reshape(groups, kernel * group_in, out_ch // groups)
                .contiguous()
            )
        return self._pos_matrix

    def _positional_short(self, source: torch.Tensor, frames: int) -> torch.Tensor:
        """The grouped positional convolution of a short window as one batched matmul per group.

        On a CPU, torch's grouped conv1d with this kernel (128 taps, 16 groups of 64) runs far
        below the matmul rate on a streaming step's ~44 frames; unfolding each output frame's
        receptive field (kernel x 64 inputs, contiguous in a group-major copy) and multiplying by
        the group's weight matrix is faster there. Long inputs stay on conv1d, which wins there.
        """
        groups, span, per_group = self.pos_matrix.shape
        group_in = span // self.pos_kernel
        grouped = source.view(source.shape[0], groups, group_in).transpose(0, 1).contiguous()
        bias = None if self.pos_bias is None else self.pos_bias.view(groups, 1, per_group)
        out = []
        for first in range(0, frames, SHORT_BLOCK_FRAMES):  # bounds the unfolded copy (~25 MB)
            n = min(SHORT_BLOCK_FRAMES, frames - first)
            # row t: frames t .. t + kernel - 1 of the group, back to back in `grouped`
            rows = grouped.as_strided((groups, n, span), (grouped.stride(0), group_in, 1), first * group_in)
            if bias is None:
                out.append(torch.bmm(rows, self.pos_matrix))
            else:
                out.append(torch.baddbmm(bias, rows, self.pos_matrix))
        return torch.cat(out, dim=1).transpose(0, 1).reshape(frames, groups * per_group)

    def _block(
        self,
        block: nn.Module,
        x: torch.Tensor,
        caches: list[KeyValues | None],
        sizes: list[int],
        index: int,
    ) -> torch.Tensor:
        attn = block.attention
        normed = block.layer_norm(x) if self.stable else x
        q, k, v = attn.q_proj(normed), attn.k_proj(normed), attn.v_proj(normed)
        mixed, start = [], 0
        for cache, n in zip(caches, sizes, strict=True):
            rows = slice(start, start + n)
            keys, values = k[rows], v[rows]
            if cache is not None:  # write this layer's new keys/values after the past, attend to all
                done = cache.frames + n
                layer = cache.buffer[index]
                layer[0, cache.frames : done] = keys
                layer[1, cache.frames : done] = values
                keys, values = layer[0, :done], layer[1, :done]
            mixed.append(self._attend(q[rows], keys, values))
            start += n
        x = x + attn.out_proj(torch.cat(mixed))
        if self.stable:
            ff = block.feed_forward
            x = x + _feed_forward(ff, block.final_layer_norm(x))
            if getattr(block, "adapter_layer", None) is not None:
                x = x + block.adapter_layer(x)
            return x
        x = block.layer_norm(x)
        x = x + _feed_forward(block.feed_forward, x)
        return block.final_layer_norm(x)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        heads, dim = self.heads, self.hidden_size // self.heads
        # [1, heads, T, dim]: the 4-D layout takes torch's fused CPU kernel (3-D takes the slower
        # generic path); the scale is head_dim ** -0.5, as in the stock module
        split = [t.view(1, t.shape[0], heads, dim).transpose(1, 2) for t in (q, k, v)]
        out = F.scaled_dot_product_attention(*split)
        return out.transpose(1, 2).reshape(q.shape[0], self.hidden_size)


def _feed_forward(ff: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return ff.output_dense(ff.intermediate_act_fn(ff.intermediate_dense(x)))
