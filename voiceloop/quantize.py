"""Dynamic int8 linear layers on the CPU, the one way every engine quantizes."""

from __future__ import annotations

import warnings
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def int8_linears(module: M) -> M:
    """Replace every ``nn.Linear`` in ``module`` (in place) by a dynamic int8 one; returns it.

    Weights become int8 per tensor, activations are quantized per call (fbgemm on x86). torch marks
    ``quantize_dynamic`` and qint8 tensors deprecated in favour of torchao, which is not a
    dependency; those warnings are muted here and nowhere else.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", ".*quantized tensor creation functions", UserWarning)
        torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return module
