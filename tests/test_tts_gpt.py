"""The ChatTTS GPT on random assets: loading, prompts, sampling rules, batching, cancellation."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from voiceloop.compute import CancelToken
from voiceloop.tts.chattts.assets import AssetError
from voiceloop.tts.chattts.gpt import ChatTtsGpt, SamplingOptions, _penalize

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt(chattts_root):
    return ChatTtsGpt.load(chattts_root)


def _copy(root, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(root, dst)
    return dst


def test_embed_file_with_missing_and_extra_keys_is_refused_naming_them(chattts_root, tmp_path):
    root = _copy(chattts_root, tmp_path)
    state = load_file(str(root / "asset/Embed.safetensors"))
    del state["emb_code.2.weight"]
    state["surprise.weight"] = torch.zeros(3)
    save_file(state, str(root / "asset/Embed.safetensors"))
    with pytest.raises(
        AssetError, match=r"missing keys: emb_code\.2\.weight.*unexpected keys: surprise\.weight"
    ):
        ChatTtsGpt.load(root)


def test_gpt_file_with_embed_tokens_loads_and_wrong_shapes_are_named(chattts_root, tmp_path):
    root = _copy(chattts_root, tmp_path)
    state = load_file(str(root / "asset/gpt/model.safetensors"))
    state["embed_tokens.weight"] = torch.zeros(32000, 768)  # present in some releases: accepted
    save_file(state, str(root / "asset/gpt/model.safetensors"))
    ChatTtsGpt.load(root)
    state["norm.weight"] = torch.zeros(700)
    save_file(state, str(root / "asset/gpt/model.safetensors"))
    with pytest.raises(AssetError, match=r"norm\.weight"):
        ChatTtsGpt.load(root)


def test_code_prompt_layout_and_speaker_slot(gpt):
    speaker = torch.randn(768)
    prompt = gpt.code_prompt(["你好", "hello world"], speaker)
    tok = gpt.tokenizer
    row = prompt.ids[1, :, 0][prompt.mask[1]].tolist()
    assert tok.convert_ids_to_tokens(row[:3]) == ["[Stts]", "[spk_emb]", "[speed_5]"]
    assert tok.convert_ids_to_tokens(row[-1:]) == ["[Ptts]"]
    assert prompt.ids.shape[-1] == 4 and bool((prompt.ids[..., 0] == prompt.ids[..., 3]).all())
    # shorter row is left-padded
    assert not bool(prompt.mask[0, 0]) and bool(prompt.mask[0, -1])
    at = prompt.ids[..., 0].eq(gpt.spk_emb_id)
    unit = torch.nn.functional.normalize(speaker.half(), dim=0).float()
    assert torch.equal(prompt.embeds[at][0], unit) and torch.equal(prompt.embeds[at][1], unit)
    without = gpt.code_prompt(["你好"], None)
    assert "[empty_spk]" in tok.convert_ids_to_tokens(without.ids[0, :, 0].tolist())


def test_seeded_generation_is_reproducible_and_seed_dependent(gpt):
    prompt = gpt.code_prompt(["今天天气不错"], torch.randn(768))
    options = SamplingOptions(seed=7, max_new_tokens=12, min_new_tokens=12)
    a = gpt.run(prompt, options).tokens[0]
    b = gpt.run(prompt, options).tokens[0]
    c = gpt.run(prompt, SamplingOptions(seed=8, max_new_tokens=12, min_new_tokens=12)).tokens[0]
    assert a.shape == (12, 4) and torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.max()) < gpt.audio_eos


def test_global_rng_is_untouched(gpt):
    prompt = gpt.code_prompt(["你好"], None)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    gpt.run(prompt, SamplingOptions(max_new_tokens=3))  # no seed: fresh entropy, not the global RNG
    assert torch.equal(torch.rand(3), expected)


def test_left_padded_batch_matches_single_rows(gpt):
    """Near-zero temperature makes sampling an argmax, so padding/positions errors would show."""
    texts = ["你好，今天天气不错。", "hello"]
    options = SamplingOptions(
        temperature=1e-4, seed=0, max_new_tokens=6, min_new_tokens=6, repetition_penalty=1.0
    )
    batch = gpt.run(gpt.code_prompt(texts, None), options)
    for i, text in enumerate(texts):
        single = gpt.run(gpt.code_prompt([text], None), options)
        assert torch.equal(batch.tokens[i], single.tokens[0])
        torch.testing.assert_close(batch.hiddens[i], single.hiddens[0], atol=1e-4, rtol=1e-4)


def test_eos_ends_a_row_and_min_new_tokens_holds_it_back(gpt, monkeypatch):
    original = gpt.embed.code_logits

    def eos_favoured(hidden):
        logits = original(hidden).clone()
        logits[:, 0, gpt.audio_eos] += 1000.0  # codebook 0 wants to stop
        return logits

    monkeypatch.setattr(gpt.embed, "code_logits", eos_favoured)
    prompt = gpt.code_prompt(["你好", "今天天气不错"], None)
    result = gpt.run(prompt, SamplingOptions(seed=1, max_new_tokens=20, min_new_tokens=5))
    assert result.finished == [True, True]
    for tokens, hiddens in zip(result.tokens, result.hiddens, strict=True):
        assert tokens.shape == (5, 4) and int(tokens.max()) < gpt.audio_eos
        assert hiddens.shape == (5, 768)


def test_cancel_stops_within_one_step(gpt):
    token = CancelToken()
    steps = 0
    for _ in gpt.generate(
        gpt.code_prompt(["你好"], None), SamplingOptions(max_new_tokens=50, min_new_tokens=50), cancel=token
    ):
        steps += 1
        if steps == 3:
            token.cancel()
    assert steps == 3


def test_repetition_penalty_scales_by_count_in_window():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    window = torch.tensor([[0, 0, 1]])
    out = _penalize(logits, window, 2.0)
    assert out.tolist() == [[0.5, -4.0, 1.0, 0.5]]


def test_refine_keeps_only_tokens_below_break_0(gpt):
    texts, ids = gpt.refine(["你好"], sampling=SamplingOptions(temperature=0.7, seed=0, max_new_tokens=8))
    assert len(texts) == 1 and all(i < gpt.break_0_id for i in ids[0])
    assert texts[0] == gpt.tokenizer.decode(ids[0])


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": 0}, {"top_p": 1.5}, {"top_k": 0}, {"min_new_tokens": 5, "max_new_tokens": 2}],
)
def test_bad_sampling_options_are_rejected(kwargs):
    with pytest.raises(ValueError):
        SamplingOptions(**kwargs)


def test_sha256_verification_names_files_that_are_not_the_official_ones(chattts_root):
    from voiceloop.tts.chattts.assets import official_hashes, verify

    assert len(official_hashes()) == 9
    with pytest.raises(AssetError, match=r"sha256 mismatch.*asset/Vocos\.safetensors"):
        verify(chattts_root)


def test_unreachable_hub_id_says_how_to_use_a_local_directory(monkeypatch):
    from voiceloop.tts.chattts.assets import AssetsNotAvailable, resolve_root

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetsNotAvailable, match=r"offline mode.*hf download 2Noise/ChatTTS --local-dir DIR"):
        resolve_root("someone/not-cached-chattts")


def test_incomplete_local_directory_lists_what_is_missing(chattts_root, tmp_path):
    from voiceloop.tts.chattts.assets import AssetsNotAvailable, resolve_root

    root = _copy(chattts_root, tmp_path)
    (root / "asset" / "Decoder.safetensors").unlink()
    with pytest.raises(AssetsNotAvailable, match=r"lacks asset/Decoder\.safetensors"):
        resolve_root(str(root))
