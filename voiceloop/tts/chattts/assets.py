"""The official ChatTTS asset layout: where each file lives, integrity checks, strict loading.

Layout (relative to the snapshot root)::

    asset/gpt/config.json, asset/gpt/model.safetensors   HF LlamaModel (driven via inputs_embeds)
    asset/Embed.safetensors                             text/code embeddings and heads
    asset/Decoder.safetensors                           GPT hidden states -> log-mel
    asset/DVAE.safetensors                              codes -> log-mel (and the voice encoder)
    asset/Vocos.safetensors                             log-mel -> 24 kHz wave
    asset/tokenizer/                                    BERT WordPiece + 50 control tokens
    asset/spk_stat.pt                                   speaker sampling statistics (std ++ mean)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ...errors import UserError
from ...hub import from_hub, looks_like_path

GPT_DIR = "asset/gpt"
EMBED = "asset/Embed.safetensors"
DECODER = "asset/Decoder.safetensors"
DVAE = "asset/DVAE.safetensors"
VOCOS = "asset/Vocos.safetensors"
TOKENIZER_DIR = "asset/tokenizer"
SPK_STAT = "asset/spk_stat.pt"


class AssetError(ValueError):
    """An asset file does not match the architecture it is loaded into."""


def check_keys(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], label: str) -> None:
    """Raise :class:`AssetError` naming every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", … ({len(keys) - 12} more)" if len(keys) > 12 else "")
                parts.append(f"{title} keys: {shown}")
        raise AssetError(f"{label} does not match the expected architecture — " + "; ".join(parts))


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], label: str) -> None:
    """Load ``state`` into ``module`` requiring exactly the same keys and shapes.

    The error names every missing, unexpected and mis-shaped key, so a wrong or truncated file is
    diagnosed from the message alone.
    """
    check_keys(module.state_dict(), state, label)
    module.load_state_dict(dict(state), strict=True)


DEFAULT_REPO = "2Noise/ChatTTS"
# What a hub download fetches: the safetensors layout, the tokenizer, the speaker statistics.
HUB_PATTERNS = ["asset/gpt/*", "asset/tokenizer/*", "asset/*.safetensors", "asset/spk_stat.pt"]
REQUIRED = [
    "asset/gpt/config.json",
    "asset/gpt/model.safetensors",
    EMBED,
    DECODER,
    VOCOS,
    "asset/tokenizer/tokenizer.json",
]


class AssetsNotAvailable(UserError, RuntimeError):
    """The assets are neither a local directory nor reachable on the hub."""


def _guidance(name: str, reason: str) -> str:
    return (
        f"ChatTTS assets {name!r} are not available: {reason}. To use a local directory, download "
        f"elsewhere with `hf download {DEFAULT_REPO} --local-dir DIR` (it must contain asset/), copy DIR "
        "here and pass it as the model (e.g. --tts DIR)"
    )


def resolve_root(name: str = DEFAULT_REPO) -> Path:
    """A local directory holding ``asset/``, or a hub id fetched (progress bars) into the HF cache."""
    path = Path(name).expanduser()
    if path.is_dir() or looks_like_path(name):
        if not path.is_dir():
            raise AssetsNotAvailable(_guidance(name, f"no such directory {str(path)!r}"))
        missing = [f for f in REQUIRED if not (path / f).is_file()]
        if missing:
            raise AssetsNotAvailable(_guidance(name, f"{str(path)!r} lacks {', '.join(missing)}"))
        return path
    from huggingface_hub import snapshot_download

    return from_hub(
        name,
        lambda local_only: Path(
            snapshot_download(name, allow_patterns=HUB_PATTERNS, local_files_only=local_only)
        ),
        lambda reason: AssetsNotAvailable(_guidance(name, reason)),
    )


def official_hashes() -> dict[str, str]:
    """sha256 of the released files, keyed by path relative to the snapshot root."""
    table = Path(__file__).with_name("official_sha256.json")
    return json.loads(table.read_text()) if table.is_file() else {}


def verify(root: Path) -> None:
    """Check every present asset file against the official sha256; raise naming the ones that differ."""
    hashes = official_hashes()
    if not hashes:
        raise AssetError("no official sha256 table is bundled; cannot verify")
    bad = []
    for rel, expected in sorted(hashes.items()):
        file = root / rel
        if file.is_file():
            digest = hashlib.sha256()
            with file.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != expected:
                bad.append(rel)
    if bad:
        raise AssetError(f"sha256 mismatch (not the official ChatTTS files): {', '.join(bad)}")
