"""Wav2Vec2Checkpoint on tiny random checkpoints in both on-disk layouts the real model ships in."""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.asr_fixtures import make_tiny_checkpoint, tiny_vocab
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

from voiceloop.asr.model import (
    DEFAULT_MODEL,
    ModelNotAvailable,
    ModelOptions,
    Vocabulary,
    Wav2Vec2Checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "2021": make_tiny_checkpoint(root / "2021", layout="2021", seed=3),
        "modern": make_tiny_checkpoint(root / "modern", layout="modern", seed=3),
        "group": make_tiny_checkpoint(root / "group", feat_extract_norm="group", do_stable_layer_norm=False),
    }


@pytest.fixture(scope="module")
def ckpt(dirs: dict[str, Path]) -> Wav2Vec2Checkpoint:
    return Wav2Vec2Checkpoint.from_pretrained(str(dirs["2021"]))


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal(16000) + 0.02).astype(np.float32)


def test_fixture_writes_the_2021_hub_layout(dirs: dict[str, Path]) -> None:
    files = sorted(p.name for p in dirs["2021"].iterdir())
    assert files == [
        "config.json",
        "preprocessor_config.json",
        "pytorch_model.bin",
        "special_tokens_map.json",
        "vocab.json",
    ]
    assert (dirs["2021"] / "preprocessor_config.json").stat().st_size == 158
    assert '"gradient_checkpointing": true' in (dirs["2021"] / "config.json").read_text()
    assert "\\u4f60" in (dirs["2021"] / "vocab.json").read_text()  # 你, ASCII-escaped like json.dump
    keys = torch.load(dirs["2021"] / "pytorch_model.bin", weights_only=True).keys()
    prefix = "wav2vec2.encoder.pos_conv_embed.conv."
    assert {prefix + "weight_g", prefix + "weight_v"} <= keys
    assert not any("parametrizations" in key for key in keys)


@pytest.mark.parametrize("layout", ["2021", "modern"])
def test_both_layouts_load_with_the_right_vocabulary_and_geometry(dirs: dict[str, Path], layout: str) -> None:
    ckpt = Wav2Vec2Checkpoint.from_pretrained(str(dirs[layout]))
    vocab = ckpt.vocab
    assert vocab.tokens == list(tiny_vocab())
    assert (vocab.blank_id, vocab.delimiter, vocab.special_ids) == (0, "|", frozenset({0, 1, 2, 3}))
    assert [vocab.text(i) for i in range(6)] == ["", "", "", "", " ", vocab.tokens[5]]
    assert len(vocab) == ckpt.model.config.vocab_size == 22
    assert (ckpt.sample_rate, ckpt.do_normalize, ckpt.name) == (16000, True, str(dirs[layout]))
    assert (ckpt.conv_stride, ckpt.conv_receptive_field, ckpt.local_conv) == (320, 400, True)
    assert (ckpt.hidden_size, ckpt.num_layers) == (32, 2)
    assert (ckpt.device, ckpt.dtype) == (torch.device("cpu"), torch.float32)
    assert not ckpt.model.training


def test_layouts_give_identical_log_probs(dirs: dict[str, Path], audio: np.ndarray) -> None:
    old = Wav2Vec2Checkpoint.from_pretrained(str(dirs["2021"])).log_probs(audio)
    new = Wav2Vec2Checkpoint.from_pretrained(str(dirs["modern"])).log_probs(audio)
    assert old.shape == (49, 22) and old.dtype == np.float32
    np.testing.assert_array_equal(old, new)


def test_log_probs_match_the_transformers_forward(ckpt: Wav2Vec2Checkpoint, audio: np.ndarray) -> None:
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(ckpt.name)
    reference_input = extractor(audio, sampling_rate=16000, return_tensors="np").input_values[0]
    np.testing.assert_allclose(ckpt.normalize(audio), reference_input, atol=1e-5)
    normalized = ckpt.normalize(audio)
    assert abs(normalized.mean()) < 1e-6 and abs(normalized.std() - 1) < 1e-4
    with torch.inference_mode():
        logits = ckpt.model(torch.from_numpy(normalized)[None]).logits[0]
    expected = torch.log_softmax(logits, dim=-1).numpy()
    assert np.abs(ckpt.log_probs(audio) - expected).max() < 1e-5
    np.testing.assert_allclose(np.exp(ckpt.log_probs(audio)).sum(-1), 1.0, atol=1e-5)


def test_encode_layers_use_transformers_hidden_state_numbering(
    ckpt: Wav2Vec2Checkpoint, audio: np.ndarray
) -> None:
    normalized = ckpt.normalize(audio)
    hidden = ckpt.project(ckpt.conv_features(normalized))
    with torch.inference_mode():
        reference = ckpt.model(torch.from_numpy(normalized)[None], output_hidden_states=True).hidden_states
    plain, none = ckpt.encode(hidden)
    assert none is None
    for layer in (0, 1, 2, -1, -3):
        log_probs, state = ckpt.encode(hidden, layer=layer)
        torch.testing.assert_close(log_probs, plain, rtol=0, atol=0)
        assert state is not None and state.dtype == torch.float32 and state.device.type == "cpu"
        # 1e-5: the conv features are matmuls here (float summation order), the stock module's convs there
        torch.testing.assert_close(state, reference[layer][0], rtol=0, atol=1e-5)
    for bad in (3, -4, 1.0, True):
        with pytest.raises(ValueError, match="layer"):
            ckpt.encode(hidden, layer=bad)  # type: ignore[arg-type]


def test_short_input_gives_empty_outputs(ckpt: Wav2Vec2Checkpoint) -> None:
    conv = ckpt.conv_features(np.zeros(399, np.float32))
    assert conv.shape == (0, 32)
    log_probs, state = ckpt.encode(ckpt.project(conv), layer=-1)
    assert log_probs.shape == (0, 22) and state is not None and state.shape == (0, 32)
    assert ckpt.log_probs(np.zeros(0, np.float32)).shape == (0, 22)
    assert ckpt.log_probs(np.zeros(400, np.float32)).shape == (1, 22)


def test_conv_features_of_a_slice_equal_the_full_signals_frames(
    ckpt: Wav2Vec2Checkpoint, audio: np.ndarray
) -> None:
    normalized = ckpt.normalize(audio)
    full = ckpt.conv_features(normalized)
    assert full.shape == (ckpt.frames_for(len(normalized)), 32)
    for start in (320, 960, 3200, 6400):
        part = ckpt.conv_features(normalized[start:])
        first = start // ckpt.conv_stride
        # Mathematically identical; oneDNN may pick another conv algorithm per input length (~1e-6).
        torch.testing.assert_close(part, full[first : first + len(part)], rtol=0, atol=1e-5)
        assert first + len(part) == len(full)
    torch.testing.assert_close(ckpt.project(full[10:20]), ckpt.project(full)[10:20], rtol=0, atol=1e-6)


def test_group_norm_encoders_are_not_local(dirs: dict[str, Path], audio: np.ndarray) -> None:
    ckpt = Wav2Vec2Checkpoint.from_pretrained(str(dirs["group"]))
    assert not ckpt.local_conv
    full = ckpt.conv_features(audio)
    part = ckpt.conv_features(audio[3200:])
    assert (part - full[10 : 10 + len(part)]).abs().max() > 1e-4  # GroupNorm statistics span the whole input


def test_frames_for_matches_the_conv_encoder(ckpt: Wav2Vec2Checkpoint) -> None:
    assert [ckpt.frames_for(n) for n in (0, 399, 400, 719, 720, 16000)] == [0, 0, 1, 1, 2, 49]
    for n in (400, 719, 720, 1039, 1040, 2345, 4000):
        assert ckpt.frames_for(n) == len(ckpt.conv_features(np.zeros(n, np.float32)))


def test_bf16_loads_and_runs(dirs: dict[str, Path], ckpt: Wav2Vec2Checkpoint, audio: np.ndarray) -> None:
    bf16 = Wav2Vec2Checkpoint.from_pretrained(str(dirs["2021"]), ModelOptions(device="cpu", dtype="bf16"))
    assert bf16.dtype == torch.bfloat16
    assert next(bf16.model.lm_head.parameters()).dtype == torch.bfloat16
    hidden = bf16.project(bf16.conv_features(bf16.normalize(audio)))
    assert hidden.dtype == torch.bfloat16
    log_probs, state = bf16.encode(hidden, layer=1)
    assert log_probs.dtype == torch.float32 and state is not None and state.dtype == torch.float32
    assert np.abs(bf16.log_probs(audio) - ckpt.log_probs(audio)).max() < 0.1


def test_int8_quantizes_every_linear_layer(
    dirs: dict[str, Path], ckpt: Wav2Vec2Checkpoint, audio: np.ndarray
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quantize_dynamic's deprecation noise is silenced locally
        int8 = Wav2Vec2Checkpoint.from_pretrained(str(dirs["2021"]), ModelOptions(quantize="int8"))
        log_probs = int8.log_probs(audio)
    quantized = torch.ao.nn.quantized.dynamic.Linear
    assert not any(type(m) is torch.nn.Linear for m in int8.model.modules())
    assert isinstance(int8.model.lm_head, quantized)
    assert isinstance(int8.model.wav2vec2.feature_projection.projection, quantized)
    assert (int8.device.type, int8.dtype) == ("cpu", torch.float32)
    assert np.isfinite(log_probs).all() and np.abs(log_probs - ckpt.log_probs(audio)).max() < 0.1


def test_int8_conv_runs_the_conv_feature_encoder_as_int8_matmuls(
    dirs: dict[str, Path], ckpt: Wav2Vec2Checkpoint, audio: np.ndarray
) -> None:
    options = ModelOptions(quantize="int8", int8_conv=True)
    int8 = Wav2Vec2Checkpoint.from_pretrained(str(dirs["2021"]), options)
    assert int8.matmul_conv is not None and int8.matmul_conv.int8
    plain = Wav2Vec2Checkpoint.from_pretrained(str(dirs["2021"]), ModelOptions(quantize="int8"))
    assert plain.matmul_conv is not None and not plain.matmul_conv.int8
    quantized = torch.ao.nn.quantized.dynamic.Linear
    assert all(isinstance(layer[0], quantized) for layer in int8.matmul_conv.layers)
    samples = int8.normalize(audio)
    features = int8.conv_features(samples)
    stock = ckpt.conv_features(samples)
    assert features.shape == stock.shape  # same frames, time-major, every layer's geometry
    assert float((features - stock).norm() / stock.norm()) < 0.1  # rounding (~5 %), not another function
    for n in (0, 399, 400, 401, 1234):  # edges: no frame, one frame, ragged
        assert int8.conv_features(samples[:n]).shape == ckpt.conv_features(samples[:n]).shape
    assert np.abs(int8.log_probs(audio) - ckpt.log_probs(audio)).max() < 0.2


def test_float_conv_features_run_as_matmuls_with_the_stock_result(
    dirs: dict[str, Path], ckpt: Wav2Vec2Checkpoint, audio: np.ndarray
) -> None:
    assert ckpt.matmul_conv is not None and not ckpt.matmul_conv.int8
    samples = ckpt.normalize(audio)
    stock_module = ckpt.model.wav2vec2.feature_extractor
    for n in (0, 399, 400, 401, 1234, len(samples)):  # edges: no frame, one frame, ragged, whole
        batch = torch.from_numpy(np.ascontiguousarray(samples[:n]))[None]
        ours = ckpt.conv_features(samples[:n])
        if ours.shape[0] == 0:
            assert ckpt.frames_for(n) == 0
            continue
        with torch.inference_mode():
            stock = stock_module(batch)[0].transpose(0, 1)
        torch.testing.assert_close(ours, stock, atol=1e-4, rtol=1e-4)
    group = Wav2Vec2Checkpoint.from_pretrained(str(dirs["group"]))
    assert group.matmul_conv is None  # GroupNorm over time: the stock module


@pytest.mark.parametrize(
    "kwargs",
    [
        {"device": "gpu"},
        {"device": "cuda:x"},
        {"dtype": "fp8"},
        {"quantize": "int4"},
        {"threads": 0},
        {"threads": True},
        {"dtype": "fp16", "device": "cpu"},
        {"quantize": "int8", "device": "cuda"},
        {"quantize": "int8", "dtype": "bf16"},
        {"int8_conv": True},
    ],
)
def test_bad_options_raise_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ModelOptions(**kwargs)  # type: ignore[arg-type]


CPU_ONLY = not (torch.cuda.is_available() or torch.backends.mps.is_available())


@pytest.mark.skipif(not CPU_ONLY, reason="needs a CPU-only host")
def test_fp16_on_a_cpu_host_is_refused(dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="fp16"):
        Wav2Vec2Checkpoint.from_pretrained(str(dirs["2021"]), ModelOptions(dtype="fp16"))
    with pytest.raises(ValueError, match="CUDA"):
        ModelOptions(device="cuda").resolve_device()
    assert ModelOptions(quantize="int8").resolve_device() == torch.device("cpu")


def test_apply_threads(dirs: dict[str, Path]) -> None:
    before = torch.get_num_threads()
    ckpt = Wav2Vec2Checkpoint.from_pretrained(str(dirs["2021"]), ModelOptions(threads=1))
    try:
        ckpt.apply_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    ckpt.threads = None
    ckpt.apply_threads()
    assert torch.get_num_threads() == before


def test_missing_or_bad_local_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="local directory") as missing:
        Wav2Vec2Checkpoint.from_pretrained(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(missing.value) and DEFAULT_MODEL in str(missing.value)
    with pytest.raises(ModelNotAvailable, match=r"lacks config\.json, vocab\.json"):
        Wav2Vec2Checkpoint.from_pretrained(str(tmp_path))
    incomplete = make_tiny_checkpoint(tmp_path / "incomplete")
    (incomplete / "pytorch_model.bin").unlink()
    with pytest.raises(ModelNotAvailable, match="cannot load the directory"):
        Wav2Vec2Checkpoint.from_pretrained(str(incomplete))


def test_unknown_hub_id_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelNotAvailable, match="local directory") as info:
        Wav2Vec2Checkpoint.from_pretrained("voiceloop-tests/no-such-model")
    assert time.monotonic() - start < 5
    assert "hf download voiceloop-tests/no-such-model --local-dir DIR" in str(info.value)


def test_extra_or_missing_weights_are_refused(dirs: dict[str, Path], tmp_path: Path) -> None:
    broken = Path(shutil.copytree(dirs["2021"], tmp_path / "broken"))
    state = torch.load(broken / "pytorch_model.bin", weights_only=True)
    del state["lm_head.bias"]
    state["wav2vec2.encoder.bogus"] = torch.zeros(3)
    torch.save(state, broken / "pytorch_model.bin")
    with pytest.raises(ValueError, match="does not match") as info:
        Wav2Vec2Checkpoint.from_pretrained(str(broken))
    assert "lm_head.bias" in str(info.value) and "wav2vec2.encoder.bogus" in str(info.value)


def test_vocabulary_pads_to_the_head_and_takes_the_configured_blank(dirs: dict[str, Path]) -> None:
    tokenizer = Wav2Vec2CTCTokenizer(str(dirs["2021"] / "vocab.json"))
    vocab = Vocabulary.from_processor(tokenizer, size=25)
    assert len(vocab) == 25 and {22, 23, 24} <= vocab.special_ids and vocab.text(24) == ""
    assert Vocabulary.from_processor(tokenizer).tokens == list(tiny_vocab())
    assert Vocabulary.from_processor(tokenizer, blank_id=3).blank_id == 3
