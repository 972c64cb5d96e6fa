"""Every benchmark result says where it ran; benchmark tables print whole in logs.

A README figure is only comparable with the machine behind it (the same int8 step differs severalfold
between AVX2 and AMX), so each ``benchmarks/results/*.json`` carries a machine block: recorded at run time by
``benchmarks/machine.py``, or reconstructed from the session notes and git history with its source named.
"""

from __future__ import annotations

import importlib
import io
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
machine = importlib.import_module("machine")

RESULTS = sorted((BENCHMARKS / "results").glob("*.json"))


def test_there_are_results_to_check() -> None:
    assert len(RESULTS) >= 20


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_every_result_names_its_machine(path: Path) -> None:
    block = json.loads(path.read_text(encoding="utf-8")).get("machine")
    assert isinstance(block, dict), f"{path.name}: no machine block"
    missing = [key for key in machine.REQUIRED_KEYS if key not in block]
    assert not missing, f"{path.name}: machine block lacks {missing}"
    assert isinstance(block["recorded"], bool)
    assert isinstance(block["cpu"], str) and block["cpu"], path.name
    assert block["cpu"] not in ("x86_64", "aarch64", "AMD64", "i386"), "an architecture is not a CPU model"
    assert isinstance(block["isa"], dict) and set(block["isa"]) == set(machine.ISA_FLAGS), path.name
    assert all(v in (True, False, None) for v in block["isa"].values())
    if block["recorded"]:
        assert block["cpu"] != "unknown"
        assert isinstance(block["cores"], int) and block["cores"] > 0
        assert isinstance(block["git_commit"], str) and isinstance(block["git_dirty"], bool)
        for key in ("loadavg_start", "loadavg_end"):
            assert isinstance(block[key], list) and len(block[key]) == 3, f"{path.name}: {key}"
    else:
        source = block.get("source")
        assert isinstance(source, str) and len(source) > 20, (
            f"{path.name}: an unrecorded block names its source"
        )


def test_machine_info_records_every_required_key() -> None:
    info = machine.finish(machine.machine_info(threads=3))
    assert info["recorded"] is True and info["threads"] == 3
    assert set(machine.REQUIRED_KEYS) <= set(info)
    assert info["cores"] >= 1 and len(info["loadavg_end"]) == 3
    assert set(info["isa"]) == set(machine.ISA_FLAGS)
    json.dumps(info)  # it goes into a result file as is


def test_print_table_writes_markdown_with_every_cell_whole_off_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    long = "int8 onnx GPT, smooth start, pulse+echo path, preemptive replies on " * 3
    machine.print_table(
        "Voice to voice", ["variant", "p50 / p95 s", "turns"], [[long, "0.69 / 0.70", 6], ["a|b", None, 1]]
    )
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0] == "Voice to voice"
    assert "| variant | p50 / p95 s | turns |" in lines
    assert "|---|---:|---:|" in lines
    assert f"| {long} | 0.69 / 0.70 | 6 |" in lines  # not cut to "int8 onnx…"
    assert "| a\\|b |  | 1 |" in lines  # a pipe in a cell does not open a new column
    assert "…" not in out


def test_print_table_uses_rich_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    machine.print_table("TTS", ["variant", "rtf"], [["voiceloop int8", "0.83"]])
    out = terminal.getvalue()
    assert "TTS" in out and "voiceloop int8" in out and "0.83" in out
    assert "|---" not in out  # a box-drawn table, not markdown
