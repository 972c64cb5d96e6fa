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


@dataclass
class KeyValues:
    """Every layer's keys and values for a run of frames: ``[layers, 2, frames, hidden]``."""

    tensor: torch.Tensor

    @property
    def frames(self) -> int:
        return int(self.tensor.shape[2])

    def newest(self, keep: int) -> KeyValues:
        """The last ``keep`` frames, copied (a slice would keep a whole batch's tensor alive)."""
        return KeyValues(self.tensor[:, :, max(0, self.frames - keep) :].clone())

    def then(self, later: KeyValues, keep: int) -> KeyValues:
        """These frames followed by ``later``, cut to the last ``keep`` frames."""
        return KeyValues(torch.cat([self.tensor, later.tensor], dim=2)).newest(keep)


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
    """Per encoded frame: log-probs ``[T, V]`` (float32, CPU), an optional hidden layer, keys/values."""

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
        captured: torch.Tensor | None = None
        kv_layers: list[torch.Tensor] = []
        if x is not None and x.shape[0] > 0:
            if not self.stable:
                x = self.final_norm(x)
            for index, block in enumerate(self.layers):
                if layer == index:
                    captured = x
                x = self._block(block, x, steps, sizes, index, kv_layers if key_values else None)
            if layer == self.num_layers:
                captured = x
            if self.stable:
                x = self.final_norm(x)
            log_probs = torch.log_softmax(self.head(x).float(), dim=-1).cpu()
        else:
            log_probs = torch.empty(0, self.head.out_features)
        states = torch.empty(0, self.hidden_size) if captured is None else captured.float().cpu()
        kv = None
        if key_values:
            kv = torch.stack(kv_layers) if kv_layers else torch.empty(self.num_layers, 2, 0, self.hidden_size)
        results, start = [], 0
        for n in sizes:
            rows = slice(start, start + n)
            results.append(
                EncoderResult(
                    log_probs[rows],
                    None if layer is None else states[rows],
                    None if kv is None else KeyValues(kv[:, :, rows]),
                )
            )
            start += n
        return results

    def _positional(self, step: EncoderStep) -> torch.Tensor:
        """Frames plus their convolutional position embedding (zero padding at the input's edges)."""
        hidden, context, reach = step.hidden, step.context, self.pos_reach
        if step.frames <= 0:
            return hidden[:0]
        start = max(0, context - reach)
        source = hidden[start:].transpose(0, 1)[None]  # [1, H, frames]
        source = F.pad(source, (reach - (context - start), reach))
        pos = F.conv1d(source, self.pos_weight, self.pos_bias, groups=self.pos_groups)
        pos = self.pos_activation(pos[0, :, : step.frames]).transpose(0, 1)
        return hidden[context:] + pos

    def _block(
        self,
        block: nn.Module,
        x: torch.Tensor,
        steps: list[EncoderStep],
        sizes: list[int],
        index: int,
        kv_out: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        attn = block.attention
        normed = block.layer_norm(x) if self.stable else x
        q, k, v = attn.q_proj(normed), attn.k_proj(normed), attn.v_proj(normed)
        if kv_out is not None:
            kv_out.append(torch.stack([k, v]))
        mixed, start = [], 0
        for step, n in zip(steps, sizes, strict=True):
            rows = slice(start, start + n)
            keys, values = k[rows], v[rows]
            if step.past is not None and step.past.frames:
                keys = torch.cat([step.past.tensor[index, 0], keys])
                values = torch.cat([step.past.tensor[index, 1], values])
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
