"""The onnxruntime encoder computes what LeanEncoder computes: the same streaming step (cached
keys/values of earlier frames, positional context), for stable-layer-norm and post-LN checkpoints;
int8 stays close; held-out espeak speech through the trained tiny model transcribes the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from asr_fixtures import make_tiny_checkpoint
from test_asr_fixture import FIXTURE, heldout, render

from voiceloop.asr.encoder import EncoderStep, LeanEncoder
from voiceloop.asr.encoder_onnx import OrtEncoder
from voiceloop.asr.model import ModelOptions, Wav2Vec2Checkpoint
from voiceloop.ortgraph import GraphLoadError

pytest.importorskip("onnxruntime", reason="the onnx encoder needs the onnx extra")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["stable", "post-ln"])
def pair(request, tmp_path_factory) -> tuple[Wav2Vec2Checkpoint, Wav2Vec2Checkpoint]:
    directory = make_tiny_checkpoint(
        tmp_path_factory.mktemp(request.param),
        seed=5,
        layers=3,
        do_stable_layer_norm=request.param == "stable",
    )
    cpu = ModelOptions(device="cpu")
    torch_ckpt = Wav2Vec2Checkpoint.from_pretrained(str(directory), cpu, encoder="torch")
    onnx_ckpt = Wav2Vec2Checkpoint.from_pretrained(str(directory), cpu, encoder="onnx")
    assert isinstance(torch_ckpt.encoder, LeanEncoder) and isinstance(onnx_ckpt.encoder, OrtEncoder)
    return torch_ckpt, onnx_ckpt


def _hidden(ckpt: Wav2Vec2Checkpoint, seconds: float, seed: int) -> torch.Tensor:
    audio = (0.1 * np.random.default_rng(seed).standard_normal(round(seconds * 16000))).astype(np.float32)
    return ckpt.project(ckpt.conv_features(ckpt.normalize(audio)))


def test_streaming_steps_match_the_torch_encoder(pair) -> None:
    torch_ckpt, onnx_ckpt = pair
    hidden = _hidden(torch_ckpt, 2.0, seed=1)
    first = EncoderStep(hidden[:40])
    want = torch_ckpt.encode_steps([first], key_values=True)[0]
    have = onnx_ckpt.encode_steps([first], key_values=True)[0]
    torch.testing.assert_close(have.log_probs, want.log_probs, rtol=0, atol=1e-4)
    torch.testing.assert_close(have.key_values.tensor, want.key_values.tensor, rtol=0, atol=1e-4)
    # a later step: cached keys/values of 30 earlier frames, 20 frames of positional context
    later = EncoderStep(hidden[20:90], context=20, past=want.key_values.newest(30))
    want = torch_ckpt.encode_steps([later], key_values=True)[0]
    have = onnx_ckpt.encode_steps([later], key_values=True)[0]
    assert have.log_probs.shape == (50, torch_ckpt.vocab_size)
    torch.testing.assert_close(have.log_probs, want.log_probs, rtol=0, atol=1e-4)
    torch.testing.assert_close(have.key_values.tensor, want.key_values.tensor, rtol=0, atol=1e-4)
    # several streams in one call, an empty one among them
    steps = [later, EncoderStep(hidden[:0]), first]
    results = onnx_ckpt.encode_steps(steps)
    assert [r.log_probs.shape[0] for r in results] == [50, 0, 40]
    assert results[0].key_values is None


def test_hidden_layer_captures_go_to_the_torch_encoder(pair) -> None:
    torch_ckpt, onnx_ckpt = pair
    hidden = _hidden(torch_ckpt, 1.0, seed=2)
    log_probs, state = onnx_ckpt.encode(hidden, layer=2)
    want_log_probs, want_state = torch_ckpt.encode(hidden, layer=2)
    torch.testing.assert_close(state, want_state, rtol=0, atol=0)
    torch.testing.assert_close(log_probs, want_log_probs, rtol=0, atol=0)


def test_auto_choice_and_misuse(tmp_path) -> None:
    directory = make_tiny_checkpoint(tmp_path / "m", seed=1, layers=2)
    auto = Wav2Vec2Checkpoint.from_pretrained(str(directory), ModelOptions(device="cpu", quantize="int8"))
    assert isinstance(auto.encoder, OrtEncoder)
    bf16 = Wav2Vec2Checkpoint.from_pretrained(str(directory), ModelOptions(device="cpu", dtype="bf16"))
    assert isinstance(bf16.encoder, LeanEncoder)
    with pytest.raises(ValueError, match="encoder must be"):
        Wav2Vec2Checkpoint.from_pretrained(str(directory), ModelOptions(device="cpu"), encoder="tensorrt")
    with pytest.raises(ValueError, match="CPU in fp32 or int8"):
        Wav2Vec2Checkpoint.from_pretrained(
            str(directory), ModelOptions(device="cpu", dtype="bf16"), encoder="onnx"
        )


def test_auto_falls_back_to_torch_when_onnxruntime_cannot_load_the_graph(tmp_path, monkeypatch) -> None:
    from voiceloop.asr import encoder_onnx

    def refuse(model, threads, what):
        raise GraphLoadError(f"onnxruntime 1.0 cannot run the {what} graph: too old")

    monkeypatch.setattr(encoder_onnx, "cpu_session", refuse)
    directory = make_tiny_checkpoint(tmp_path / "m", seed=1, layers=2)
    ckpt = Wav2Vec2Checkpoint.from_pretrained(str(directory), ModelOptions(device="cpu"))
    assert isinstance(ckpt.encoder, LeanEncoder)
    with pytest.raises(GraphLoadError, match="too old"):
        Wav2Vec2Checkpoint.from_pretrained(str(directory), ModelOptions(device="cpu"), encoder="onnx")


def test_heldout_speech_transcribes_alike_on_both_encoders_in_int8() -> None:
    """int8 weights keep 7 bits (voiceloop.ortgraph): full 8-bit weights saturated AVX2's 16-bit
    lanes and drifted 1.33 in log-prob on this model."""
    from speech import require_espeak

    require_espeak()
    items = heldout()[:12]
    int8 = ModelOptions(device="cpu", quantize="int8")
    fp32 = Wav2Vec2Checkpoint.from_pretrained(str(FIXTURE), ModelOptions(device="cpu"), encoder="torch")
    onnx8 = Wav2Vec2Checkpoint.from_pretrained(str(FIXTURE), int8, encoder="onnx")
    torch8 = Wav2Vec2Checkpoint.from_pretrained(str(FIXTURE), int8, encoder="torch")
    same, drift = 0, []
    for item in items:
        audio = render(item).astype(np.float32) / 32768.0
        reference = fp32.log_probs(audio)
        ours, theirs = onnx8.log_probs(audio), torch8.log_probs(audio)
        drift.append((np.abs(ours - reference).max(), np.abs(theirs - reference).max()))
        same += bool((ours.argmax(-1) == reference.argmax(-1)).all())
    assert same >= len(items) - 1, drift
    assert max(d[0] for d in drift) < 1.5 * max(d[1] for d in drift) + 0.05, drift
