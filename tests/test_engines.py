"""Engines by name (voiceloop.engines): ``ENGINE:MODEL`` specs, the entry-point registry, options
that travel to the engine as they are, and a third-party engine plugged in with one module and
one entry-point line — loaded by ``voiceloop run`` without touching voiceloop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
from helpers.speech import espeak, require_espeak

from voiceloop.engines import EngineError, EngineSettings, load, parse_spec, registered
from voiceloop.errors import UserError
from voiceloop.loop import LoopOptions

ROOT = Path(__file__).resolve().parents[1]
TINY_ASR = ROOT / "tests" / "fixtures" / "tiny-zh-asr"


def test_specs_name_an_engine_or_a_model_of_the_default_one(tmp_path):
    assert str(parse_spec("espeak", "tts")) == "espeak"
    assert (parse_spec("espeak:en-us", "tts").engine, parse_spec("espeak:en-us", "tts").model) == (
        "espeak",
        "en-us",
    )
    assert str(parse_spec("2Noise/ChatTTS", "tts")) == "chattts:2Noise/ChatTTS"
    assert str(parse_spec(None, "asr")) == "wav2vec2"
    assert str(parse_spec("wav2vec2:some/model", "asr")) == "wav2vec2:some/model"
    folder = tmp_path / "espeak"  # a directory that happens to carry an engine's name is a model
    folder.mkdir()
    assert str(parse_spec(str(folder), "tts")) == f"chattts:{folder}"
    with pytest.raises(EngineError, match=r"unknown TTS engine 'piper'.*installed: chattts, espeak") as info:
        parse_spec("piper:zh_CN", "tts")
    assert isinstance(info.value, UserError)
    with pytest.raises(EngineError, match="unknown ASR engine"):
        LoopOptions(asr="whisper:large-v3")  # refused before any model loads


def test_voiceloops_own_engines_are_registered_by_entry_points():
    from importlib.metadata import entry_points

    names = {point.name: point.value for point in entry_points(group="voiceloop.tts_engines")}
    assert names.get("espeak") == "voiceloop.tts.espeak:load"  # the installed package's metadata
    assert {"chattts", "espeak"} <= set(registered("tts")) and "wav2vec2" in registered("asr")


def test_engine_options_travel_as_they_are_and_unknown_ones_are_refused():
    require_espeak()
    from voiceloop.tts.espeak import EspeakOptions, EspeakTts

    own = EspeakOptions(speed=150)
    engine = load("espeak", "tts", EngineSettings(options=own))
    assert isinstance(engine, EspeakTts) and engine.options is own and engine.voice == "cmn-latn-pinyin"
    engine.close()
    named = load("espeak:en-us", "tts", EngineSettings(options={"max_seconds": 5.0}))
    assert named.options.max_seconds == 5.0 and named.voice == "en-us"
    named.close()
    with pytest.raises(EngineError, match="espeak engine does not take these options: \\['backend'\\]"):
        load(
            "espeak",
            "tts",
            EngineSettings(options=LoopOptions(tts_backend="onnx").engine_settings("tts").options),
        )
    with pytest.raises(UserError, match="not both"):
        LoopOptions(tts="espeak", tts_options=own, tts_max_seconds=2.0).engine_settings("tts")


PLUGIN = '''
"""A third-party TTS engine: a tone per piece (what a plugin needs, nothing more)."""
import numpy as np
from voiceloop import TtsEngine, TtsSession


class ToneSession(TtsSession):
    def __init__(self, hz):
        self.hz = hz

    async def synthesize(self, text):
        t = np.arange(1600 * len(text)) / 16000
        yield (np.sin(2 * np.pi * self.hz * t) * 8000).astype(np.int16)


class Tone(TtsEngine):
    sample_rate = 16000

    def __init__(self, hz):
        self.hz = hz

    def session(self, voice=None):
        return ToneSession(self.hz)


def load(model, settings):
    return Tone(float(model or 440))
'''


def test_a_new_engine_is_one_module_and_one_entry_point_line(tmp_path):
    """The seam: a package outside voiceloop registers ``tone`` in ``voiceloop.tts_engines`` and
    ``voiceloop run --tts tone:660`` speaks with it."""
    require_espeak()
    site = tmp_path / "site"
    (site / "voiceloop_tone-0.1.dist-info").mkdir(parents=True)
    (site / "voiceloop_tone.py").write_text(textwrap.dedent(PLUGIN), encoding="utf-8")
    info = site / "voiceloop_tone-0.1.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: voiceloop-tone\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        '[voiceloop.tts_engines]\ntone = "voiceloop_tone:load"\n'.replace('"', "")
    )
    user = np.concatenate([np.zeros(8000, np.int16), espeak("你好", voice="cmn-latn-pinyin")])
    soundfile.write(tmp_path / "in.wav", user, 16_000)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    argv = ["run", "--input", str(tmp_path / "in.wav"), "--output", str(tmp_path / "out.wav")]
    argv += ["--asr", str(TINY_ASR), "--tts", "tone:660", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "voiceloop", *argv], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["type"] == "summary" and summary["turns"] == 1
    out, rate = soundfile.read(tmp_path / "out.wav", dtype="float32")
    assert rate == 16_000
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * rate / len(out) - 660) < 5  # the plugin's tone, not espeak's voice
