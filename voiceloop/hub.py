"""Hub-or-path questions every model loader asks (the ASR checkpoint, ChatTTS assets, the turn model)."""

from __future__ import annotations

import os
from pathlib import Path


def looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a filesystem path."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def hub_offline() -> bool:
    """Read the offline switches now: huggingface_hub only reads them at import time."""
    flags = (os.environ.get(k, "").strip().upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in {"1", "ON", "YES", "TRUE"} for flag in flags)
