"""The streaming encoder's transformer layers as one onnxruntime graph per step (the CPU runtime).

Why: on 2 CPU cores onnxruntime runs this model's int8 products (``DynamicQuantizeMatMul``, one
scale per output channel) and fused attention ~1.6x faster than torch's dynamic int8 linears
(one offline pass over 8 s of the XLSR-large geometry: RTF 0.21 vs 0.34). The graph is built in
memory from the loaded checkpoint's float weights, computes what :class:`LeanEncoder` computes for
one stream's step — the new frames attend to the cached keys/values of earlier frames plus
themselves — and returns the same things: log-probs and the new frames' keys/values. The
positional convolution (a few percent of a step) stays in torch; steps that capture a hidden layer
(embeddings) go to the torch encoder.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..ortgraph import GraphLoadError, available, cpu_session, quantize_columns
from .encoder import EncoderResult, EncoderStep, KeyValues, LeanEncoder

__all__ = ["GraphLoadError", "OrtEncoder", "available", "build_graph"]


def build_graph(model: nn.Module, quantize: str | None):
    """``x [T, hidden]`` (after the positional conv) and ``past [layers, 2, P, hidden]`` in;
    ``log_probs [T, vocab]`` and ``key_values [layers, 2, T, hidden]`` out."""
    from onnx import TensorProto, helper, numpy_helper

    config = model.config
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    stable = bool(config.do_stable_layer_norm)
    encoder = model.wav2vec2.encoder
    weights, nodes = [], []

    def const(name: str, array) -> str:
        array = np.asarray(array)  # (ascontiguousarray would make a 0-d index 1-d)
        weights.append(
            numpy_helper.from_array(array if array.ndim == 0 else np.ascontiguousarray(array), name)
        )
        return name

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0], domain=domain, **attrs))
        return outputs[0]

    def linear(x: str, modules: list[nn.Linear], out: str) -> str:
        w = torch.cat([m.weight.detach().float() for m in modules]).numpy()
        b = torch.cat([m.bias.detach().float() for m in modules]).numpy()
        if quantize == "int8":
            codes, scales = quantize_columns(w)
            parts = [x, const(out + ".q", codes), const(out + ".s", scales), "", const(out + ".b", b)]
            return node("DynamicQuantizeMatMul", parts, [out], "com.microsoft")
        product = node("MatMul", [x, const(out + ".w", w.T)], [out + ".mm"])
        return node("Add", [product, const(out + ".b", b)], [out])

    def norm(x: str, module: nn.LayerNorm, out: str) -> str:
        gain = const(out + ".g", module.weight.detach().float().numpy())
        bias = const(out + ".b", module.bias.detach().float().numpy())
        return node("LayerNormalization", [x, gain, bias], [out], axis=-1, epsilon=float(module.eps))

    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("x", f32, ["frames", hidden]),
        helper.make_tensor_value_info("past", f32, [len(encoder.layers), 2, "past_frames", hidden]),
    ]
    vocab = int(model.lm_head.out_features)
    outputs = [
        helper.make_tensor_value_info("log_probs", f32, ["frames", vocab]),
        helper.make_tensor_value_info("key_values", f32, [len(encoder.layers), 2, "frames", hidden]),
    ]
    axis0 = const("axis0", np.array([0], np.int64))
    x = "x" if stable else norm("x", encoder.layer_norm, "input_norm")
    layer_kv = []
    for i, block in enumerate(encoder.layers):
        at, attn = f"layer{i}", block.attention
        normed = norm(x, block.layer_norm, at + ".norm") if stable else x
        qkv = linear(normed, [attn.q_proj, attn.k_proj, attn.v_proj], at + ".qkv")
        q, k, v = (at + s for s in (".q", ".k", ".v"))
        node("Split", [qkv], [q, k, v], axis=-1, num_outputs=3)
        new_kv = node(
            "Concat", [node("Unsqueeze", [t, axis0], [t + ".u"]) for t in (k, v)], [at + ".kv"], axis=0
        )
        layer_kv.append(node("Unsqueeze", [new_kv, axis0], [at + ".kv.u"]))  # [1, 2, T, hidden]
        index = const(at + ".index", np.array(i, np.int64))
        past = node("Gather", ["past", index], [at + ".past"], axis=0)  # [2, P, hidden]
        both = node("Concat", [past, new_kv], [at + ".all"], axis=1)  # [2, P + T, hidden]
        keys, values = at + ".keys", at + ".values"
        node("Split", [both], [keys + ".s", values + ".s"], axis=0, num_outputs=2)
        node("Squeeze", [keys + ".s", axis0], [keys])
        node("Squeeze", [values + ".s", axis0], [values])
        batched = [node("Unsqueeze", [t, axis0], [t + ".b"]) for t in (q, keys, values)]  # [1, S, hidden]
        mixed = node("MultiHeadAttention", batched, [at + ".mha"], "com.microsoft", num_heads=heads)
        mixed = node("Squeeze", [mixed, axis0], [at + ".mixed"])
        x = node("Add", [x, linear(mixed, [attn.out_proj], at + ".o")], [at + ".mid"])
        ff = block.feed_forward
        if stable:
            inner = linear(
                norm(x, block.final_layer_norm, at + ".ffnorm"), [ff.intermediate_dense], at + ".up"
            )
            act = node("Gelu", [inner], [at + ".gelu"], "com.microsoft")
            x = node("Add", [x, linear(act, [ff.output_dense], at + ".down")], [at + ".out"])
        else:
            x = norm(x, block.layer_norm, at + ".postnorm")
            inner = linear(x, [ff.intermediate_dense], at + ".up")
            act = node("Gelu", [inner], [at + ".gelu"], "com.microsoft")
            x = node("Add", [x, linear(act, [ff.output_dense], at + ".down")], [at + ".sum"])
            x = norm(x, block.final_layer_norm, at + ".out")
    if stable:
        x = norm(x, encoder.layer_norm, "final_norm")
    logits = linear(x, [model.lm_head], "logits")
    node("LogSoftmax", [logits], ["log_probs"], axis=-1)
    node("Concat", layer_kv, ["key_values"], axis=0)
    graph = helper.make_graph(nodes, "wav2vec2_streaming_step", inputs, outputs, weights)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model_proto = helper.make_model(graph, opset_imports=opsets)
    return model_proto


class OrtEncoder:
    """:class:`LeanEncoder`'s ``run`` with the layers on onnxruntime (one stream per graph call)."""

    def __init__(self, model: nn.Module, *, quantize: str | None, threads: int | None) -> None:
        """Build from ``model``'s float weights (before any torch quantization); :meth:`attach` the
        torch encoder (positional conv, hidden-layer captures) once it exists."""
        if getattr(model.config, "hidden_act", "gelu") != "gelu":
            raise GraphLoadError(f"the onnx encoder supports gelu only, not {model.config.hidden_act!r}")
        self.lean: LeanEncoder | None = None
        self.layers, self.hidden_size = int(model.config.num_hidden_layers), int(model.config.hidden_size)
        self.session = cpu_session(build_graph(model, quantize), threads, "encoder")

    def attach(self, lean: LeanEncoder) -> OrtEncoder:
        self.lean = lean
        self.pos_reach = lean.pos_reach
        return self

    @property
    def num_layers(self) -> int:
        return self.layers

    @torch.inference_mode()
    def run(
        self, steps: list[EncoderStep], *, layer: int | None = None, key_values: bool = False
    ) -> list[EncoderResult]:
        if layer is not None:  # a captured hidden layer (embeddings): the torch encoder has it
            return self.lean.run(steps, layer=layer, key_values=key_values)
        return [self._one(step, key_values) for step in steps]

    def _one(self, step: EncoderStep, key_values: bool) -> EncoderResult:
        x = self.lean._positional(step).float().contiguous()
        if x.shape[0] == 0:
            empty = KeyValues(torch.empty(self.layers, 2, 0, self.hidden_size))
            vocab = self.lean.head.out_features
            return EncoderResult(torch.empty(0, vocab), None, empty if key_values else None)
        if step.past is not None and step.past.frames:
            past = step.past.tensor.float().contiguous()
        else:
            past = torch.empty(self.layers, 2, 0, self.hidden_size)
        log_probs, kv = self.session.run(None, {"x": x.numpy(), "past": past.numpy()})
        return EncoderResult(
            torch.from_numpy(log_probs), None, KeyValues(torch.from_numpy(kv)) if key_values else None
        )
