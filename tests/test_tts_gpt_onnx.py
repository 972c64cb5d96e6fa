"""The onnxruntime GPT backend computes what the torch lean stack computes (the goldens in
test_tts_parity run on both backends; these cover what they do not: cache growth, ragged rows,
concurrent sessions' rows, int8, backend choice and misuse)."""

from __future__ import annotations

import pytest
import torch

from voiceloop.compute import ModelOptions
from voiceloop.ortgraph import GraphLoadError
from voiceloop.tts.chattts.engine import ChatTtsOptions
from voiceloop.tts.chattts.gpt import ChatTtsGpt
from voiceloop.tts.chattts.gpt_onnx import OrtLlama, RaggedKvCache
from voiceloop.tts.chattts.llama import LeanLlama

pytest.importorskip("onnxruntime", reason="the onnx GPT backend needs the onnx extra")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lean(chattts_root) -> LeanLlama:
    return ChatTtsGpt.load(chattts_root, ModelOptions(device="cpu")).llama


@pytest.fixture(scope="module")
def fp32(lean) -> OrtLlama:
    return OrtLlama(lean, threads=1)


def _positions(start: int, steps: int) -> torch.Tensor:
    return torch.arange(start, start + steps)[None]


def test_a_long_generation_matches_the_torch_stack_across_cache_growth(lean, fp32) -> None:
    torch.manual_seed(0)
    prompt = torch.randn(1, 9, lean.hidden)
    mine, theirs = fp32.new_cache(1), lean.new_cache(1, torch.float32, "cpu")
    torch.testing.assert_close(fp32(prompt, _positions(0, 9), mine), lean(prompt, _positions(0, 9), theirs))
    capacities = {mine.capacity}
    for step in range(300):  # 309 positions: the 256-slot cache doubles (buffers rebound) mid-run
        x = torch.randn(1, 1, lean.hidden)
        want = lean(x, _positions(9 + step, 1), theirs)
        have = fp32(x, _positions(9 + step, 1), mine)
        torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-4)
        capacities.add(mine.capacity)
    assert capacities == {256, 512}
    assert mine.length == theirs.length == 309
    assert mine.lengths.tolist() == [309]


def test_a_left_padded_batch_matches_the_torch_stack(lean, fp32) -> None:
    torch.manual_seed(1)
    valid = torch.ones(3, 10, dtype=torch.bool)
    valid[1, :6] = False
    valid[2, :1] = False
    mask = valid.long()
    positions = (mask.cumsum(-1) - 1).masked_fill(mask.eq(0), 1)
    prompt = torch.randn(3, 10, lean.hidden)
    mine, theirs = fp32.new_cache(3), lean.new_cache(3, torch.float32, "cpu")
    have, want = fp32(prompt, positions, mine, valid), lean(prompt, positions, theirs, valid)
    torch.testing.assert_close(have[valid], want[valid], rtol=1e-4, atol=1e-4)
    assert not have[~valid].any()  # padding slots come back as zeros, in the caller's layout
    assert mine.lengths.tolist() == [10, 4, 9]
    for _ in range(5):
        x = torch.randn(3, 1, lean.hidden)
        valid = torch.cat([valid, torch.ones(3, 1, dtype=torch.bool)], 1)
        positions = positions[:, -1:] + 1
        want = lean(x, positions, theirs, valid)
        torch.testing.assert_close(fp32(x, positions, mine, valid), want, rtol=1e-4, atol=1e-4)
    assert mine.lengths.tolist() == [15, 9, 14]


def test_rows_of_separate_sequences_match_each_sequence_alone(lean, fp32) -> None:
    torch.manual_seed(2)
    prompts = [torch.randn(1, n, lean.hidden) for n in (3, 11)]
    ort_caches = [fp32.new_cache(1) for _ in prompts]
    torch_caches = [lean.new_cache(1, torch.float32, "cpu") for _ in prompts]
    for prompt, mine, theirs in zip(prompts, ort_caches, torch_caches, strict=True):
        fp32(prompt, _positions(0, prompt.shape[1]), mine)
        lean(prompt, _positions(0, prompt.shape[1]), theirs)
    embeds = [torch.randn(1, 1, lean.hidden) for _ in prompts]
    positions = [_positions(c.length, 1) for c in torch_caches]
    got = fp32.forward_rows(list(zip(embeds, positions, ort_caches, strict=True)))
    for e, p, c, have in zip(embeds, positions, torch_caches, got, strict=True):
        torch.testing.assert_close(have, lean(e, p, c), rtol=1e-4, atol=1e-4)


def test_int8_stays_close_to_float(lean, fp32) -> None:
    int8 = OrtLlama(lean, quantize="int8", threads=1)
    torch.manual_seed(3)
    prompt = torch.randn(1, 12, lean.hidden)
    a, b = fp32.new_cache(1), int8.new_cache(1)
    outs = [(fp32(prompt, _positions(0, 12), a), int8(prompt, _positions(0, 12), b))]
    for step in range(20):
        x = torch.randn(1, 1, lean.hidden)
        outs.append((fp32(x, _positions(12 + step, 1), a), int8(x, _positions(12 + step, 1), b)))
    for want, have in outs:
        cosine = torch.nn.functional.cosine_similarity(have.flatten(0, 1), want.flatten(0, 1), dim=-1)
        assert float(cosine.min()) > 0.99
        assert not torch.equal(have, want)  # it really is a different (quantized) computation


def test_auto_picks_onnxruntime_on_the_cpu_in_fp32_or_int8(chattts_root) -> None:
    assert ChatTtsOptions(model=ModelOptions(device="cpu")).resolved_gpt_backend() == "onnx"
    assert ChatTtsOptions(model=ModelOptions(quantize="int8")).resolved_gpt_backend() == "onnx"
    assert ChatTtsOptions(model=ModelOptions(device="cpu", dtype="bf16")).resolved_gpt_backend() == "torch"
    pinned = ChatTtsOptions(model=ModelOptions(device="cpu"), gpt_backend="torch")
    assert pinned.resolved_gpt_backend() == "torch"
    gpt = ChatTtsGpt.load(chattts_root, ModelOptions(device="cpu", quantize="int8"), backend="onnx")
    assert isinstance(gpt.llama, OrtLlama) and gpt.llama.quantize == "int8"


def test_misuse_is_rejected_clearly(chattts_root, lean, fp32) -> None:
    with pytest.raises(ValueError, match="gpt_backend"):
        ChatTtsOptions(gpt_backend="tensorrt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend must be"):
        ChatTtsGpt.load(chattts_root, ModelOptions(device="cpu"), backend="tensorrt")
    with pytest.raises(ValueError, match="CPU in fp32 or int8"):
        ChatTtsGpt.load(chattts_root, ModelOptions(device="cpu", dtype="bf16"), backend="onnx")
    with pytest.raises(TypeError, match="new_cache"):
        fp32(torch.randn(1, 2, lean.hidden), _positions(0, 2), lean.new_cache(1, torch.float32, "cpu"))
    cache = fp32.new_cache(1)
    fp32(torch.randn(1, 2, lean.hidden), _positions(0, 2), cache)
    with pytest.raises(ValueError, match="first pass"):
        fp32(torch.randn(1, 2, lean.hidden), _positions(2, 2), cache)
    short = OrtLlama(lean, threads=1)
    short.max_positions = 4  # the rotary table's end, brought near
    with pytest.raises(ValueError, match="holds 4 positions; 5 asked"):
        short(torch.randn(1, 5, lean.hidden), _positions(0, 5), short.new_cache(1))
    with pytest.raises(ValueError, match="float32 cache on the CPU"):
        fp32.new_cache(1, torch.bfloat16)
    assert isinstance(cache, RaggedKvCache)


def test_graphs_are_stamped_for_older_runtimes(lean) -> None:
    """onnx 1.23 writes IR 14, which onnxruntime < 1.2x refuses (seen on a GPU machine): write IR 10."""
    from voiceloop.ortgraph import IR_VERSION, cpu_session
    from voiceloop.tts.chattts.gpt_onnx import build_graph

    model = build_graph(lean, None)
    cpu_session(model, 1, "GPT")
    assert model.ir_version == IR_VERSION == 10


def test_auto_falls_back_to_torch_when_onnxruntime_cannot_run_the_graph(chattts_root, monkeypatch) -> None:
    from voiceloop.tts.chattts import gpt_onnx
    from voiceloop.tts.chattts.engine import ChatTts

    def refuse(model, threads, what):
        raise GraphLoadError(f"onnxruntime 1.0 cannot run the {what} graph: too old")

    monkeypatch.setattr(gpt_onnx, "cpu_session", refuse)
    engine = ChatTts.from_pretrained(str(chattts_root), ChatTtsOptions(model=ModelOptions(device="cpu")))
    try:
        assert isinstance(engine.gpt.llama, LeanLlama)
    finally:
        engine.lane.close()
    with pytest.raises(GraphLoadError, match="too old"):
        cpu = ModelOptions(device="cpu")
        ChatTts.from_pretrained(str(chattts_root), ChatTtsOptions(model=cpu, gpt_backend="onnx"))


def test_int8_weights_keep_seven_bits_so_avx2_lanes_cannot_saturate() -> None:
    import numpy as np

    from voiceloop.ortgraph import WEIGHT_RANGE, quantize_columns

    weight = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    weight[2] = 0.0  # an all-zero output channel must not divide by zero
    codes, scales = quantize_columns(weight)
    assert codes.shape == (64, 5) and codes.dtype == np.int8 and scales.shape == (5,)
    assert int(np.abs(codes).max()) == WEIGHT_RANGE == 63  # 2 * 255 * 63 < 2**15: no 16-bit overflow
    np.testing.assert_allclose(codes.T * scales[:, None], weight, atol=float(scales.max()) / 2 + 1e-7)


def test_several_sessions_rows_run_batched_on_torch_and_single_steps_go_on_in_the_graph(lean) -> None:
    graph = OrtLlama(lean, threads=1).with_batched(lean)
    torch.manual_seed(4)
    prompts = [torch.randn(1, n, lean.hidden) for n in (3, 11, 6)]
    ours = [graph.new_cache(1) for _ in prompts]
    alone = [lean.new_cache(1, torch.float32, "cpu") for _ in prompts]
    for prompt, mine, theirs in zip(prompts, ours, alone, strict=True):
        graph(prompt, _positions(0, prompt.shape[1]), mine)
        lean(prompt, _positions(0, prompt.shape[1]), theirs)
    for _ in range(3):  # three sessions' steps together: the torch stack, on the graph's cache buffers
        embeds = [torch.randn(1, 1, lean.hidden) for _ in prompts]
        positions = [_positions(c.length, 1) for c in alone]
        got = graph.forward_rows(list(zip(embeds, positions, ours, strict=True)))
        for e, p, c, have in zip(embeds, positions, alone, got, strict=True):
            torch.testing.assert_close(have, lean(e, p, c), rtol=1e-4, atol=1e-4)
    assert [c.lengths.tolist() for c in ours] == [[6], [14], [9]]
    x = torch.randn(1, 1, lean.hidden)  # then one session alone again: back in the graph
    torch.testing.assert_close(graph(x, _positions(14, 1), ours[1]), lean(x, _positions(14, 1), alone[1]))


def test_the_loaded_onnx_gpt_batches_rows_on_its_torch_twin(chattts_root) -> None:
    gpt = ChatTtsGpt.load(chattts_root, ModelOptions(device="cpu", quantize="int8"), backend="onnx")
    assert isinstance(gpt.llama, OrtLlama) and isinstance(gpt.llama.batched, LeanLlama)
    assert type(gpt.llama.batched.layers[0].qkv) is torch.ao.nn.quantized.dynamic.Linear
