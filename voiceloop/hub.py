"""Hub-or-path questions every model loader asks (the ASR checkpoint, ChatTTS assets, the turn model)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a filesystem path."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def hub_offline() -> bool:
    """Read the offline switches now: huggingface_hub only reads them at import time."""
    flags = (os.environ.get(k, "").strip().upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in {"1", "ON", "YES", "TRUE"} for flag in flags)


def from_hub(name: str, fetch: Callable[[bool], T], fail: Callable[[str], Exception]) -> T:
    """``fetch(local_only)`` a hub id: from the cache when it is there (no network round trip);
    with offline mode on, ``fail(reason)``; else one short reachability check, then the download.

    The check exists because huggingface_hub retries an unreachable hub for minutes; one
    ``model_info`` with a timeout fails in seconds. ``fail`` builds the loader's own error.
    """
    try:
        return fetch(True)
    except Exception as cached_exc:
        if hub_offline():
            reason = "not in the Hugging Face cache and offline mode is on (HF_HUB_OFFLINE)"
            raise fail(reason) from cached_exc
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(name, timeout=10)
        return fetch(False)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise fail(f"the download failed: {first}") from exc


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """Silence hub download and weight-loading bars for a block (``--quiet``, checkpoint writes).

    Both switches are process-wide; each is restored only if this block turned it off, so a user's
    own ``disable_progress_bars()`` (or ``HF_HUB_DISABLE_PROGRESS_BARS``) stays in force.
    """
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as hf_logging

    hub_was_on = not hub_utils.are_progress_bars_disabled()
    transformers_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # also turns huggingface_hub's off
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        if transformers_was_on:
            hf_logging.enable_progress_bar()
        if hub_was_on:
            hub_utils.enable_progress_bars()
        elif not hub_utils.are_progress_bars_disabled():
            hub_utils.disable_progress_bars()  # transformers' enable turned it back on
