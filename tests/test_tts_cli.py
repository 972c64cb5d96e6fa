"""``voiceloop say`` / ``voiceloop tts ...`` on random assets, through the real entry point."""

from __future__ import annotations

import pytest
import soundfile

from voiceloop.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

LIMIT = ["--max-seconds", "0.4"]  # 19 GPT steps: random weights have no meaningful end of speech


def _whole_steps(samples: int) -> bool:
    """1..19 GPT steps of 512 samples (the centred ISTFT drops 256): random weights may stop early."""
    return (samples + 256) % 512 == 0 and 1 <= (samples + 256) // 512 <= 19


def _say(root, *args) -> int:
    return main(["say", *args, "--model", str(root), "--threads", "1", *LIMIT])


def test_say_writes_a_24khz_wav_with_tags_and_a_seed_voice(chattts_root, tmp_path, capsys):
    out = tmp_path / "out.wav"
    assert (
        _say(chattts_root, "你好，[laugh]今天天气不错", "-o", str(out), "--voice", "seed:1234", "--seed", "1")
        == 0
    )
    audio, rate = soundfile.read(out, dtype="int16")
    assert rate == 24_000 and audio.ndim == 1 and _whole_steps(len(audio))
    assert "RTF" in capsys.readouterr().err


def test_say_stream_reports_first_audio(chattts_root, tmp_path, capsys):
    out = tmp_path / "s.wav"
    assert _say(chattts_root, "你好", "-o", str(out), "--stream", "--seed", "2") == 0
    assert "first audio after" in capsys.readouterr().err
    assert _whole_steps(soundfile.info(out).frames)


def test_say_sounds_the_same_on_both_gpt_backends(chattts_root, tmp_path):
    pytest.importorskip("onnxruntime")
    waves = []
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.wav"
        assert (
            _say(
                chattts_root,
                "你好，今天天气不错",
                "-o",
                str(out),
                "--seed",
                "3",
                "--voice",
                "seed:7",
                "--backend",
                backend,
                "--device",
                "cpu",
            )
            == 0
        )
        waves.append(soundfile.read(out, dtype="int16")[0].astype(int))
    assert len(waves[0]) == len(waves[1]) and _whole_steps(len(waves[0]))
    assert abs(waves[0] - waves[1]).max() <= 2  # same codes; hidden states equal to ~1e-6


def test_say_batch_writes_one_file_per_line_and_saves_the_voice(chattts_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VOICELOOP_HOME", str(tmp_path / "home"))
    lines = tmp_path / "lines.txt"
    lines.write_text("你好\n\n今天天气不错\n。。。\n", encoding="utf-8")
    out_dir = tmp_path / "wavs"
    code = _say(chattts_root, "--batch", str(lines), "--out-dir", str(out_dir), "--save-voice", "anna")
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["1.wav", "2.wav"]  # line 3 has nothing to say
    assert "nothing to say" in capsys.readouterr().out
    assert main(["tts", "voice", "list"]) == 0
    assert capsys.readouterr().out.split() == ["anna"]
    assert _say(chattts_root, "你好", "-o", str(tmp_path / "a.wav"), "--voice", "anna") == 0


def test_voice_tool_saves_seed_voices_and_shows_them(chattts_root, tmp_path, capsys):
    home = ["--voice-dir", str(tmp_path / "voices")]
    assert main(["tts", "voice", "save", "bob", "seed:7", "--model", str(chattts_root), *home]) == 0
    capsys.readouterr()
    assert main(["tts", "voice", "show", "bob", *home]) == 0
    speaker = capsys.readouterr().out.strip()
    assert len(speaker) > 100
    assert main(["tts", "voice", "delete", "bob", *home]) == 0
    assert main(["tts", "voice", "show", "bob", *home]) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["say", "。。。"], "nothing to say"),
        (["say"], "give the text"),
        (["say", "hi", "--batch", "x.txt"], "--out-dir"),
        (["say", "你好", "--voice", "seed:x"], "seed"),
    ],
)
def test_user_errors_are_one_line(chattts_root, tmp_path, capsys, argv, message):
    assert main([*argv, "--model", str(chattts_root), "-o", str(tmp_path / "o.wav")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_model_directory_says_how_to_get_one(tmp_path, capsys):
    assert main(["say", "你好", "--model", str(tmp_path / "nope")]) == 2
    assert "hf download 2Noise/ChatTTS --local-dir" in capsys.readouterr().err


def test_export_onnx_command(chattts_root, tmp_path, capsys):
    assert main(["tts", "export-onnx", str(chattts_root), str(tmp_path / "onnx")]) == 0
    assert (tmp_path / "onnx" / "chattts_decoder.onnx").is_file()
