"""Random ChatTTS assets for tests: the package's generator, using the official tokenizer when present."""

from __future__ import annotations

from pathlib import Path

from voiceloop.tts.chattts import random_assets
from voiceloop.tts.chattts.random_assets import *  # noqa: F403  (shapes, SPECIAL_TOKENS, GPT_CONFIG, ...)

OFFICIAL_TOKENIZER = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "chattts-tokenizer"


def write_tokenizer(out: Path, official: Path | None = OFFICIAL_TOKENIZER) -> bool:
    return random_assets.write_tokenizer(out, official)


def write_random_assets(
    root: Path, *, official_tokenizer: Path | None = OFFICIAL_TOKENIZER, **kwargs
) -> Path:
    """As the package's, but copying the official tokenizer when ../shared/fixtures has it."""
    return random_assets.write_random_assets(root, official_tokenizer=official_tokenizer, **kwargs)
