"""Tiny random-weight wav2vec2 CTC checkpoints on disk, shaped like the XLSR-53 Chinese model.

The real checkpoint (1.3 GB) is not available to tests, so these keep its *structure* — conv
kernels/strides, stable layer norm, ``<pad>``-blank char vocabulary, the 2021 hub file layout with
old weight-norm keys — at toy sizes, so every code path that loads or runs it is exercised in ms.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)

from voiceloop.asr.corpus import PREPROCESSOR_CONFIG, SPECIALS

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "|")
CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)

#: the hub repo's preprocessor_config.json and special_tokens_map.json: the package's own copies
SPECIAL_TOKENS_MAP = SPECIALS

# Old (torch.nn.utils.weight_norm) names for the positional conv's weight norm, as 2021 files store them.
_PARAM_TO_OLD = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}


def tiny_vocab(chars: str = "你好世界一二三四五六七八九十天气很") -> dict[str, int]:
    """The official vocab.json format: specials 0-4, then the sorted distinct characters from 5."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in sorted(set(chars) - set(SPECIAL_TOKENS)):
        vocab[char] = len(vocab)
    return vocab


def tiny_config(
    vocab_size: int,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    conv_dim: tuple[int, ...] = (32,) * 7,
    feat_extract_norm: str = "layer",
    do_stable_layer_norm: bool = True,
    num_conv_pos_embeddings: int = 16,
    num_conv_pos_embedding_groups: int = 4,
) -> Wav2Vec2Config:
    """XLSR-53 hyper-parameters with the sizes shrunk."""
    return Wav2Vec2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        conv_dim=list(conv_dim),
        conv_kernel=list(CONV_KERNEL),
        conv_stride=list(CONV_STRIDE),
        conv_bias=True,
        feat_extract_norm=feat_extract_norm,
        feat_extract_activation="gelu",
        do_stable_layer_norm=do_stable_layer_norm,
        num_conv_pos_embeddings=num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=num_conv_pos_embedding_groups,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
        mask_time_prob=0.05,
        layerdrop=0.05,
    )


def _config_2021(config: Wav2Vec2Config) -> dict[str, object]:
    """config.json as transformers 4.5 wrote it (with since-removed fields like gradient_checkpointing)."""
    return {
        "_name_or_path": "facebook/wav2vec2-large-xlsr-53",
        "activation_dropout": 0.05,
        "apply_spec_augment": True,
        "architectures": ["Wav2Vec2ForCTC"],
        "attention_dropout": 0.1,
        "bos_token_id": config.bos_token_id,
        "conv_bias": config.conv_bias,
        "conv_dim": list(config.conv_dim),
        "conv_kernel": list(config.conv_kernel),
        "conv_stride": list(config.conv_stride),
        "ctc_loss_reduction": config.ctc_loss_reduction,
        "ctc_zero_infinity": config.ctc_zero_infinity,
        "do_stable_layer_norm": config.do_stable_layer_norm,
        "eos_token_id": config.eos_token_id,
        "feat_extract_activation": config.feat_extract_activation,
        "feat_extract_dropout": 0.0,
        "feat_extract_norm": config.feat_extract_norm,
        "feat_proj_dropout": 0.05,
        "final_dropout": 0.0,
        "gradient_checkpointing": True,
        "hidden_act": config.hidden_act,
        "hidden_dropout": 0.05,
        "hidden_size": config.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": config.intermediate_size,
        "layer_norm_eps": config.layer_norm_eps,
        "layerdrop": 0.05,
        "mask_channel_length": 10,
        "mask_channel_min_space": 1,
        "mask_channel_other": 0.0,
        "mask_channel_prob": 0.0,
        "mask_channel_selection": "static",
        "mask_feature_length": 10,
        "mask_feature_prob": 0.0,
        "mask_time_length": 10,
        "mask_time_min_space": 1,
        "mask_time_other": 0.0,
        "mask_time_prob": 0.05,
        "mask_time_selection": "static",
        "model_type": "wav2vec2",
        "num_attention_heads": config.num_attention_heads,
        "num_conv_pos_embedding_groups": config.num_conv_pos_embedding_groups,
        "num_conv_pos_embeddings": config.num_conv_pos_embeddings,
        "num_feat_extract_layers": config.num_feat_extract_layers,
        "num_hidden_layers": config.num_hidden_layers,
        "pad_token_id": config.pad_token_id,
        "transformers_version": "4.5.0.dev0",
        "vocab_size": config.vocab_size,
    }


def old_style_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with weight-norm parametrizations renamed to the pre-2023 ``weight_g/weight_v``."""
    state: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        for new, old in _PARAM_TO_OLD.items():
            if key.endswith(new):
                key = key[: -len(new)] + old
        state[key] = tensor.detach().clone().contiguous()
    return state


def _write_json(path: Path, data: object, **kwargs: object) -> None:
    with path.open("w", encoding="utf-8") as f:
        json.dump(data, f, **kwargs)  # type: ignore[arg-type]


def make_tiny_checkpoint(
    directory: str | Path,
    *,
    layout: str = "2021",
    vocab: dict[str, int] | None = None,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    conv_dim: tuple[int, ...] = (32,) * 7,
    feat_extract_norm: str = "layer",
    do_stable_layer_norm: bool = True,
    num_conv_pos_embeddings: int = 16,
    num_conv_pos_embedding_groups: int = 4,
) -> Path:
    """Write a random ``Wav2Vec2ForCTC`` (deterministic by ``seed``) in the "2021" hub or "modern" layout.

    "2021" mirrors the hub repo: config.json, preprocessor_config.json, special_tokens_map.json,
    vocab.json (ASCII-escaped) and pytorch_model.bin with old weight-norm keys, no tokenizer_config.json.
    "modern" is what ``save_pretrained`` writes today (safetensors, processor/tokenizer configs).
    """
    if layout not in ("2021", "modern"):
        raise ValueError(f"layout must be '2021' or 'modern', got {layout!r}")
    vocab = tiny_vocab() if vocab is None else vocab
    config = tiny_config(
        len(vocab),
        hidden=hidden,
        layers=layers,
        heads=heads,
        conv_dim=conv_dim,
        feat_extract_norm=feat_extract_norm,
        do_stable_layer_norm=do_stable_layer_norm,
        num_conv_pos_embeddings=num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=num_conv_pos_embedding_groups,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model = Wav2Vec2ForCTC(config).eval()

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_json(directory / "vocab.json", vocab)  # json.dump default: ASCII \uXXXX escapes, like the hub file
    if layout == "2021":
        _write_json(directory / "config.json", _config_2021(config), indent=2, sort_keys=True)
        with (directory / "preprocessor_config.json").open("w", encoding="utf-8") as f:
            f.write(json.dumps(PREPROCESSOR_CONFIG, indent=2, sort_keys=True) + "\n")
        _write_json(directory / "special_tokens_map.json", SPECIAL_TOKENS_MAP)
        torch.save(old_style_state_dict(model), directory / "pytorch_model.bin")
        return directory

    tokenizer = Wav2Vec2CTCTokenizer(
        str(directory / "vocab.json"),
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        word_delimiter_token="|",
    )
    extractor = Wav2Vec2FeatureExtractor(**PREPROCESSOR_CONFIG)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(directory)
    model.save_pretrained(directory)
    return directory
