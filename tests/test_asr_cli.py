"""`voiceloop transcribe` end to end on a tiny checkpoint written in the hub layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import soundfile
from helpers.asr_fixtures import make_tiny_checkpoint
from helpers.speech import espeak


def voiceloop(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "voiceloop", *args], capture_output=True, text=True, env=environment
    )


def test_transcribe_json_offline_and_streaming_agree_on_a_short_file(tmp_path) -> None:
    model = make_tiny_checkpoint(tmp_path / "model", layout="2021")
    wav = tmp_path / "hello.wav"
    soundfile.write(str(wav), espeak("好"), 16_000)  # 0.78 s: shorter than the first window (0.88 s)
    offline = voiceloop("transcribe", str(wav), "--model", str(model), "--json")
    streamed = voiceloop("transcribe", str(wav), "--model", str(model), "--json", "--stream")
    assert offline.returncode == 0, offline.stderr
    assert streamed.returncode == 0, streamed.stderr
    a, b = json.loads(offline.stdout), json.loads(streamed.stdout)
    assert a["mode"] == "offline" and b["mode"] == "stream"
    # a clip shorter than the first streaming window is decoded in one pass: identical results
    assert a["text"] == b["text"] and len(a["text"]) == len(a["chars"])
    assert all({"char", "confidence", "start", "end"} <= set(c) for c in a["chars"])


def test_transcribe_stream_prints_text_and_handles_resampling(tmp_path) -> None:
    model = make_tiny_checkpoint(tmp_path / "model", layout="modern")
    wav = tmp_path / "long.wav"
    audio = espeak("今天天气很好，我们去公园散步吧。我们去公园散步吧。")
    soundfile.write(str(wav), audio, 16_000)
    stereo_44k = tmp_path / "stereo.wav"
    import numpy as np
    import soxr

    resampled = soxr.resample(audio.astype(np.float32) / 32768, 16_000, 44_100)
    soundfile.write(str(stereo_44k), np.stack([resampled, resampled], axis=1), 44_100)
    out = voiceloop("transcribe", str(wav), str(stereo_44k), "--model", str(model), "--stream")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith(str(wav)) and len(lines[0]) > len(str(wav)) + 3


def test_missing_model_gives_guidance_without_traceback(tmp_path) -> None:
    wav = tmp_path / "x.wav"
    soundfile.write(str(wav), espeak("你好"), 16_000)
    out = voiceloop("transcribe", str(wav), "--model", "nobody/no-such-model", env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2
    assert "local directory" in out.stderr and "--model DIR" in out.stderr and "Traceback" not in out.stderr


def test_window_and_context_flags_reach_the_engine(tmp_path) -> None:
    import argparse

    from voiceloop.cli.asr import add_model_arguments, load_engine

    model = make_tiny_checkpoint(tmp_path / "model", layout="modern")
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    default = load_engine(parser.parse_args(["--model", str(model)]))
    assert default.caches_context and default.options.right_s == 0.24
    args = ["--model", str(model), "--recompute-context", "--chunk-s", "0.32", "--right-s", "0.16"]
    recompute = load_engine(parser.parse_args(args))
    assert not recompute.caches_context
    assert (recompute.options.chunk_s, recompute.options.right_s) == (0.32, 0.16)
    int8_conv = load_engine(parser.parse_args(["--model", str(model), "--int8-conv"]))
    assert int8_conv.checkpoint.matmul_conv.int8  # implies --int8
    assert not default.checkpoint.matmul_conv.int8
    for engine in (default, recompute, int8_conv):
        engine.lane.close()
