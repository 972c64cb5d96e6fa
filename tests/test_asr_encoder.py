"""LeanEncoder: positional context and cached keys/values, checked against the stock modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.asr_fixtures import make_tiny_checkpoint

from voiceloop.asr import encoder as encoder_module
from voiceloop.asr.encoder import EncoderStep, KeyValues
from voiceloop.asr.model import Wav2Vec2Checkpoint
from voiceloop.asr.streaming import StreamingOptions, StreamState, Wav2Vec2Engine

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["stable", "post-ln"])
def ckpt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Wav2Vec2Checkpoint:
    stable = request.param == "stable"
    directory = make_tiny_checkpoint(
        tmp_path_factory.mktemp(request.param), seed=5, layers=3, do_stable_layer_norm=stable
    )
    return Wav2Vec2Checkpoint.from_pretrained(str(directory))


def hidden_of(ckpt: Wav2Vec2Checkpoint, seconds: float, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(round(seconds * 16000))).astype(np.float32)
    return ckpt.project(ckpt.conv_features(ckpt.normalize(audio)))


@torch.inference_mode()
def reference_block_causal(ckpt: Wav2Vec2Checkpoint, hidden: torch.Tensor, split: int) -> torch.Tensor:
    """Stock modules: frames [0, split) encoded alone, frames [split, T) seeing everything.

    That is what a step over [split, T) attending to the keys/values cached from a step over
    [0, split) computes; the positional convolution of the first part sees only the first part.
    """
    wav2vec2 = ckpt.model.wav2vec2
    encoder = wav2vec2.encoder
    pos = encoder.pos_conv_embed
    first = hidden[:split][None] + pos(hidden[:split][None])
    rest = (hidden[None] + pos(hidden[None]))[:, split:]
    x = torch.cat([first, rest], dim=1)
    n = x.shape[1]
    allowed = torch.ones(n, n, dtype=torch.bool)
    allowed[:split, split:] = False
    mask = torch.zeros(n, n).masked_fill(~allowed, float("-inf"))[None, None]
    stable = ckpt.model.config.do_stable_layer_norm
    if not stable:
        x = encoder.layer_norm(x)
    for layer in encoder.layers:
        x = layer(x, attention_mask=mask)
    if stable:
        x = encoder.layer_norm(x)
    return torch.log_softmax(ckpt.model.lm_head(x)[0], dim=-1)


def test_a_step_on_cached_keys_values_equals_the_stock_block_causal_pass(ckpt: Wav2Vec2Checkpoint) -> None:
    hidden = hidden_of(ckpt, 2.0)
    split = 37
    first = ckpt.encode_steps([EncoderStep(hidden[:split])], key_values=True)[0]
    assert first.key_values is not None and first.key_values.frames == split
    assert first.key_values.tensor.shape == (3, 2, split, hidden.shape[1])
    reach = ckpt.encoder.pos_reach
    context = min(split, reach)
    step = EncoderStep(hidden[split - context :], context=context, past=first.key_values)
    assert step.frames == hidden.shape[0] - split
    second = ckpt.encode_steps([step])[0]
    expected = reference_block_causal(ckpt, hidden, split)
    torch.testing.assert_close(first.log_probs, expected[:split], rtol=0, atol=2e-5)
    torch.testing.assert_close(second.log_probs, expected[split:], rtol=0, atol=2e-5)


def test_positional_context_needs_only_the_convolutions_reach(ckpt: Wav2Vec2Checkpoint) -> None:
    hidden = hidden_of(ckpt, 1.5, seed=1)
    reach, start = ckpt.encoder.pos_reach, 30
    assert start > reach
    full = ckpt.encoder._positional(EncoderStep(hidden, context=start))
    cut = ckpt.encoder._positional(EncoderStep(hidden[start - reach :], context=reach))
    torch.testing.assert_close(cut, full, rtol=0, atol=1e-6)
    with torch.inference_mode():
        pos = ckpt.model.wav2vec2.encoder.pos_conv_embed
        stock = (hidden[None] + pos(hidden[None]))[0, start:]
    torch.testing.assert_close(full, stock, rtol=0, atol=1e-5)


def test_several_streams_in_one_call_equal_each_alone(ckpt: Wav2Vec2Checkpoint) -> None:
    a, b = hidden_of(ckpt, 1.2, seed=2), hidden_of(ckpt, 0.7, seed=3)
    past = ckpt.encode_steps([EncoderStep(a[:20])], key_values=True)[0].key_values
    steps = [EncoderStep(a[12:], context=8, past=past), EncoderStep(b), EncoderStep(b[:0])]
    together = ckpt.encode_steps(steps, layer=2, key_values=True)
    for step, joint in zip(steps, together, strict=True):
        alone = ckpt.encode_steps([step], layer=2, key_values=True)[0]
        assert joint.log_probs.shape[0] == step.frames
        torch.testing.assert_close(joint.log_probs, alone.log_probs, rtol=0, atol=1e-5)
        torch.testing.assert_close(joint.layer_state, alone.layer_state, rtol=0, atol=1e-5)
        assert joint.key_values is not None and alone.key_values is not None
        torch.testing.assert_close(joint.key_values.tensor, alone.key_values.tensor, rtol=0, atol=1e-5)


def test_key_values_keep_the_newest_frames_in_a_buffer_with_room() -> None:
    values = torch.arange(2 * 2 * 8 * 3, dtype=torch.float32).view(2, 2, 8, 3)
    past = KeyValues(values, frames=6)  # 6 frames, room for 2
    assert (past.frames, past.room) == (6, 2)
    assert past.with_room(2) is past  # enough room: the same buffer
    grown = past.with_room(5)
    assert (grown.frames, grown.room) == (6, 5)
    torch.testing.assert_close(grown.tensor, values[:, :, :6])
    kept = past.prefix(5).newest(3, room=4)  # frames 2..4, copied
    assert (kept.frames, kept.room) == (3, 4)
    torch.testing.assert_close(kept.tensor, values[:, :, 2:5])
    values.zero_()  # a copy: the source buffer can be reused
    assert kept.tensor.abs().sum() > 0
    assert past.newest(0).frames == 0 and past.prefix(99).frames == 6


def test_cached_streaming_encodes_only_new_frames_and_keeps_l_frames_of_context(
    ckpt: Wav2Vec2Checkpoint,
) -> None:
    options = StreamingOptions(chunk_s=0.32, left_s=0.4, right_s=0.16)
    engine = Wav2Vec2Engine(ckpt, options)
    assert engine.caches_context
    state = StreamState(engine)
    rng = np.random.default_rng(4)
    audio = (0.1 * rng.standard_normal(3 * 16000)).astype(np.float32)
    sizes = []
    for start in range(0, len(audio), 320):  # fed like a live stream: one chunk per step
        state.add(audio[start : start + 320])
        window = state.plan()
        if window is None:
            continue
        assert window.first == window.commit_from  # no left-context frames re-encoded
        assert window.hidden.shape[0] - window.context == state.chunk + state.right
        assert window.context == min(window.commit_from, ckpt.encoder.pos_reach)
        state.apply(window, engine.encode([window])[0])
        assert state.past is not None
        sizes.append(state.past.frames)
    assert sizes[0] == state.chunk and max(sizes) == state.left == 20
    forked = state.fork()
    assert forked.past is not state.past and forked.engine is engine
    final = state.finish()
    assert state.committed == ckpt.frames_for(3 * 16000)
    assert final.text == forked.finish().text


def test_recompute_mode_re_encodes_the_left_context(ckpt: Wav2Vec2Checkpoint) -> None:
    engine = Wav2Vec2Engine(
        ckpt, StreamingOptions(chunk_s=0.32, left_s=0.4, right_s=0.16, cache_context=False)
    )
    assert not engine.caches_context
    state = StreamState(engine)
    state.add(np.zeros(16000, np.float32) + 0.01)
    state.step()
    state.add(np.zeros(16000, np.float32) + 0.01)
    window = state.plan()
    assert window is not None and window.context == 0 and window.past is None
    assert window.first == window.commit_from - state.left


def test_the_short_window_positional_path_equals_the_grouped_convolution(
    ckpt: Wav2Vec2Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden = hidden_of(ckpt, 1.5, seed=5)
    reach = ckpt.encoder.pos_reach
    monkeypatch.setattr(encoder_module, "SHORT_BLOCK_FRAMES", 7)  # several blocks, a ragged last one
    for context, frames in ((0, 1), (reach, 23), (3, 40)):
        step = EncoderStep(hidden[: context + frames], context=context)
        monkeypatch.setattr(encoder_module, "SHORT_WINDOW_FRAMES", 10**6)
        short = ckpt.encoder._positional(step)
        monkeypatch.setattr(encoder_module, "SHORT_WINDOW_FRAMES", 0)
        conv = ckpt.encoder._positional(step)
        torch.testing.assert_close(short, conv, rtol=0, atol=1e-5)


def test_a_past_shared_by_two_steps_is_neither_mixed_up_nor_changed(ckpt: Wav2Vec2Checkpoint) -> None:
    a = hidden_of(ckpt, 1.2, seed=6)
    first = ckpt.encode_steps([EncoderStep(a[:20])], key_values=True)[0].key_values
    assert first is not None
    past = first.newest(20, room=100)  # room for both steps' frames: they must not both write there
    before = past.tensor.clone()
    steps = [EncoderStep(a[12:30], context=8, past=past), EncoderStep(a[12:], context=8, past=past)]
    together = ckpt.encode_steps(steps, key_values=True)
    # copied now: a later call on the same past may write into the same room
    joint_kv = [r.key_values.tensor.clone() for r in together if r.key_values is not None]
    for step, joint, kv in zip(steps, together, joint_kv, strict=True):
        alone = ckpt.encode_steps([step], key_values=True)[0]
        torch.testing.assert_close(joint.log_probs, alone.log_probs, rtol=0, atol=1e-5)
        assert alone.key_values is not None and kv.shape[2] == 20 + step.frames
        torch.testing.assert_close(kv, alone.key_values.tensor, rtol=0, atol=1e-5)
    torch.testing.assert_close(past.tensor, before, rtol=0, atol=0)
    assert past.frames == 20
