"""Random-weight ChatTTS assets in the official file layout (``voiceloop tts random-assets``).

For tests, benchmarks and trying the plumbing without the real weights (which are CC BY-NC and
never shipped): the audio is noise, the compute is the real model's. Key names and shapes are
written from the documented layout, not from our own modules, so loading them checks our loaders
against an independent description. ``gpt_layers=20, embed_tokens=True`` gives full-size assets.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN = 768
NUM_TEXT_TOKENS = 21178
NUM_AUDIO_TOKENS = 626
NUM_VQ = 4
N_MELS = 100

SPECIAL_TOKENS = (
    ["[Sasr]", "[Pasr]", "[Easr]", "[Stts]", "[Ptts]", "[Etts]", "[Sbreak]", "[Pbreak]", "[Ebreak]"]
    + [
        "[uv_break]",
        "[v_break]",
        "[lbreak]",
        "[llbreak]",
        "[undefine]",
        "[laugh]",
        "[spk_emb]",
        "[empty_spk]",
    ]
    + ["[music]", "[pure]"]
    + [f"[break_{i}]" for i in range(8)]
    + [f"[laugh_{i}]" for i in range(3)]
    + [f"[oral_{i}]" for i in range(10)]
    + [f"[speed_{i}]" for i in range(10)]
)
assert len(SPECIAL_TOKENS) == 50

# The official asset/gpt/config.json, except for the layer count (research §1).
GPT_CONFIG = {
    "architectures": ["LlamaModel"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": HIDDEN,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 4096,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 12,
    "num_audio_tokens": NUM_AUDIO_TOKENS,
    "num_hidden_layers": 20,
    "num_key_value_heads": 12,
    "num_text_tokens": NUM_TEXT_TOKENS,
    "num_vq": NUM_VQ,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "spk_KL": False,
    "spk_emb_dim": 192,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.41.2",
    "use_cache": False,
    "vocab_size": 32000,
}


def _convnext_keys(prefix: str, dim: int, inner: int, scale_name: str) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.dwconv.weight": (dim, 1, 7),
        f"{prefix}.dwconv.bias": (dim,),
        f"{prefix}.norm.weight": (dim,),
        f"{prefix}.norm.bias": (dim,),
        f"{prefix}.pwconv1.weight": (inner, dim),
        f"{prefix}.pwconv1.bias": (inner,),
        f"{prefix}.pwconv2.weight": (dim, inner),
        f"{prefix}.pwconv2.bias": (dim,),
        f"{prefix}.{scale_name}": (dim,),
    }


def _conv_stack(prefix: str, idim: int, odim: int, hidden: int, layers: int = 12, bn: int = 128):
    shapes = {
        f"{prefix}.conv_in.0.weight": (bn, idim, 3),
        f"{prefix}.conv_in.0.bias": (bn,),
        f"{prefix}.conv_in.2.weight": (hidden, bn, 3),
        f"{prefix}.conv_in.2.bias": (hidden,),
        f"{prefix}.conv_out.weight": (odim, hidden, 1),
    }
    for i in range(layers):
        shapes |= _convnext_keys(f"{prefix}.decoder_block.{i}", hidden, hidden * 4, "weight")
    return shapes


def decoder_shapes() -> dict[str, tuple[int, ...]]:
    """asset/Decoder.safetensors: GPT hidden states (two 384-d halves per step) -> log-mel."""
    return {
        "coef": (1, N_MELS, 1),
        **_conv_stack("decoder", 384, 384, 512),
        "out_conv.weight": (N_MELS, 384, 3),
    }


def dvae_shapes() -> dict[str, tuple[int, ...]]:
    """asset/DVAE.safetensors: the voice encoder, the grouped residual FSQ and the code decoder."""
    shapes = {
        "coef": (1, N_MELS, 1),
        "downsample_conv.0.weight": (512, N_MELS, 3),
        "downsample_conv.0.bias": (512,),
        "downsample_conv.2.weight": (512, 512, 4),
        "downsample_conv.2.bias": (512,),
        "preprocessor_mel.mel_spec.spectrogram.window": (1024,),
        "preprocessor_mel.mel_spec.mel_scale.fb": (513, N_MELS),
        **_conv_stack("encoder", 512, 1024, 256),
        **_conv_stack("decoder", 512, 512, 256),
        "out_conv.weight": (N_MELS, 512, 3),
    }
    for g in range(2):
        p = f"vq_layer.quantizer.rvqs.{g}"
        shapes |= {
            f"{p}.project_in.weight": (4, 512),
            f"{p}.project_in.bias": (4,),
            f"{p}.project_out.weight": (512, 4),
            f"{p}.project_out.bias": (512,),
        }
    return shapes


def vocos_shapes() -> dict[str, tuple[int, ...]]:
    """asset/Vocos.safetensors (the charactr/vocos-mel-24khz architecture)."""
    shapes = {
        "feature_extractor.mel_spec.spectrogram.window": (1024,),
        "feature_extractor.mel_spec.mel_scale.fb": (513, N_MELS),
        "backbone.embed.weight": (512, N_MELS, 7),
        "backbone.embed.bias": (512,),
        "backbone.norm.weight": (512,),
        "backbone.norm.bias": (512,),
        "backbone.final_layer_norm.weight": (512,),
        "backbone.final_layer_norm.bias": (512,),
        "head.out.weight": (1026, 512),
        "head.out.bias": (1026,),
        "head.istft.window": (1024,),
    }
    for i in range(8):
        shapes |= _convnext_keys(f"backbone.convnext.{i}", 512, 1536, "gamma")
    return shapes


def embed_shapes() -> dict[str, tuple[int, ...]]:
    """asset/Embed.safetensors: text/code embeddings and weight-normed heads (g, v)."""
    shapes = {"emb_text.weight": (NUM_TEXT_TOKENS, HIDDEN)}
    shapes["head_text.parametrizations.weight.original0"] = (NUM_TEXT_TOKENS, 1)
    shapes["head_text.parametrizations.weight.original1"] = (NUM_TEXT_TOKENS, HIDDEN)
    for q in range(NUM_VQ):
        shapes[f"emb_code.{q}.weight"] = (NUM_AUDIO_TOKENS, HIDDEN)
        shapes[f"head_code.{q}.parametrizations.weight.original0"] = (NUM_AUDIO_TOKENS, 1)
        shapes[f"head_code.{q}.parametrizations.weight.original1"] = (NUM_AUDIO_TOKENS, HIDDEN)
    return shapes


def hann(n: int = 1024) -> torch.Tensor:
    return torch.hann_window(n, periodic=True)


def htk_mel_fb(n_freqs: int = 513, n_mels: int = N_MELS, rate: int = 24000) -> torch.Tensor:
    """A triangular HTK-scale filterbank [n_freqs, n_mels] (no norm), as torchaudio's defaults build it."""
    freqs = torch.linspace(0, rate / 2, n_freqs, dtype=torch.float64)
    to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    mels = torch.linspace(to_mel(0.0), to_mel(rate / 2), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    slopes = hz[None, :] - freqs[:, None]
    widths = hz[1:] - hz[:-1]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(down, up), min=0).float()


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Weights scaled so signals neither vanish nor explode through the random stacks."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("spectrogram.window") or name.endswith("istft.window"):
        return hann(shape[0])
    if name.endswith("mel_scale.fb"):
        return htk_mel_fb(shape[0], shape[1])
    if name == "coef":
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if ".norm." in name or "final_layer_norm" in name or name.startswith("backbone.norm"):
        base = 1.0 if leaf == "weight" else 0.0
        return base + 0.05 * torch.randn(shape, generator=gen)
    if leaf in ("gamma",) or (leaf == "weight" and len(shape) == 1):
        return 0.1 + 0.4 * torch.rand(shape, generator=gen)  # ConvNeXt layer scale
    if leaf == "bias":
        return 0.02 * torch.randn(shape, generator=gen)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: _random_tensor(name, shape, gen).contiguous() for name, shape in shapes.items()}


def _random_embed(seed: int, eos_gain: float) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in embed_shapes().items():
        if name.endswith("original0"):
            continue
        state[name] = (
            0.02 * torch.randn(shape, generator=gen) if "emb_" in name else torch.randn(shape, generator=gen)
        )
    # Weight norm: w = g * v / ||v|| per row. g sets each row's logit scale.
    state["head_text.parametrizations.weight.original0"] = torch.full((NUM_TEXT_TOKENS, 1), 0.5)
    for q in range(NUM_VQ):
        g = torch.full((NUM_AUDIO_TOKENS, 1), 0.5)
        g[NUM_AUDIO_TOKENS - 1] *= eos_gain  # EOS row: makes utterance lengths controllable in tests
        state[f"head_code.{q}.parametrizations.weight.original0"] = g
    return state


def write_tokenizer(out: Path, official: Path | None = None) -> bool:
    """Copy the official tokenizer when available, else synthesize one with the same id layout.

    Returns True when the official files were used. The synthesized vocabulary has the official
    size (21128 base entries) and the 50 control tokens at ids 21128..21177.
    """
    out.mkdir(parents=True, exist_ok=True)
    if official is not None and (official / "tokenizer.json").is_file():
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(official / name, out / name)
        return True
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece

    words = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    words += list("，。、？！：；“”‘’（）《》…—·")
    letters = "abcdefghijklmnopqrstuvwxyz"
    words += [f"##{c}" for c in letters + "0123456789"]
    words += [a + b for a in letters for b in letters] + [f"##{a}{b}" for a in letters for b in letters]
    cjk = 0x4E00
    while len(dict.fromkeys(words)) < 21128:
        words.append(chr(cjk))
        cjk += 1
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    assert tok.token_to_id("[spk_emb]") == 21143 and tok.get_vocab_size() == NUM_TEXT_TOKENS
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True}
    config |= {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    config |= {"mask_token": "[MASK]", "model_max_length": 512, "padding_side": "right"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {k: config[k] for k in ("unk_token", "pad_token", "cls_token", "sep_token", "mask_token")}
    specials["additional_special_tokens"] = SPECIAL_TOKENS
    (out / "special_tokens_map.json").write_text(json.dumps(specials, ensure_ascii=False, indent=2))
    return False


def write_random_assets(
    root: Path,
    *,
    gpt_layers: int = 2,
    seed: int = 0,
    embed_tokens: bool = False,
    eos_gain: float = 1.0,
    official_tokenizer: Path | None = None,
) -> Path:
    """Write a complete random ``asset/`` tree under ``root`` and return ``root``.

    ``gpt_layers=2`` keeps tests fast (the widths stay official, so every other file is full size);
    ``gpt_layers=20, embed_tokens=True`` matches the released model's compute and file sizes.
    """
    from transformers import LlamaConfig, LlamaModel

    asset = Path(root) / "asset"
    (asset / "gpt").mkdir(parents=True, exist_ok=True)
    config = dict(GPT_CONFIG, num_hidden_layers=gpt_layers)
    (asset / "gpt" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.manual_seed(seed)
    llama_config = LlamaConfig(
        **{k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")}
    )
    with torch.device("meta"):
        shapes = LlamaModel(llama_config).state_dict()
    gen = torch.Generator().manual_seed(seed)
    gpt_state = {}
    for name, tensor in shapes.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name == "embed_tokens.weight" and not embed_tokens:
            continue
        if "layernorm" in name or name == "norm.weight":
            gpt_state[name] = 1.0 + 0.1 * torch.randn(tensor.shape, generator=gen)
        else:
            gpt_state[name] = 0.02 * torch.randn(tensor.shape, generator=gen)
    save_file(gpt_state, str(asset / "gpt" / "model.safetensors"), metadata={"format": "pt"})
    save_file(_random_embed(seed + 1, eos_gain), str(asset / "Embed.safetensors"))
    save_file(_random_state(decoder_shapes(), seed + 2), str(asset / "Decoder.safetensors"))
    save_file(_random_state(dvae_shapes(), seed + 3), str(asset / "DVAE.safetensors"))
    save_file(_random_state(vocos_shapes(), seed + 4), str(asset / "Vocos.safetensors"))
    stat_gen = torch.Generator().manual_seed(seed + 5)
    std = 0.5 + 0.5 * torch.rand(HIDDEN, generator=stat_gen)
    mean = 0.1 * torch.randn(HIDDEN, generator=stat_gen)
    torch.save(torch.cat([std, mean]), asset / "spk_stat.pt")
    write_tokenizer(asset / "tokenizer", official_tokenizer)
    return Path(root)
