"""Process memory settings for steady real-time compute: glibc's heap and Python's cyclic GC.

:func:`tune_for_inference` keeps freed memory in the process heap while models run on the CPU
(glibc only); :func:`frozen_heap` keeps full garbage collections from stalling a running loop.

Every streaming step allocates and frees buffers of a few MB (attention inputs, conv activations,
decoder frames). glibc hands blocks over its mmap threshold straight back to the kernel on free,
and trims the heap top once more than twice the largest block is free, so the next step takes
page faults on all of it again. ``benchmarks/allocator.py`` counts the faults and the RTF of
streaming TTS and ASR with glibc's defaults and tuned, side by side (``results/allocator.json``).

The price is resident memory: up to ``TRIM_BYTES`` of freed heap is kept instead of returned.
Set ``VOICELOOP_MALLOC_TUNING=0`` to leave glibc's defaults alone.

:func:`bound_kernel_caches` (run at import) caps torch's per-shape CPU kernel caches: oneDNN and
ideep keep a compiled convolution per input shape, 1024 of each by default, and the TTS decoder
sees a new window length at the end of most sentences, so a server's RSS climbed for as long as
new lengths came (``benchmarks/soak.py``; ``tests/test_leaks.py`` shows the cache evicting).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

#: blocks up to this size come from the heap (glibc default: 128 KiB, adapting up to 32 MiB)
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: freed memory at the heap top kept before trimming (glibc default: twice the mmap threshold)
TRIM_BYTES = 256 * 1024 * 1024
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: cached kernels kept per cache: the steady windows of both engines fit, one-off lengths are evicted
KERNEL_CACHE_ENTRIES = 256
#: oneDNN's primitive cache and ideep's (torch's wrapper) LRU cache; 0 crashes ideep, so never below 1
KERNEL_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")

_lock = threading.Lock()
_state: bool | None = None  # None: not tried yet; else whether the thresholds were set


def tune_for_inference() -> bool:
    """Set glibc's mmap and trim thresholds once per process; returns whether they are set.

    A no-op (False) off glibc, when ``VOICELOOP_MALLOC_TUNING=0``, or when glibc refuses a value.
    """
    global _state
    with _lock:
        if _state is None:
            _state = _apply()
        return _state


def bound_kernel_caches() -> None:
    """Cap torch's CPU kernel caches (``KERNEL_CACHE_VARIABLES``) unless the environment sets them.

    torch reads them once, when it creates its first oneDNN kernel, so this runs when this module is
    imported: ``import voiceloop`` (and every engine module) imports it before any model runs.
    """
    for name in KERNEL_CACHE_VARIABLES:
        os.environ.setdefault(name, str(KERNEL_CACHE_ENTRIES))


bound_kernel_caches()


def _apply() -> bool:
    if os.environ.get("VOICELOOP_MALLOC_TUNING", "1").strip() in {"0", "false", "no", "off"}:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc's mallopt parameter numbers only
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES) == 1 and ok
    log.debug("glibc malloc thresholds %s", "set" if ok else "refused")
    return ok


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave everything allocated so far (imports, loaded models) out of the cyclic GC meanwhile.

    A full collection walks every tracked object while holding the GIL, and with torch,
    transformers and aiortc imported there are hundreds of thousands of them. That is
    a stall of the whole loop — the microphone's handoff included — whenever one comes due in a
    session. Frozen objects are skipped (``gc.freeze``); garbage made while the loop runs is still
    collected. Leaving the block unfreezes them again.
    """
    gc.collect()  # garbage from loading is not worth keeping forever
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
