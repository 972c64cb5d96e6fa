"""Where and how a model computes: device, dtype, int8, threads; shared by every engine.

``ModelOptions.for_precision`` turns the loop's one ``--precision`` choice into each engine's
options: "auto" is int8 on a CPU and, on CUDA, what ``benchmarks/gpu.sh`` measured fastest per
engine (``benchmarks/results/*-cuda.json``): the ASR's steps are faster in fp16; the TTS's GPT steps
are launch-bound (one token at a time) and slower in fp16 (more kernels per step), so it stays fp32.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "int8", "bf16", "fp16")
#: precision="auto" per engine kind and device type
AUTO_PRECISION = {
    ("asr", "cpu"): "int8",
    ("tts", "cpu"): "int8",
    ("asr", "cuda"): "fp16",
    ("tts", "cuda"): "fp32",
}
_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass
class ModelOptions:
    """Where and how a model computes (every engine's, ASR and TTS alike); validated early so a bad
    CLI flag fails before loading."""

    device: str = "auto"  # auto (cuda -> mps -> cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (fp16 needs cuda/mps)
    quantize: str | None = None  # None | "int8" (dynamic int8 nn.Linear, CPU only)
    threads: int | None = None  # torch intra-op threads for this model's compute (None: leave as is)
    #: ASR with quantize="int8": the conv feature encoder's matmuls in int8 too (asr/conv_features.py;
    #: a faster streaming step: benchmarks/asr_streaming.py --precisions int8,int8-conv). Off by default:
    #: it adds rounding error at every conv layer, and how that moves the real checkpoint's CER is
    #: unmeasured here (benchmarks/asr_real.py measures it where the weights are).
    int8_conv: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE_RE.fullmatch(self.device):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"quantize must be None or 'int8', got {self.quantize!r}")
        threads = self.threads
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {self.threads!r}")
        if self.int8_conv and self.quantize != "int8":
            raise ValueError("int8_conv=True needs quantize='int8'")
        if self.quantize == "int8":
            if self.device not in ("auto", "cpu"):
                raise ValueError(f"quantize='int8' runs on the CPU only, not on {self.device!r}")
            if self.dtype != "fp32":
                raise ValueError("quantize='int8' needs dtype='fp32' (the unquantized layers stay float32)")
        if self.dtype == "fp16" and self.device == "cpu":
            raise ValueError("dtype='fp16' is for cuda/mps; on the CPU use 'bf16' or 'fp32'")

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, _DTYPES[self.dtype])

    def resolve_device(self) -> torch.device:
        """The concrete device; "auto" prefers cuda, then mps, then cpu (always cpu for int8)."""
        import torch

        cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
        if self.device == "auto":
            name = "cpu" if self.quantize else "cuda" if cuda else "mps" if mps else "cpu"
        else:
            name = self.device
        if name.startswith("cuda") and not cuda:
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if name == "mps" and not mps:
            raise ValueError("device 'mps' requested but MPS is not available")
        if self.dtype == "fp16" and name == "cpu":
            raise ValueError("dtype='fp16' is for cuda/mps but the device resolved to cpu; use bf16 or fp32")
        return torch.device(name)

    @classmethod
    def for_precision(
        cls, device: str = "auto", precision: str = "auto", threads: int | None = None, kind: str = "asr"
    ) -> ModelOptions:
        """One engine's options from a precision choice (auto: :data:`AUTO_PRECISION`, else fp32)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "auto":
            resolved = cls(device=device, threads=threads).resolve_device().type
            precision = AUTO_PRECISION.get((kind, resolved), "fp32")
        if precision == "int8":
            return cls(device="cpu", quantize="int8", threads=threads)
        return cls(device=device, dtype=precision, threads=threads)
