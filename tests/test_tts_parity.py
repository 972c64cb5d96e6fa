"""Parity with the reference ChatTTS (0.2.5) on the same random assets: golden values, see its README.

The goldens were produced once by the reference in a throwaway environment
(``tests/fixtures/chattts-golden/make_golden.py``); nothing of the reference runs here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from voiceloop.compute import ModelOptions
from voiceloop.tts.chattts.decoder import CodeDecoder, HiddenDecoder
from voiceloop.tts.chattts.gpt import ChatTtsGpt, SamplingOptions
from voiceloop.tts.chattts.speaker import SpeakerStats, decode_prompt_codes, decode_speaker, sample_speaker
from voiceloop.tts.chattts.stream_decode import WaveDecoder
from voiceloop.tts.chattts.vocos import Vocos

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "chattts-golden" / "golden.json").read_text())
SYNTH = GOLDEN["synth_tokenizer"]
PARAMS = GOLDEN["meta"]["infer_code_params"]
OFFICIAL_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "chattts-tokenizer"

pytestmark = pytest.mark.usefixtures("one_thread")


def _code_sampling() -> SamplingOptions:
    return SamplingOptions(
        temperature=PARAMS["temperature"],
        top_p=PARAMS["top_P"],
        top_k=PARAMS["top_K"],
        repetition_penalty=PARAMS["repetition_penalty"],
        max_new_tokens=PARAMS["max_new_token"],
        min_new_tokens=PARAMS["min_new_token"],
        seed=PARAMS["manual_seed"],
        reseed_every_step=True,  # the reference re-seeds its generator every step
    )


@pytest.fixture(scope="module", params=["torch", "onnx"])
def gpt(chattts_root, request):
    """Both GPT backends must reproduce the reference: the torch one and the onnxruntime graph
    (fp32; the left-padded batch case goes through its compaction to right padding)."""
    # The goldens are CPU float32 numbers (a GPU's kernels round differently; test_gpu covers CUDA).
    return ChatTtsGpt.load(chattts_root, ModelOptions(device="cpu"), backend=request.param)


@pytest.fixture(scope="module")
def stats(chattts_root):
    return SpeakerStats.load(chattts_root / "asset" / "spk_stat.pt")


def test_generator_still_writes_the_assets_the_goldens_were_made_from(chattts_root):
    for rel, expected in GOLDEN["meta"]["asset_sha256"].items():
        digest = hashlib.sha256((chattts_root / rel).read_bytes()).hexdigest()
        assert digest == expected, f"{rel} changed: regenerate the goldens (see their README)"


@pytest.mark.parametrize("seed", ["1", "1234"])
def test_seeded_speaker_strings_are_identical(stats, seed):
    assert sample_speaker(stats, int(seed)) == SYNTH["speakers"][seed]
    vector = decode_speaker(SYNTH["speakers"][seed])
    golden = SYNTH["speaker_vectors"][seed]
    assert vector[:8].tolist() == golden["first8"]
    assert float(vector.sum()) == pytest.approx(golden["sum"], abs=1e-3)


@pytest.mark.parametrize("case", ["batch", "alone_0", "alone_1", "empty_spk"])
def test_prompt_ids_codes_and_hidden_states_match(gpt, case):
    golden = SYNTH["infer_code"][case]
    speaker = decode_speaker(SYNTH["speakers"]["1"]) if golden["speaker"] else None
    prompt = gpt.code_prompt(golden["texts"], speaker)
    result = gpt.run(prompt, _code_sampling())
    for row, item in enumerate(golden["items"]):
        assert prompt.ids[row, :, 0].tolist() == item["prompt_ids"]
        assert prompt.mask[row].long().tolist() == item["attention_mask"]
        assert result.tokens[row].tolist() == item["codes"]
        assert result.finished[row] == (item["stopped_by"] == "eos")
        hidden = result.hiddens[row]
        assert list(hidden.shape) == item["hidden"]["shape"]
        for index, values in item["hidden"]["rows"].items():
            np.testing.assert_allclose(hidden[int(index), :8].numpy(), values, atol=2e-4)


@pytest.fixture(scope="module")
def batch_result(gpt):
    golden = SYNTH["infer_code"]["batch"]
    return gpt.run(gpt.code_prompt(golden["texts"], decode_speaker(SYNTH["speakers"]["1"])), _code_sampling())


def _check_wave(wave: np.ndarray, golden: dict, atol: float) -> float:
    assert len(wave) == golden["length"]
    start = golden["mid_start"]
    head = np.abs(wave[:300] - np.asarray(golden["head"])).max()
    mid = np.abs(wave[start : start + 200] - np.asarray(golden["mid"])).max()
    assert max(head, mid) <= atol, (head, mid)
    assert float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))) == pytest.approx(golden["rms"], rel=1e-3)
    return float(max(head, mid))


@pytest.mark.parametrize("row", [0, 1])
def test_generated_hidden_states_decode_to_the_reference_waveform(chattts_root, batch_result, row):
    decoder = WaveDecoder(
        HiddenDecoder.from_file(chattts_root / "asset" / "Decoder.safetensors"),
        Vocos.from_file(chattts_root / "asset" / "Vocos.safetensors"),
    )
    wave = decoder.decode(batch_result.hiddens[row])
    _check_wave(wave, SYNTH["waves_batch_items"][row]["decoder_from_hidden"], atol=1e-4)


@pytest.mark.parametrize("row", [0, 1])
def test_generated_codes_decode_to_the_reference_waveform_on_the_dvae_path(chattts_root, batch_result, row):
    decoder = WaveDecoder(
        CodeDecoder.from_file(chattts_root / "asset" / "DVAE.safetensors"),
        Vocos.from_file(chattts_root / "asset" / "Vocos.safetensors"),
    )
    wave = decoder.decode(batch_result.tokens[row])
    _check_wave(wave, SYNTH["waves_batch_items"][row]["dvae_from_codes"], atol=1e-5)


@pytest.mark.parametrize("case", ["empty_spk", "with_spk", "batch"])
def test_an_audio_prompt_gives_the_reference_prompt_ids_codes_and_hidden_states(gpt, chattts_root, case):
    """spk_smp (a recording's DVAE codes) after [Ptts] and txt_smp before the text, as the reference
    builds them; ``empty_spk`` is its web UI's way (no speaker vector), ``batch`` left-pads two texts."""
    clone = SYNTH["voice_clone"]
    golden = clone["infer_code"][case]
    speaker = decode_speaker(SYNTH["speakers"]["1"]) if golden["speaker"] else None
    codes = decode_prompt_codes(clone["spk_smp"])
    prompt = gpt.code_prompt(golden["texts"], speaker, prompt_codes=codes, prompt_text=clone["txt_smp"])
    result = gpt.run(prompt, _code_sampling())
    for row, item in enumerate(golden["items"]):
        assert prompt.ids[row].tolist() == item["prompt_ids_q"]  # text ids x4, then the prompt's codes
        assert prompt.mask[row].long().tolist() == item["attention_mask"]
        assert result.tokens[row].tolist() == item["codes"]
        assert result.finished[row] == (item["stopped_by"] == "eos")
        for index, values in item["hidden"]["rows"].items():
            np.testing.assert_allclose(result.hiddens[row][int(index), :8].numpy(), values, atol=2e-4)
    if case == "empty_spk":
        _check_audio_prompt_waves(chattts_root, result, clone["waves_empty_spk"])


def _check_audio_prompt_waves(root: Path, result, golden: dict) -> None:
    vocos = Vocos.from_file(root / "asset" / "Vocos.safetensors")
    hidden = WaveDecoder(HiddenDecoder.from_file(root / "asset" / "Decoder.safetensors"), vocos)
    _check_wave(hidden.decode(result.hiddens[0]), golden["decoder_from_hidden"], atol=1e-4)
    dvae = WaveDecoder(CodeDecoder.from_file(root / "asset" / "DVAE.safetensors"), vocos)
    _check_wave(dvae.decode(result.tokens[0]), golden["dvae_from_codes"], atol=1e-5)


def _refine_check(gpt: ChatTtsGpt, golden: dict) -> None:
    params = GOLDEN["meta"]["refine_text_params"]
    sampling = SamplingOptions(
        temperature=params["temperature"],
        top_p=params["top_P"],
        top_k=params["top_K"],
        repetition_penalty=params["repetition_penalty"],
        max_new_tokens=params["max_new_token"],
        min_new_tokens=params["min_new_token"],
        seed=params["manual_seed"],
        reseed_every_step=True,
    )
    prompt = gpt.refine_prompt([golden["text"]], params["prompt"])
    assert prompt.ids[0, :, 0].tolist() == golden["prompt_ids"]
    assert gpt.run(prompt, sampling, text=True).tokens[0].tolist() == golden["output_ids"]
    texts, kept = gpt.refine([golden["text"]], params["prompt"], sampling)
    assert kept[0] == golden["kept_ids"]
    assert texts[0] == golden["decoded"]


def test_refined_token_ids_match_with_the_synthesized_tokenizer(gpt):
    _refine_check(gpt, SYNTH["refine_text"])


@pytest.mark.skipif(
    not (OFFICIAL_TOKENIZER / "tokenizer.json").is_file(),
    reason=f"official ChatTTS tokenizer not present at {OFFICIAL_TOKENIZER} (token-id fidelity needs it)",
)
def test_token_ids_match_with_the_official_tokenizer(chattts_root, tmp_path):
    root = tmp_path / "official"
    shutil.copytree(chattts_root, root)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(OFFICIAL_TOKENIZER / name, root / "asset" / "tokenizer" / name)
    gpt = ChatTtsGpt.load(root, ModelOptions(device="cpu"))
    golden = GOLDEN["official_tokenizer"]
    _refine_check(gpt, golden["refine_text"])
    prompt = gpt.code_prompt(golden["infer_code_prompt"]["texts"], torch.ones(768))
    assert prompt.ids[..., 0].tolist() == golden["infer_code_prompt"]["input_ids"]
    assert prompt.mask.long().tolist() == golden["infer_code_prompt"]["attention_mask"]
