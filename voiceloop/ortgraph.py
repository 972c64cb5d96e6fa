"""Building blocks for graphs built in memory for onnxruntime (the TTS GPT step and its heads).

Built at load time from the loaded torch weights, run on the CPU; products quantized as
per-output-channel symmetric int8 weights for ``DynamicQuantizeMatMul`` (activations quantized to
uint8 per call). The weights keep 7 bits (±63): without AVX-512 VNNI the uint8×int8 kernel adds
pairs of products in saturating 16-bit lanes (2·255·127 overflows). On an experimental encoder
graph for the tiny ASR fixture ±127 weights drifted several times further from fp32 than ±63 (which
drifted about as far as torch's int8); on the GPT ±63 keeps int8 at cosine ≥ 0.99 of fp32
(tests/test_tts_gpt_onnx.py).
"""

from __future__ import annotations

import numpy as np
import torch

#: IR version written: 10 is what onnxruntime 1.18 (our floor) reads; onnx 1.23 would stamp 14,
#: which older runtimes refuse (seen with onnxruntime 1.30 on a GPU machine).
IR_VERSION = 10
WEIGHT_RANGE = 63


class GraphLoadError(RuntimeError):
    """onnxruntime could not load a graph (too old a runtime, a missing kernel)."""


def available() -> bool:
    """Whether onnx and onnxruntime (the ``onnx`` extra) import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def quantize_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, K]`` float weights → (int8 ``[K, N]``, fp32 scale per output column ``[N]``)."""
    scale = np.abs(weight).max(1) / WEIGHT_RANGE
    scale[scale == 0] = 1.0
    codes = np.clip(np.rint(weight / scale[:, None]), -WEIGHT_RANGE, WEIGHT_RANGE).astype(np.int8)
    return np.ascontiguousarray(codes.T), scale.astype(np.float32)


def product(x: str, weight: np.ndarray, out: str, quantize: str | None):
    """The node and initializers computing ``out = x @ weight.T`` (``weight`` ``[N, K]``), int8
    (``quantize="int8"``) or float."""
    from onnx import helper, numpy_helper

    if quantize == "int8":
        codes, scales = quantize_columns(weight)
        consts = [numpy_helper.from_array(codes, out + ".q"), numpy_helper.from_array(scales, out + ".s")]
        inputs = [x, out + ".q", out + ".s"]
        return helper.make_node(
            "DynamicQuantizeMatMul", inputs, [out], name=out, domain="com.microsoft"
        ), consts
    consts = [numpy_helper.from_array(np.ascontiguousarray(weight.T), out + ".w")]
    return helper.make_node("MatMul", [x, out + ".w"], [out], name=out), consts


def model_of(graph):
    """A ModelProto for ``graph`` with the opsets these graphs use (ONNX 18, com.microsoft 1)."""
    from onnx import helper

    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def cpu_session(model, threads: int | None, what: str):
    """An onnxruntime CPU session for ``model`` (an in-memory ModelProto)."""
    import onnxruntime as ort

    model.ir_version = min(model.ir_version, IR_VERSION)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # No busy-waiting between calls: the other engine and the decoder share these cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise GraphLoadError(f"onnxruntime {ort.__version__} cannot run the {what} graph: {exc}") from exc
