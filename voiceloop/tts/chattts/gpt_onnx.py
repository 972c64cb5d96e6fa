"""The GPT's transformer stack as one onnxruntime graph per step (the CPU backend).

Why: at batch 1 a generation step is a chain of ~20 small products per layer. In eager torch each
costs dispatch overhead, and the dynamic int8 linear (fbgemm, per-tensor activation scale) reads its
weights well below the memory bandwidth. onnxruntime runs the whole step in native code: int8
products (``DynamicQuantizeMatMul``: per-channel int8 weights, activations quantized per call, as
torch's dynamic int8 linear but a faster kernel) and ``GroupQueryAttention``,
which applies the rotary embedding and writes the new keys/values in place into our preallocated
cache (its past and present buffers are the same memory). ``benchmarks/gpt_step.py`` times a step
of the full 20-layer GPT against the torch stacks, side by side; ``benchmarks/tts.py`` has the
end-to-end rows.

The graph is built here, in memory, from :class:`LeanLlama`'s fused weights; it computes the same
function (fp32 agrees within 1e-5; int8 weights get one scale per output channel, finer than
torch's per-tensor default, and 7 bits: see :mod:`voiceloop.ortgraph`). Batches with left
padding are compacted to right padding, which the attention op supports natively through a length
per row. Several concurrent sequences' steps go to the torch stack (:meth:`OrtLlama.forward_rows`).
"""

from __future__ import annotations

import numpy as np
import torch

from ...ortgraph import cpu_session, model_of, product
from .llama import KvCache, LeanLlama

MAX_POSITIONS = 8192  # rotary table rows: far beyond a sentence's prompt + 2048 generated steps


class RaggedKvCache(KvCache):
    """A :class:`KvCache` whose rows may hold different numbers of positions (right-aligned padding
    is never stored: row ``b`` holds its ``lengths[b]`` real positions at the front)."""

    def __init__(self, layers: int, batch: int, heads: int, head_dim: int) -> None:
        super().__init__(layers, batch, heads, head_dim, torch.float32, "cpu")
        self.lengths = torch.zeros(batch, dtype=torch.int32)
        self.binding = None  # the session's IOBinding with these buffers bound (rebound on growth)
        self.bound_capacity = -1


def build_graph(lean: LeanLlama, quantize: str | None):
    """The ONNX model of one step: ``embeds [B, S, hidden]``, ``seqlens_k [B]`` (positions held
    after this call, minus one), ``total_len`` and per-layer shared key/value buffers in;
    final-normed ``hidden [B, S, hidden]`` out."""
    from onnx import TensorProto, helper, numpy_helper

    hidden, heads, head_dim = lean.hidden, lean.heads, lean.head_dim
    weights, nodes = [], []

    def const(name: str, array: np.ndarray) -> str:
        weights.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> None:
        nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0], domain=domain, **attrs))

    def linear(x: str, module: torch.nn.Linear, out: str) -> str:
        made, consts = product(x, module.weight.detach().float().numpy(), out, quantize)
        nodes.append(made)
        weights.extend(consts)
        return out

    def norm(x: str, gain: torch.Tensor, out: str) -> str:
        node(
            "SimplifiedLayerNormalization",
            [x, const(out + ".g", gain.detach().float().numpy())],
            [out],
            axis=-1,
            epsilon=lean.eps,
            stash_type=1,
        )
        return out

    angles = np.arange(MAX_POSITIONS, dtype=np.float32)[:, None] * lean.inv_freq.numpy()[None]
    cos, sin = const("cos", np.cos(angles)), const("sin", np.sin(angles))
    f32, i32 = TensorProto.FLOAT, TensorProto.INT32
    kv_shape = ["batch", heads, "capacity", head_dim]
    inputs = [
        helper.make_tensor_value_info("embeds", f32, ["batch", "steps", hidden]),
        helper.make_tensor_value_info("seqlens_k", i32, ["batch"]),
        helper.make_tensor_value_info("total_len", i32, []),
    ]
    outputs = [helper.make_tensor_value_info("hidden", f32, ["batch", "steps", hidden])]
    x = "embeds"
    for i, layer in enumerate(lean.layers):
        key, value, at = f"key_{i}", f"value_{i}", f"layer{i}"
        inputs += [helper.make_tensor_value_info(f"past_{n}", f32, kv_shape) for n in (key, value)]
        outputs += [helper.make_tensor_value_info(f"present_{n}", f32, kv_shape) for n in (key, value)]
        qkv = linear(norm(x, layer.norm_in, at + ".norm_in"), layer.qkv, at + ".qkv")
        node(
            "GroupQueryAttention",
            [qkv, "", "", f"past_{key}", f"past_{value}", "seqlens_k", "total_len", cos, sin],
            [at + ".attn", f"present_{key}", f"present_{value}"],
            "com.microsoft",
            num_heads=heads,
            kv_num_heads=heads,
            do_rotary=1,
            rotary_interleaved=0,
        )
        node("Add", [x, linear(at + ".attn", layer.o, at + ".o")], [at + ".mid"])
        gate_up = linear(norm(at + ".mid", layer.norm_post, at + ".norm_post"), layer.gate_up, at + ".gu")
        node("Split", [gate_up], [at + ".gate", at + ".up"], axis=-1, num_outputs=2)
        node("Sigmoid", [at + ".gate"], [at + ".sig"])
        node("Mul", [at + ".gate", at + ".sig"], [at + ".silu"])
        node("Mul", [at + ".silu", at + ".up"], [at + ".act"])
        node("Add", [at + ".mid", linear(at + ".act", layer.down, at + ".down")], [at + ".out"])
        x = at + ".out"
    norm(x, lean.norm, "hidden")
    return model_of(helper.make_graph(nodes, "chattts_gpt_step", inputs, outputs, weights))


class OrtHeads:
    """Output heads (``[N_i, hidden]`` weights) as one product per step: ``[B, hidden]`` →
    ``[B, len(heads), N]``. The four code heads are one int8 read instead of four float32 calls."""

    def __init__(self, weights: list[torch.Tensor], *, quantize: str | None, threads: int | None) -> None:
        from onnx import TensorProto, helper

        stacked = torch.cat([w.detach().float() for w in weights]).numpy()
        self.count, self.width = len(weights), weights[0].shape[0]
        made, consts = product("hidden", stacked, "logits", quantize)
        f32 = TensorProto.FLOAT
        graph = helper.make_graph(
            [made],
            "chattts_heads",
            [helper.make_tensor_value_info("hidden", f32, ["batch", stacked.shape[1]])],
            [helper.make_tensor_value_info("logits", f32, ["batch", stacked.shape[0]])],
            consts,
        )
        self.session = cpu_session(model_of(graph), threads, "GPT heads")

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {"hidden": hidden.float().contiguous().numpy()})
        return torch.from_numpy(logits).view(hidden.shape[0], self.count, self.width)


class OrtLlama:
    """:class:`LeanLlama`'s generation interface (``new_cache``, ``__call__``, ``forward_rows``)
    on an onnxruntime session. CPU only; float32 activations; ``quantize`` None or "int8"."""

    def __init__(self, lean: LeanLlama, *, quantize: str | None = None, threads: int | None = None) -> None:
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
        self.hidden, self.heads, self.head_dim = lean.hidden, lean.heads, lean.head_dim
        self.num_layers = len(lean.layers)
        self.quantize = quantize
        self.session = cpu_session(build_graph(lean, quantize), threads, "GPT")
        self.max_positions = MAX_POSITIONS  # the graph's rotary table ends here
        #: the torch stack on the same weights, for several sequences' steps at once (see forward_rows)
        self.batched: LeanLlama | None = None

    def with_batched(self, lean: LeanLlama) -> OrtLlama:
        """Let ``lean`` (the same weights, quantized alike or not) run multi-row steps."""
        self.batched = lean
        return self

    def new_cache(self, batch: int, dtype: torch.dtype = torch.float32, device="cpu") -> RaggedKvCache:
        if dtype != torch.float32 or torch.device(device).type != "cpu":
            raise ValueError("the onnx GPT backend keeps a float32 cache on the CPU")
        return RaggedKvCache(self.num_layers, batch, self.heads, self.head_dim)

    @torch.inference_mode()
    def __call__(
        self, embeds: torch.Tensor, positions: torch.Tensor, cache: KvCache, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Same contract as :meth:`LeanLlama.forward`. ``positions`` must be what the tokens' places
        imply (``cumsum(valid) - 1``), as :meth:`ChatTtsGpt.generate` passes: the attention op
        derives them from the per-row lengths."""
        if not isinstance(cache, RaggedKvCache):
            raise TypeError("use OrtLlama.new_cache() for this backend's cache")
        batch, steps, _ = embeds.shape
        embeds = embeds.float().contiguous()
        if steps == 1:
            return self._run(embeds, cache, cache.lengths + 1)
        if cache.length:
            raise ValueError("the onnx GPT backend takes a multi-position input only as the first pass")
        if valid is None:
            return self._run(embeds, cache, torch.full((batch,), steps, dtype=torch.int32))
        # Left-padded prompt: move each row's real positions to the front (right padding).
        keep = valid[:, -steps:].bool()
        counts = keep.sum(1).to(torch.int32)
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # real first, in order
        compact = torch.gather(embeds, 1, order[..., None].expand_as(embeds)).contiguous()
        out = self._run(compact, cache, counts)
        aligned = torch.zeros_like(out)
        aligned.scatter_(1, order[..., None].expand_as(out), out)  # back to the caller's layout
        return aligned.masked_fill_(~keep[..., None], 0.0)  # padding slots: zeros, not garbage

    @torch.inference_mode()
    def forward_rows(self, rows: list[tuple[torch.Tensor, torch.Tensor, KvCache]]) -> list[torch.Tensor]:
        """Several sequences' next positions (concurrent sessions). One graph call binds one
        sequence's cache buffers, so two or more rows go to :attr:`batched`, the torch stack, which
        reads the weights once for all rows, on the same cache buffers; one row stays here, where
        a single step is faster (``benchmarks/gpt_step.py`` times both ways for 1-8 rows)."""
        if self.batched is None or len(rows) < 2:
            return [self(embeds, positions, cache) for embeds, positions, cache in rows]
        out = self.batched.forward_rows(rows)
        for _, _, cache in rows:
            if isinstance(cache, RaggedKvCache):
                cache.lengths = torch.tensor([cache.length], dtype=torch.int32)
        return out

    def _run(self, embeds: torch.Tensor, cache: RaggedKvCache, lengths: torch.Tensor) -> torch.Tensor:
        batch, steps, hidden = embeds.shape
        if batch != cache.shape[0]:
            raise ValueError(f"batch {batch} does not match the cache's {cache.shape[0]}")
        total = int(lengths.max())
        if total > self.max_positions:
            raise ValueError(f"the onnx GPT graph holds {self.max_positions} positions; {total} asked")
        cache.reserve(total)
        binding = cache.binding
        if binding is None or cache.bound_capacity != cache.capacity:
            binding = cache.binding = self.session.io_binding()
            for i in range(self.num_layers):
                for name, store in ((f"key_{i}", cache.keys[i]), (f"value_{i}", cache.values[i])):
                    shape = list(store.shape)
                    binding.bind_input(f"past_{name}", "cpu", 0, np.float32, shape, store.data_ptr())
                    binding.bind_output(f"present_{name}", "cpu", 0, np.float32, shape, store.data_ptr())
            cache.bound_capacity = cache.capacity
        seqlens = (lengths - 1).to(torch.int32).contiguous()
        total_len = torch.tensor(total, dtype=torch.int32)
        out = torch.empty(batch, steps, hidden)
        binding.bind_input("embeds", "cpu", 0, np.float32, [batch, steps, hidden], embeds.data_ptr())
        binding.bind_input("seqlens_k", "cpu", 0, np.int32, [batch], seqlens.data_ptr())
        binding.bind_input("total_len", "cpu", 0, np.int32, [], total_len.data_ptr())
        binding.bind_output("hidden", "cpu", 0, np.float32, [batch, steps, hidden], out.data_ptr())
        self.session.run_with_iobinding(binding)
        cache.lengths = lengths.to(torch.int32)
        cache.length = total
        return out
