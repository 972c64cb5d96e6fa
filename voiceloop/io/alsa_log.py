"""alsa-lib's error lines go to the ``voiceloop.alsa`` logger (debug level) instead of stderr.

When PortAudio starts it opens every PCM that alsa.conf defines (``rear``, ``surround51``,
``hdmi``, ``modem``, ...) to see which exist, and alsa-lib prints one line per miss straight to
stderr ("ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM cards.pcm.rear"). On a desktop
with a sound card that is a screenful before the first word of ``voiceloop chat``, none of it an
error of ours. alsa-lib lets a program install its own error handler; this one logs.

The handler is C-variadic; it is declared with the fixed arguments only, so the log line carries
alsa-lib's format string, not the formatted message (the place and the kind of miss, enough to
debug with). Linux only: elsewhere there is no alsa-lib and nothing to do.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("voiceloop.alsa")

# void handler(const char *file, int line, const char *function, int err, const char *fmt, ...)
_HANDLER_TYPE = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
)
_installed: list[object] = []  # the library and the callback: both must outlive every ALSA call


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


def _log_alsa_error(file: bytes | None, line: int, func: bytes | None, err: int, fmt: bytes | None) -> None:
    with contextlib.suppress(Exception):  # ctypes would print an exception raised here to stderr
        log.debug("alsa-lib %s:%d (%s) %s [err %d]", _text(file), line, _text(func), _text(fmt), err)


def route_alsa_errors() -> bool:
    """Install the handler once (before PortAudio starts); False where alsa-lib is absent."""
    if _installed:
        return True
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("asound") or "libasound.so.2"
    try:
        alsa = ctypes.CDLL(name)
        set_handler = alsa.snd_lib_error_set_handler
    except (OSError, AttributeError):
        return False
    callback = _HANDLER_TYPE(_log_alsa_error)
    set_handler.argtypes = [_HANDLER_TYPE]
    set_handler(callback)
    _installed.extend((alsa, callback))
    # Registered before sounddevice's own exit hook, so it runs after PortAudio has terminated:
    # no ALSA call can then reach a Python callback while the interpreter shuts down.
    atexit.register(_restore_default, set_handler)
    return True


def _restore_default(set_handler: ctypes._CFuncPtr) -> None:
    set_handler.argtypes = [ctypes.c_void_p]
    set_handler(None)
