"""ChatTTS decoders, Vocos and the streaming decoder on random weights in the official key layout.

Most tests use "narrow" models: official depth, kernels and dilations (so the official 52-step
receptive field) but tiny widths, which keeps them fast. Official dims are checked separately.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from voiceloop.tts.chattts.assets import AssetError
from voiceloop.tts.chattts.decoder import CodeDecoder, DecodeInputError, GroupedFSQ, HiddenDecoder
from voiceloop.tts.chattts.stream_decode import (
    StreamDecodeError,
    StreamDecodeOptions,
    StreamingDecoder,
    WaveDecoder,
    exact_context,
    stream_vs_offline,
)
from voiceloop.tts.chattts.vocos import Vocos, istft_numpy

pytestmark = pytest.mark.usefixtures("one_thread")


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights that let signals through: layer scales U(0.1, 1), norms ≈ 1, fan-in scaled convs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "norm" in name:
                p.copy_((1.0 if leaf == "weight" else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
            elif leaf == "gamma" or (leaf == "weight" and p.ndim == 1):
                p.copy_(torch.empty(p.shape).uniform_(0.1, 1.0, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
        if hasattr(module, "coef"):
            module.coef.copy_(torch.empty(module.coef.shape).uniform_(0.5, 1.5, generator=gen))
    return module.eval()


def narrow_hidden(seed: int = 0) -> HiddenDecoder:
    return randomize(HiddenDecoder(dim=8, hidden=16, bn_dim=8), seed)


def narrow_dvae(seed: int = 1) -> CodeDecoder:
    return randomize(CodeDecoder(dim=8, hidden=16, bn_dim=8, enc_dim=16), seed)


def narrow_vocos(seed: int = 2) -> Vocos:
    return randomize(Vocos(dim=16, intermediate_dim=32), seed)


def save(module: torch.nn.Module, path) -> None:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


@pytest.fixture(scope="module")
def hidden_wave() -> WaveDecoder:
    return WaveDecoder(narrow_hidden(), narrow_vocos())


# -- official layout -----------------------------------------------------------------------------


def test_default_dims_match_the_official_files():
    """Key names, shapes and parameter counts of research §1/§6 (ChatTTS's files load strictly)."""
    expected = {
        HiddenDecoder: (
            25_920_640,
            {
                "coef": (1, 100, 1),
                "decoder.conv_in.0.weight": (128, 384, 3),
                "decoder.conv_in.2.bias": (512,),
                "decoder.decoder_block.11.dwconv.weight": (512, 1, 7),
                "decoder.decoder_block.11.weight": (512,),
                "decoder.decoder_block.0.pwconv1.weight": (2048, 512),
                "decoder.conv_out.weight": (384, 512, 1),
                "out_conv.weight": (100, 384, 3),
            },
        ),
        CodeDecoder: (
            15_031_048,
            {
                "downsample_conv.0.weight": (512, 100, 3),
                "downsample_conv.2.weight": (512, 512, 4),
                "preprocessor_mel.mel_spec.spectrogram.window": (1024,),
                "preprocessor_mel.mel_spec.mel_scale.fb": (513, 100),
                "encoder.conv_out.weight": (1024, 256, 1),
                "decoder.decoder_block.11.weight": (256,),
                "out_conv.weight": (100, 512, 3),
                "vq_layer.quantizer.rvqs.1.project_in.weight": (4, 512),
                "vq_layer.quantizer.rvqs.1.project_out.weight": (512, 4),
            },
        ),
        Vocos: (
            13_531_650,
            {
                "feature_extractor.mel_spec.spectrogram.window": (1024,),
                "feature_extractor.mel_spec.mel_scale.fb": (513, 100),
                "backbone.embed.weight": (512, 100, 7),
                "backbone.convnext.7.gamma": (512,),
                "backbone.convnext.0.pwconv1.weight": (1536, 512),
                "backbone.final_layer_norm.bias": (512,),
                "head.out.weight": (1026, 512),
                "head.istft.window": (1024,),
            },
        ),
    }
    for cls, (params, keys) in expected.items():
        module = cls()
        state = module.state_dict()
        assert sum(p.numel() for p in module.parameters()) == params, cls.__name__
        for key, shape in keys.items():
            assert tuple(state[key].shape) == shape, (cls.__name__, key)
    dvae_keys = CodeDecoder().state_dict()
    assert sum(k.startswith("vq_layer.") for k in dvae_keys) == 8  # 2 groups × project_in/out × w/b
    assert not any("gamma" in k for k in HiddenDecoder().state_dict())


def test_hidden_decoder_loads_from_file_and_splits_steps_into_frames(tmp_path):
    model = narrow_hidden()
    save(model, tmp_path / "Decoder.safetensors")
    loaded = HiddenDecoder.from_file(tmp_path / "Decoder.safetensors")
    hidden = torch.randn(2, 7, 16)
    with torch.inference_mode():
        mel = loaded(hidden)
        # Frame 2t = h_t[:dim], frame 2t+1 = h_t[dim:], then the conv stack, out_conv and coef.
        frames = torch.stack([hidden[..., :8], hidden[..., 8:]], dim=2).reshape(2, 14, 8).transpose(1, 2)
        manual = model.out_conv(model.decoder(frames)) * model.coef
    assert mel.shape == (2, 100, 14)
    assert torch.equal(mel, manual)
    assert torch.equal(mel, model(hidden))
    assert loaded.receptive_field == 75
    with pytest.raises(DecodeInputError):
        loaded(torch.randn(2, 7, 15))


def test_loaders_name_missing_and_unexpected_keys(tmp_path):
    state = narrow_hidden().state_dict()
    partial = {k: v for k, v in state.items() if k != "decoder.decoder_block.3.pwconv2.bias"}
    save_file(partial, str(tmp_path / "missing.safetensors"))
    with pytest.raises(AssetError, match=r"missing keys: decoder\.decoder_block\.3\.pwconv2\.bias"):
        HiddenDecoder.from_file(tmp_path / "missing.safetensors")
    save_file({**state, "extra.weight": torch.zeros(2)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(AssetError, match=r"unexpected keys: extra\.weight"):
        HiddenDecoder.from_file(tmp_path / "extra.safetensors")
    dvae = narrow_dvae().state_dict()
    save_file({k: v for k, v in dvae.items() if not k.startswith("preprocessor_mel")}, str(tmp_path / "d.st"))
    with pytest.raises(AssetError, match="preprocessor_mel"):
        CodeDecoder.from_file(tmp_path / "d.st")
    with pytest.raises(AssetError, match="no such asset file"):
        Vocos.from_file(tmp_path / "absent.safetensors")


def test_parity_with_chattts_golden_waves(tmp_path):
    """Decoder+Vocos and DVAE+Vocos reproduce chattts 0.2.5 on the shared random assets (golden.json)."""
    import hashlib
    from pathlib import Path

    from voiceloop.tts.chattts import random_assets as fixtures

    golden_file = Path(__file__).parent / "fixtures" / "chattts-golden" / "golden.json"
    golden = json.loads(golden_file.read_text())
    files = {"Decoder": (fixtures.decoder_shapes(), 2), "DVAE": (fixtures.dvae_shapes(), 3)}
    files["Vocos"] = (fixtures.vocos_shapes(), 4)  # seeds as write_random_assets(seed=0) uses them
    for name, (shapes, seed) in files.items():
        save_file(fixtures._random_state(shapes, seed), str(tmp_path / f"{name}.safetensors"))
        digest = hashlib.sha256((tmp_path / f"{name}.safetensors").read_bytes()).hexdigest()
        if digest != golden["meta"]["asset_sha256"][f"asset/{name}.safetensors"]:
            pytest.skip(f"{name}: the fixture generator no longer writes the golden assets")
    vocos = Vocos.from_file(tmp_path / "Vocos.safetensors")
    hidden_path = WaveDecoder(HiddenDecoder.from_file(tmp_path / "Decoder.safetensors"), vocos)
    code_path = WaveDecoder(CodeDecoder.from_file(tmp_path / "DVAE.safetensors"), vocos)
    synth = golden["synth_tokenizer"]

    def check(wave: np.ndarray, summary: dict) -> None:
        assert wave.size == summary["length"]
        start, mid, head = summary["mid_start"], np.array(summary["mid"]), np.array(summary["head"])
        assert np.abs(wave[: head.size] - head).max() < 1e-6
        assert np.abs(wave[start : start + mid.size] - mid).max() < 1e-6
        assert float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))) == pytest.approx(
            summary["rms"], rel=1e-5
        )

    hidden = torch.randn((24, 768), generator=torch.Generator().manual_seed(7))
    check(hidden_path(hidden), synth["decoder_randn"]["wave"])
    for item, waves in zip(synth["infer_code"]["batch"]["items"], synth["waves_batch_items"], strict=True):
        check(code_path(torch.tensor(item["codes"])), waves["dvae_from_codes"])


# -- DVAE / FSQ ----------------------------------------------------------------------------------


def _golden_fsq() -> GroupedFSQ:
    """Deterministic weights; the expected values below come from vector_quantize_pytorch 1.32."""
    fsq = GroupedFSQ(dim=12)
    with torch.no_grad():
        for g, rvq in enumerate(fsq.quantizer.rvqs):
            rvq.project_in.weight.copy_(torch.sin(torch.arange(24.0) * 0.9 + g).reshape(4, 6) * 0.8)
            rvq.project_in.bias.copy_(torch.cos(torch.arange(4.0) + g) * 0.3)
            rvq.project_out.weight.copy_(torch.cos(torch.arange(24.0) * 0.7 + g).reshape(6, 4))
            rvq.project_out.bias.copy_(torch.sin(torch.arange(6.0) + g) * 0.2)
    return fsq


def test_fsq_matches_vector_quantize_pytorch_golden_values():
    fsq = _golden_fsq()
    features = (torch.cos(torch.arange(60.0) * 0.37) * 2.5).reshape(1, 12, 5)
    assert fsq(features).tolist() == [
        [[163, 193, 74, 99, 99], [336, 14, 581, 512, 568], [3, 3, 8, 133, 163], [415, 416, 552, 117, 337]]
    ]
    codes = torch.tensor([[[0, 624, 312, 7], [1, 2, 3, 100], [55, 0, 624, 13], [9, 401, 5, 250]]])
    expected = torch.tensor(
        [
            [-1.615956, 1.343971, 0.014007, -0.265548],
            [2.692985, -1.766092, 0.322113, 1.180652],
            [-2.959825, 2.483133, -0.122011, -1.460325],
            [3.423863, -2.374012, 0.447032, 2.110472],
            [-3.40857, 2.074247, -0.636711, -2.433057],
            [2.550608, -1.983583, 0.304023, 2.025698],
            [1.1598, 1.43893, -0.904647, 2.240162],
            [-0.265566, -0.04522, 0.476165, -1.50297],
            [-0.120133, -0.814493, 0.546563, 1.131325],
            [0.575635, 1.663773, -1.422446, -0.545264],
            [-1.413411, -2.769586, 1.685168, -0.552598],
            [1.519208, 2.986706, -2.32181, 1.017951],
        ]
    )
    with torch.no_grad():
        assert torch.allclose(fsq.embed(codes)[0], expected, atol=2e-6)


def test_fsq_index_arithmetic():
    """Index = d0 + 5·d1 + 25·d2 + 125·d3, code = d/2 − 1, residual level r scaled by 5^−r."""
    rvq = GroupedFSQ(dim=8).quantizer.rvqs[0]
    with torch.no_grad():
        rvq.project_out.weight.copy_(torch.eye(4))
        rvq.project_out.bias.zero_()
        index = torch.tensor([[3 + 5 * 1 + 25 * 4 + 125 * 0, 624]])
        out = rvq.output_from_indices(index)
    assert out[0].tolist() == pytest.approx([0.5 + 1 * 0.2, -0.5 + 1 * 0.2, 1.0 + 1 * 0.2, -1.0 + 1 * 0.2])


def test_code_decoder_decodes_and_encodes(tmp_path):
    model = narrow_dvae()
    save(model, tmp_path / "DVAE.safetensors")
    loaded = CodeDecoder.from_file(tmp_path / "DVAE.safetensors")
    codes = torch.randint(0, 625, (2, 4, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        mel = loaded(codes)
        feats = model.vq_layer.embed(codes)  # group 0 → even frames, group 1 → odd frames
        frames = torch.stack([feats[:, :8], feats[:, 8:]], dim=-1).reshape(2, 8, 18)
        manual = model.out_conv(model.decoder(frames)) * model.coef
    assert mel.shape == (2, 100, 18)
    assert torch.equal(mel, manual)
    assert torch.equal(loaded.decode(codes.transpose(1, 2)), mel)
    for bad in (
        codes.float(),
        codes.clamp(max=0) - 1,
        codes.clamp(min=624) + 1,
        torch.zeros(2, 3, 9, dtype=torch.long),
    ):
        with pytest.raises(DecodeInputError):
            loaded(bad)
    wave = torch.sin(torch.arange(24000) * 2 * math.pi * 220 / 24000) * 0.3
    prompt = loaded.encode(wave)
    assert prompt.shape == (4, (24000 // 256 + 1) // 2) and prompt.dtype == torch.long
    assert int(prompt.min()) >= 0 and int(prompt.max()) < 625
    batch = loaded.encode(wave[None].repeat(2, 1))
    assert batch.shape == (2, *prompt.shape) and (batch[1] == prompt).float().mean() > 0.9  # kernels vary
    with pytest.raises(DecodeInputError):
        loaded.encode(torch.zeros(100))


# -- Vocos ---------------------------------------------------------------------------------------


def test_vocos_loads_chattts_and_standalone_layouts(tmp_path, monkeypatch):
    model = narrow_vocos()
    save(model, tmp_path / "Vocos.safetensors")
    standalone = tmp_path / "vocos-mel-24khz"
    standalone.mkdir()
    config = {
        "feature_extractor": {
            "class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
            "init_args": {
                "sample_rate": 24000,
                "n_fft": 1024,
                "hop_length": 256,
                "n_mels": 100,
                "padding": "center",
            },
        },
        "backbone": {
            "class_path": "vocos.models.VocosBackbone",
            "init_args": {"input_channels": 100, "dim": 16, "intermediate_dim": 32, "num_layers": 8},
        },
        "head": {
            "class_path": "vocos.heads.ISTFTHead",
            "init_args": {"dim": 16, "n_fft": 1024, "hop_length": 256, "padding": "center"},
        },
    }
    (standalone / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save(model.state_dict(), standalone / "pytorch_model.bin")
    downloads = []

    def fake_download(repo_id, filename, revision=None):
        downloads.append((repo_id, filename))
        return str(standalone / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    mel = torch.randn(1, 100, 11)
    want = model.decode(mel)
    for loaded in (
        Vocos.from_file(tmp_path / "Vocos.safetensors"),
        Vocos.load(tmp_path / "Vocos.safetensors"),
        Vocos.from_pretrained(standalone),
        Vocos.from_pretrained("charactr/vocos-mel-24khz"),
    ):
        assert torch.equal(loaded.decode(mel), want)
    assert downloads == [
        ("charactr/vocos-mel-24khz", "config.yaml"),
        ("charactr/vocos-mel-24khz", "pytorch_model.bin"),
    ]
    config["head"]["init_args"]["padding"] = "same"
    (standalone / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(AssetError, match="center"):
        Vocos.from_pretrained(standalone)
    with pytest.raises(AssetError):
        Vocos.from_pretrained(tmp_path / "nowhere" / "at all")


def test_vocos_decode_istft_and_features():
    vocos = narrow_vocos()
    mel = torch.randn(2, 100, 9)
    wave = vocos.decode(mel)
    assert wave.dtype == torch.float32 and wave.shape == (2, 256 * 8)
    assert torch.allclose(vocos.decode(mel[1]), wave[1], atol=1e-6)  # batch size changes kernels only
    with torch.inference_mode():
        mag, phase = vocos.spectrum(mel)
    assert mag.shape == phase.shape == (2, 513, 9) and float(mag.max()) <= 100.0
    numpy_wave = istft_numpy(mag.numpy(), phase.numpy(), vocos.head.istft.window.numpy(), 256)
    assert np.abs(numpy_wave - wave.numpy()).max() < 1e-6
    tone = torch.sin(torch.arange(12000) * 2 * math.pi * 1000 / 24000)
    features = vocos.mel_spectrogram(tone)
    assert features.shape == (100, 12000 // 256 + 1)
    # A 1 kHz tone peaks in the band whose centre is nearest 1 kHz (HTK mel filterbank).
    mel_max = 2595 * math.log10(1 + 12000 / 700)
    centres = [700 * (10 ** (mel_max * (k + 1) / 101 / 2595) - 1) for k in range(100)]
    nearest = min(range(100), key=lambda k: abs(centres[k] - 1000))
    assert abs(int(features[:, 20].argmax()) - nearest) <= 1
    with pytest.raises(DecodeInputError):
        vocos.decode(torch.randn(1, 80, 9))


# -- streaming -----------------------------------------------------------------------------------


def _steps(n: int, width: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def test_exact_context_is_the_official_receptive_field(hidden_wave):
    assert exact_context(HiddenDecoder(), Vocos()) == 52
    assert exact_context(CodeDecoder(), Vocos()) == 52
    assert hidden_wave.context == 52


@pytest.mark.parametrize(("first", "chunk", "steps", "push"), [(5, 7, 61, 1), (1, 3, 33, 4), (8, 24, 97, 10)])
def test_stream_equals_offline_exactly_with_full_context(hidden_wave, first, chunk, steps, push):
    # Under ~102 steps every window and the offline decode run the same torch kernels, so the
    # result is bit-identical; longer inputs see float reassociation only (next test).
    options = StreamDecodeOptions(first_chunk=first, chunk=chunk, lookahead=52, left_context=52)
    report = stream_vs_offline(hidden_wave, _steps(steps), options, push_size=push)
    assert report["stream_samples"] == report["offline_samples"] == 512 * steps - 256
    assert report["max_abs_diff"] == 0.0


def test_stream_long_input_differs_only_by_float_reassociation(hidden_wave):
    """torch picks conv kernels by input size (im2col+GEMM below 20480 input values, oneDNN above) and
    MKL picks GEMM kernels by row count, so windows and the full decode round differently (~1e-7)."""
    options = StreamDecodeOptions(first_chunk=4, chunk=16, lookahead=52, left_context=52)
    report = stream_vs_offline(hidden_wave, _steps(151, seed=3), options, push_size=7)
    assert report["stream_samples"] == report["offline_samples"] == 512 * 151 - 256
    assert report["max_abs_diff"] <= 1e-6


def test_stream_defaults_report(hidden_wave):
    """Defaults trade exactness for latency; lengths still match, errors stay bounded."""
    steps = _steps(120, seed=5)
    report = stream_vs_offline(hidden_wave, steps, StreamDecodeOptions())
    print({k: v for k, v in report.items() if k != "options"})
    assert report["stream_samples"] == report["offline_samples"]
    assert report["first_piece_samples"] == 512 * 4 - 256  # first chunk minus the held crossfade
    assert 0.0 < report["max_abs_diff"] < 0.5 and report["rel_rms"] < 0.2
    assert report["work_ratio"] < 3.0  # O(n): each window is chunk + bounded context
    no_fade = stream_vs_offline(hidden_wave, steps, StreamDecodeOptions(crossfade=0))
    assert no_fade["stream_samples"] == report["stream_samples"]


def test_later_pieces_double_up_to_chunk_then_stay(hidden_wave):
    stream = StreamingDecoder(
        hidden_wave, StreamDecodeOptions(first_chunk=3, chunk=20, lookahead=2, crossfade=0)
    )
    sizes, emitted = [], 0
    for step in _steps(90, seed=2):
        for piece in stream.push(step):
            emitted += piece.size
            sizes.append(round(emitted / 512))
    boundaries = [b - a for a, b in zip([0, *sizes], sizes, strict=False)]
    assert boundaries[:5] == [3, 6, 12, 20, 20]
    flat = StreamingDecoder(
        hidden_wave, StreamDecodeOptions(first_chunk=3, chunk=20, lookahead=2, grow=False)
    )
    assert [flat.next_chunk() for _ in range(2)] == [20, 20]


def test_stream_code_path_is_exact_too():
    wave = WaveDecoder(narrow_dvae(), narrow_vocos())
    codes = torch.randint(0, 625, (45, 4), generator=torch.Generator().manual_seed(1))
    options = StreamDecodeOptions(first_chunk=3, chunk=5, lookahead=52, left_context=52)
    report = stream_vs_offline(wave, codes, options, push_size=2)
    assert report["stream_samples"] == 512 * 45 - 256 and report["max_abs_diff"] == 0.0


def test_stream_pieces_schedule_and_edges(hidden_wave):
    options = StreamDecodeOptions(first_chunk=2, chunk=3, lookahead=1, left_context=4, crossfade=0)
    stream = StreamingDecoder(hidden_wave, options)
    steps = _steps(9)
    assert stream.push(steps[:2]) == []  # first piece needs first_chunk + lookahead steps
    pieces = stream.push(steps[2])
    assert [p.size for p in pieces] == [1024]
    assert [p.size for p in stream.push(steps[3:9])] == [1536, 1536]  # one window per due chunk
    tail = stream.finish()
    assert tail.size == 512 * 9 - 256 - 1024 - 2 * 1536 and tail.dtype == np.float32
    with pytest.raises(StreamDecodeError):
        stream.push(steps[:1])
    with pytest.raises(StreamDecodeError):
        stream.finish()

    empty = StreamingDecoder(hidden_wave)
    assert empty.push(np.zeros((0, 16), np.float32)) == [] and empty.finish().size == 0
    one = StreamingDecoder(hidden_wave)
    assert one.push(steps[:1]) == [] and np.array_equal(one.finish(), hidden_wave(steps[:1]))
    no_lookahead = stream_vs_offline(
        hidden_wave, steps, StreamDecodeOptions(lookahead=0, first_chunk=1, chunk=2)
    )
    assert no_lookahead["stream_samples"] == no_lookahead["offline_samples"]

    wide = StreamingDecoder(hidden_wave)
    wide.push(steps[:1])
    with pytest.raises(StreamDecodeError, match="width"):
        wide.push(torch.zeros(1, 17))
    with pytest.raises(StreamDecodeError):
        wide.push(torch.zeros(2, 2, 16))
    short = StreamingDecoder(
        lambda rows: np.zeros(10, np.float32), StreamDecodeOptions(first_chunk=1, lookahead=0)
    )
    with pytest.raises(StreamDecodeError, match="expected 256"):
        short.push(steps[:1])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chunk": 0},
        {"first_chunk": 0},
        {"lookahead": -1},
        {"crossfade": 257},
        {"left_context": 1.5},
        {"chunk": True},
    ],
)
def test_stream_options_are_validated(kwargs):
    with pytest.raises(StreamDecodeError):
        StreamDecodeOptions(**kwargs)


def test_official_dims_stream_defaults_report():
    """Full-size random Decoder + Vocos: the numbers for the defaults (printed for the record)."""
    wave = WaveDecoder(randomize(HiddenDecoder(), 10), randomize(Vocos(), 11))
    steps = torch.randn(64, 768, generator=torch.Generator().manual_seed(0))
    report = stream_vs_offline(wave, steps, StreamDecodeOptions(), push_size=4)
    print(json.dumps({k: v for k, v in report.items() if k != "options"}))
    assert report["stream_samples"] == report["offline_samples"] == 512 * 64 - 256
    assert np.isfinite(report["max_abs_diff"]) and report["rel_rms"] < 0.5


@pytest.mark.parametrize(
    "bad", [{"growth": 0.9}, {"growth": True}, {"growth": "2"}, {"grow": 1}, {"chunk": 0}, {"crossfade": 300}]
)
def test_bad_schedules_are_refused(bad):
    with pytest.raises(StreamDecodeError):
        StreamDecodeOptions(**bad)


def test_slow_growth_pieces_are_the_rounded_geometric_schedule(hidden_wave):
    options = StreamDecodeOptions(first_chunk=3, chunk=8, lookahead=2, growth=1.5, crossfade=0)
    stream, ends, emitted = StreamingDecoder(hidden_wave, options), [], 0
    for step in _steps(40, seed=4):
        for piece in stream.push(step):
            emitted += piece.size
            ends.append(round(emitted / 512))
    sizes = [b - a for a, b in zip([0, *ends], ends, strict=False)]
    assert sizes[:6] == [3, 4, 7, 8, 8, 8]  # 3, 4.5, 6.75, 10.1 -> capped at chunk
