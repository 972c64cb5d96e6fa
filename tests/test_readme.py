"""README's library example runs as written (it cannot go stale): its first Python block, executed
in a folder holding the recording it names and the bundled tiny ASR at the path it names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile
from helpers.speech import espeak, require_espeak

ROOT = Path(__file__).resolve().parents[1]


def library_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_library_example_runs(tmp_path):
    require_espeak()
    code = library_example()
    assert len(code.strip().splitlines()) <= 15, "the example is the front door: keep it short"
    (tmp_path / "tests" / "fixtures").mkdir(parents=True)
    (tmp_path / "tests" / "fixtures" / "tiny-zh-asr").symlink_to(ROOT / "tests" / "fixtures" / "tiny-zh-asr")
    silence = np.zeros(8000, np.int16)
    soundfile.write(tmp_path / "hello.wav", np.concatenate([silence, espeak("你好"), silence]), 16_000)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^1 turn\(s\), voice to voice [0-9.]+ s$", done.stdout.strip(), re.M), done.stdout
    audio, _ = soundfile.read(tmp_path / "reply.wav")
    assert np.abs(audio).max() > 0.05  # the bot spoke
