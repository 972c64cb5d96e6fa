"""``voiceloop run``: the whole loop (VAD → tiny trained ASR → handler → random ChatTTS) on files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from helpers.speech import espeak, require_espeak
from huggingface_hub.utils import are_progress_bars_disabled
from transformers.utils.logging import is_progress_bar_enabled

from voiceloop.cli import main
from voiceloop.errors import UserError
from voiceloop.loop import load_handler

TINY_ASR = str(Path(__file__).parent / "fixtures" / "tiny-zh-asr")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def conversation(tmp_path_factory) -> Path:
    """Two utterances the tiny model knows, 1.5 s apart, as a 16 kHz WAV."""
    require_espeak()
    path = tmp_path_factory.mktemp("run") / "user.wav"
    silence = np.zeros(16_000, np.int16)
    parts = [silence[:8000], espeak("你好", voice="cmn-latn-pinyin"), silence, silence[:8000]]
    parts += [espeak("明天下雨", voice="cmn-latn-pinyin"), silence]
    soundfile.write(str(path), np.concatenate(parts), 16_000)
    return path


def _run(conversation, chattts_root, tmp_path, *extra) -> tuple[int, list[dict]]:
    metrics = tmp_path / "m.jsonl"
    argv = ["run", "--input", str(conversation), "--output", str(tmp_path / "bot.wav"), "--asr", TINY_ASR]
    argv += ["--tts", str(chattts_root), "--tts-max-seconds", "0.4", "--metrics-out", str(metrics), *extra]
    argv += ["--clock", "virtual"]  # compute takes no time: the same conversation on a busy machine
    code = main(argv)
    lines = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return code, lines


def test_run_transcribes_answers_and_records_the_bot_time_aligned(
    conversation, chattts_root, tmp_path, capsys
):
    code, lines = _run(conversation, chattts_root, tmp_path, "--json")
    assert code == 0
    turns = [line for line in lines if line["type"] == "turn"]
    assert [t["transcript"] for t in turns] == ["你好", "明天下雨"]
    assert [t["reply"] for t in turns] == ["你好", "明天下雨"]  # the default handler echoes
    for turn in turns:
        assert turn["durations"]["voice_to_voice"] > 0 and turn["first_played"] >= turn["speech_end"]
    assert lines[-1]["type"] == "summary" and lines[-1]["turns"] == 2
    # the recording: silence while the user talks, the bot's voice after each endpoint
    audio, rate = soundfile.read(tmp_path / "bot.wav", dtype="int16")
    assert rate == 24_000
    origin = turns[0]["speech_start"] - 0.5  # the first utterance starts 0.5 s into the file
    for turn in turns:
        start = round((turn["first_played"] - origin) * rate)
        assert np.abs(audio[start : start + 2400]).max() > 100, "bot audio where the timeline says"
        quiet = audio[
            round((turn["speech_start"] - origin) * rate) : round((turn["speech_end"] - origin) * rate)
        ]
        assert np.abs(quiet).max() == 0, "nothing plays while the user speaks"
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {"final", "reply_text", "turn"} <= {e["type"] for e in events}


def test_run_with_a_handler_from_a_file(conversation, chattts_root, tmp_path, capfd):
    handler = tmp_path / "bot.py"
    handler.write_text("def reply(text):\n    return '好' if text == '你好' else '不好'\n", encoding="utf-8")
    code, lines = _run(conversation, chattts_root, tmp_path, "--handler", f"{handler}:reply", "--quiet")
    assert code == 0
    assert [t["reply"] for t in lines if t["type"] == "turn"] == ["好", "不好"]
    assert capfd.readouterr() == ("", ""), "--quiet prints nothing, weight-loading bars included"
    assert is_progress_bar_enabled() and not are_progress_bars_disabled(), "and puts the bars back"


def test_run_preemptive_gives_the_same_conversation(conversation, chattts_root, tmp_path):
    """The real engines' pause-hint final feeds the reply early; it plays only after the endpoint."""
    code, lines = _run(conversation, chattts_root, tmp_path, "--preemptive", "--quiet")
    assert code == 0
    turns = [line for line in lines if line["type"] == "turn"]
    assert [t["transcript"] for t in turns] == ["你好", "明天下雨"]
    assert [t["reply"] for t in turns] == ["你好", "明天下雨"]
    assert any(t["preemptive"] for t in turns)
    for turn in turns:
        assert turn["first_played"] >= turn["endpoint"] >= turn["speech_end"]
        if turn["preemptive"]:  # the final came before the endpoint: the reply was generated early
            assert turn["final_transcript"] < turn["endpoint"]


def test_run_smooth_start_gives_the_same_conversation(conversation, chattts_root, tmp_path):
    code, lines = _run(conversation, chattts_root, tmp_path, "--tts-start", "smooth", "--quiet")
    assert code == 0
    turns = [line for line in lines if line["type"] == "turn"]
    assert [t["reply"] for t in turns] == ["你好", "明天下雨"]
    assert all(t["first_played"] >= t["speech_end"] for t in turns)
    from voiceloop.loop import LoopOptions

    with pytest.raises(ValueError, match="tts_start"):
        LoopOptions(tts_start="eager")


def test_run_with_a_turn_model_ends_turns_at_its_check(conversation, chattts_root, tmp_path):
    """A turn model that hears every turn complete: the same conversation, each turn ended by the model
    (its timing is tested exactly on the virtual clock in test_turn.py)."""
    from voiceloop.vad.turn_random import write_random_smart_turn

    write_random_smart_turn(tmp_path / "turn", bias=8.0, layers=1, width=32, heads=2, ffn=64)
    extra = ("--turn-model", str(tmp_path / "turn"), "--turn-check-ms", "160", "--quiet")
    code, lines = _run(conversation, chattts_root, tmp_path, *extra)
    assert code == 0
    turns = [line for line in lines if line["type"] == "turn"]
    assert [t["transcript"] for t in turns] == ["你好", "明天下雨"]
    assert [t["reply"] for t in turns] == ["你好", "明天下雨"]
    assert all(t["ended_by_model"] and t["turn_probability"] > 0.99 for t in turns)
    assert all(t["first_played"] >= t["endpoint"] >= t["speech_end"] for t in turns)
    assert lines[-1]["counters"]["turn.complete"] == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nocolon", "module:function"),
        ("json:no_such_function", "has no attribute"),
        ("no_such_module_xyz:f", "cannot import"),
        ("/nope/bot.py:f", "does not exist"),
        ("json:__doc__", "not callable"),
    ],
)
def test_bad_handler_specs_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        load_handler(spec)


def test_run_missing_input_is_one_line(tmp_path, capsys):
    assert main(["run", "--input", str(tmp_path / "none.wav"), "--output", str(tmp_path / "o.wav")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_missing_model_offline_names_the_flag_for_a_directory(conversation, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["run", "--input", str(conversation), "--output", str(tmp_path / "bot.wav")]
    assert main([*argv, "--asr", "nobody/no-such-asr"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("voiceloop run: error: model 'nobody/no-such-asr' is not available")
    assert "--asr DIR" in err
    assert main([*argv, "--asr", TINY_ASR, "--tts", "nobody/no-such-tts"]) == 2
    err = capsys.readouterr().err
    assert "'nobody/no-such-tts'" in err and "--tts DIR" in err and "Traceback" not in err
