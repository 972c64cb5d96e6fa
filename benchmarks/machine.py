"""Where a benchmark ran, and how it prints its tables: shared by every script in benchmarks/.

A timing means little without the machine behind it: the same int8 ASR step is several times faster with AMX
than on AVX2 alone (results/asr_streaming-spr.json against asr_streaming.json), and a busy neighbour moves it
too. Every result file therefore carries ``machine_info()`` (taken when the run starts, so its load average
is the one before the work) with ``finish()`` adding the load average at the end.

Scripts import this module by name (``from machine import machine_info``): ``python benchmarks/x.py``
puts ``benchmarks/`` first on ``sys.path``. Standard library only at import time: pipeline_overhead.py
imports it inside its pipecat venv too.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# The instruction-set extensions that decide which int8/bf16 kernels run (fbgemm on AVX2, VNNI dot
# products, oneDNN on AMX tiles); everything else in /proc/cpuinfo's flags is noise for these benchmarks.
ISA_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
# Keys every machine block in benchmarks/results/*.json has (tests/test_results.py checks them).
REQUIRED_KEYS = (
    "recorded",
    "cpu",
    "isa",
    "cores",
    "torch",
    "onnxruntime",
    "transformers",
    "git_commit",
    "git_dirty",
    "loadavg_start",
    "loadavg_end",
)
PACKAGES = ("torch", "onnxruntime", "transformers", "numpy")
NUMERIC = re.compile(r"[-+0-9.eE%xs×/,()\s]*")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC", "Intel(R) Xeon(R) Processor"), not just the architecture."""
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    if sys.platform == "darwin":
        try:
            done = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, check=True
            )
            return done.stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    """All flags /proc/cpuinfo lists for the first CPU (empty where there is no /proc/cpuinfo)."""
    for line in _cpuinfo():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def isa() -> dict[str, bool | None]:
    """Each of ``ISA_FLAGS``: present or not; None for all where the flags cannot be read."""
    flags = cpu_flags()
    return {flag: (flag in flags) if flags else None for flag in ISA_FLAGS}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions from the package metadata (no import: torch alone takes seconds to load)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """HEAD's commit, and whether tracked files differ from it (which ones, so a reader can judge)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root, check=True).stdout

    try:
        commit = git("rev-parse", "--short=10", "HEAD").strip()
        changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": None, "git_dirty_paths": []}
    return {"git_commit": commit, "git_dirty": bool(changed), "git_dirty_paths": changed[:40]}


def _gpus() -> list[str]:
    """The machine's NVIDIA GPUs by name, from nvidia-smi (no torch import needed)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def _torch_details() -> dict[str, Any]:
    """The GPU (torch's view when the benchmark imported it, else nvidia-smi's) and torch's CPU kernels."""
    torch = sys.modules.get("torch")
    if torch is None:
        gpus = _gpus()
        return {"gpu": gpus[0] if gpus else None, "gpus": len(gpus)}
    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def machine_info(**extra: Any) -> dict[str, Any]:
    """A result file's machine block, taken when the run starts; ``extra`` adds script-specific keys."""
    versions = package_versions()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on macOS / Windows
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "recorded": True,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "isa": isa(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
        **_torch_details(),
        **git_state(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "loadavg_end": None,
    }
    info.update(extra)
    return info


def finish(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` with the load average at the end of the run (call it just before writing the result)."""
    info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return info


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table with every cell's full text (pipes escaped, numbers right-aligned)."""
    body = [[_cell(v) for v in row] for row in rows]
    numeric = [bool(body) and all(_numeric(r[i]) for r in body if i < len(r)) for i in range(len(columns))]
    lines = [
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A rich table on a terminal; plain markdown otherwise, so logs keep every cell whole."""
    rows = [list(r) for r in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for i, column in enumerate(columns):
            right = bool(rows) and all(_numeric(_cell(r[i])) for r in rows if i < len(r))
            table.add_column(column, justify="right" if right else "left", overflow="fold")
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        Console().print(table)
        return
    print(f"\n{title}\n" if title else "")
    print(markdown_table(columns, rows), flush=True)


def _cell(value: Any) -> str:
    return ("" if value is None else str(value)).replace("|", "\\|").replace("\n", " ")


def _numeric(text: str) -> bool:
    """Cells like "0.69", "12 %", "0.69 / 0.70", "1.2x", "-" or empty, which read best right-aligned."""
    text = text.strip()
    return text in ("", "-", "—") or bool(NUMERIC.fullmatch(text) and re.search(r"\d", text))
