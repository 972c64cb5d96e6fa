"""The repository's promises: CI runs exactly README's test command; the code is ruff clean."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)  # type: ignore[union-attr]
    block = re.sub(r"\\\n\s*", "", block)  # a command continued over lines is one command
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2, "README opens with two commands: main job, tests"
    test_command = commands[1].split("&&")[-1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert test_command in ci_lines


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean() -> None:
    result = subprocess.run(
        ["ruff", "check", "voiceloop", "tests", "examples", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    formatted = subprocess.run(
        ["ruff", "format", "--check", "voiceloop", "tests", "examples", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert formatted.returncode == 0, formatted.stdout[-3000:]


# -- the layout shows the architecture ------------------------------------------------------------
#: a package imports only lower ranks: the core (rank 0: frames, pipeline, clock, compute, engines, ...)
#: imports only itself; io holds the transports; the stages of the data path (io → vad → asr → dialogue
#: → tts → io) are siblings that never import each other; the loop assembles them; serve, the agent
#: and the CLI sit on top (cluster: serve's calls placed on Ray workers)
RANKS = {
    **{"io": 1, "vad": 2, "aec": 2, "asr": 2, "dialogue": 2, "tts": 2, "loop": 3},
    **{"serve": 4, "cluster": 4.5, "agent": 5},
}
TOP = {"cli": 6, "__init__": 7, "__main__": 7}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported voiceloop module as a dotted path, at module level?) for every import in ``path``."""
    import ast

    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[: len(package) - node.level + 1]
            names = [node.module] if node.module else [alias.name for alias in node.names]
            targets = [".".join([*base, *name.split(".")]) for name in names]
        elif (node.module or "").startswith("voiceloop"):
            targets = [node.module]
        else:
            continue
        found += [(target, id(node) in top_level) for target in targets]
    return found


def _unit(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_lower_layer_imports_a_higher_one() -> None:
    wrong = []
    for path in sorted((ROOT / "voiceloop").rglob("*.py")):
        here = _unit(".".join(path.relative_to(ROOT).with_suffix("").parts))
        rank = TOP.get(here, RANKS.get(here, 0))
        for target, _ in _imports(path):
            there = _unit(target)
            other = TOP.get(there, RANKS.get(there, 0))
            upward = other > rank or (other == rank > 0 and there != here)  # same rank: siblings stay apart
            if upward:
                wrong.append(
                    f"{path.relative_to(ROOT)} ({here}, rank {rank}) imports {target} (rank {other})"
                )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    """Module-level imports between voiceloop's modules form no cycle (function-local imports are
    how an optional or heavy dependency is deferred, and are left out)."""
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (ROOT / "voiceloop").rglob("*.py")
    }
    graph = {
        name: {t for t, top in _imports(path) if top and t in modules and t != name}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_package_file_over_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "voiceloop").rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert not long, long
