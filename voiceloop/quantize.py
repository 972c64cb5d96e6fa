"""Dynamic int8 linear layers on the CPU, the one way every engine quantizes.

Which torch backend packs the int8 weights decides how fast they run, and the best one depends on
the CPU and on how many rows each call multiplies (``benchmarks/int8_engines.py`` measures both on
the ASR's 24-layer stack of linears): where the CPU has AMX, oneDNN with its int8 tiles is faster
for a streaming ASR step's 44 rows and an offline pass's hundreds, but slower for one row (a TTS
decoding step), the two crossing at a few rows. Capped to AVX2 (``ONEDNN_MAX_CPU_ISA``) oneDNN was
far slower than fbgemm, and with AVX-512 VNNI but no AMX the two tied. So weights that
see ``AMX_MIN_ROWS`` rows or more per call are packed by oneDNN where the CPU has AMX, all others by
fbgemm. The backend is chosen when a layer is packed (a later change of
``torch.backends.quantized.engine`` does not move packed weights), so this module sets it only
around packing and leaves the process-wide setting as it found it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)

#: ``VOICELOOP_INT8_ENGINE`` overrides the choice (``fbgemm``, ``onednn``, ``x86``, ``qnnpack``)
ENGINE_ENV = "VOICELOOP_INT8_ENGINE"
#: rows per call from which oneDNN's AMX kernels beat fbgemm (the crossing benchmarks/int8_engines.py
#: measures)
AMX_MIN_ROWS = 8


def int8_linears(module: M, rows: int, engine: str | None = None) -> M:
    """Replace every ``nn.Linear`` in ``module`` (in place) by a dynamic int8 one; returns it.

    ``rows``: the typical number of rows one call multiplies (frames of a streaming step; 1 for
    token-by-token decoding); with the CPU it picks the backend that packs the weights
    (:func:`int8_engine`), unless ``engine`` names one. Weights become int8 per tensor, activations
    are quantized per call. torch marks ``quantize_dynamic`` and qint8 tensors deprecated in favour
    of torchao, which is not a dependency; those warnings are muted here and nowhere else.
    """
    with packing_engine(engine or int8_engine(rows)), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", ".*quantized tensor creation functions", UserWarning)
        torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return module


def int8_engine(rows: int = AMX_MIN_ROWS) -> str:
    """The backend for int8 weights fed ``rows`` rows per call: ``onednn`` with AMX and enough rows.

    Otherwise ``fbgemm``, or whatever this torch build supports (``qnnpack`` on ARM).
    """
    supported = torch.backends.quantized.supported_engines
    wanted = os.environ.get(ENGINE_ENV, "").strip().lower()
    if wanted:
        if wanted not in supported:
            raise ValueError(f"{ENGINE_ENV}={wanted!r}: this torch supports {', '.join(supported)}")
        return wanted
    if rows >= AMX_MIN_ROWS and "onednn" in supported and has_amx():
        return "onednn"
    for name in ("fbgemm", "x86", "qnnpack"):
        if name in supported:
            return name
    return torch.backends.quantized.engine


@functools.cache
def has_amx() -> bool:
    """Whether the CPU has AMX int8 tiles usable by this process (torch asks the OS for them)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


@contextlib.contextmanager
def packing_engine(name: str) -> Iterator[None]:
    """Set ``torch.backends.quantized.engine`` for the block, then restore it."""
    previous = torch.backends.quantized.engine
    if name == previous:
        yield
        return
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous
