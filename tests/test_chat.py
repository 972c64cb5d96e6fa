"""``voiceloop chat`` against a real PulseAudio server with null sinks (no sound card needed).

The utterances are espeak-ng Mandarin played into the virtual microphone; the bot (the trained tiny
ASR + random-weight ChatTTS, echo handler) answers on the virtual speaker, which the tests record.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.pulse import Pulse, PulseServer, pulse_fixture  # noqa: F401  (the fixture)
from helpers.speech import espeak, require_espeak

from voiceloop.cli import main

TINY_ASR = str(Path(__file__).parent / "fixtures" / "tiny-zh-asr")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def chat(chattts_root, tmp_path, seconds: float, *extra: str) -> tuple[threading.Thread, dict]:
    """Start ``voiceloop chat`` for ``seconds`` in a thread; the result dict gets code and metrics."""
    result: dict = {"metrics": tmp_path / "chat.jsonl"}
    argv = ["chat", "--input-device", "vmic", "--output-device", "vspeaker", "--asr", TINY_ASR]
    argv += ["--tts", str(chattts_root), "--metrics-out", str(result["metrics"]), "--quiet"]
    argv += ["--duration", str(seconds), *extra]

    def target() -> None:
        result["code"] = main(argv)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def turns(result: dict) -> list[dict]:
    """The turns in the order they were spoken (lines are written as turns finish: a refused echo
    utterance during a reply finishes before the turn whose reply it was)."""
    lines = [json.loads(line) for line in Path(result["metrics"]).read_text().splitlines()]
    return sorted((line for line in lines if line["type"] == "turn"), key=lambda turn: turn["turn_id"])


def say(pulse, text: str) -> None:
    """Speak ``text`` into the virtual microphone (blocks until it has been played)."""
    require_espeak()
    player = pulse.play(espeak(text, voice="cmn-latn-pinyin"), 16_000)
    try:
        player.wait()
    finally:
        player.stop()


def loudness(audio: np.ndarray) -> float:
    return float(np.abs(audio.astype(np.float64)).max()) if len(audio) else 0.0


def test_an_utterance_gets_a_spoken_answer_and_a_timeline(pulse, chattts_root, tmp_path):
    thread, result = chat(chattts_root, tmp_path, 9.0, "--tts-max-seconds", "1.0", "--echo", "off")
    recording = pulse.recorder()
    pulse.wait_for_reader()  # models load, the mic opens
    say(pulse, "你好")
    thread.join(timeout=60)
    audio = recording.stop()
    assert result.get("code") == 0
    (turn,) = turns(result)
    assert turn["transcript"] == "你好" and turn["reply"] == "你好"
    assert turn["first_played"] is not None and turn["durations"]["voice_to_voice"] > 0
    assert loudness(audio) > 300, "the bot's answer reached the speaker"


def test_speaking_over_the_bot_silences_it(pulse, chattts_root, tmp_path):
    bot = tmp_path / "bot.py"
    bot.write_text("def reply(text):\n    return '今天天气很好。' * 6\n", encoding="utf-8")
    thread, result = chat(
        chattts_root, tmp_path, 14.0, "--handler", f"{bot}:reply", "--tts-max-seconds", "2.5", "--echo", "off"
    )
    pulse.wait_for_reader()
    say(pulse, "你好")
    time.sleep(2.5)  # the long answer is playing now
    recording = pulse.recorder()
    say(pulse, "明天下雨")
    time.sleep(1.5)
    audio = recording.stop()
    thread.join(timeout=60)
    assert result.get("code") == 0
    first = turns(result)[0]
    why = [(t["transcript"], t["reply"], t["interrupted"], t["discarded"]) for t in turns(result)]
    assert first["interrupted"], f"user speech during the answer cut it; turns {why}"
    tail = audio[-int(0.5 * pulse.rate) :]
    assert loudness(tail) < 300 or len(turns(result)) > 1, "silence after the cut (or the next answer)"


def summary(result: dict) -> dict:
    return json.loads(Path(result["metrics"]).read_text().splitlines()[-1])


# Whether the bot's own voice, looped back, ever cuts it off is a rate, not a test: a run depends on
# the sound server's and the loop's scheduling. benchmarks/echo_loopback.py measures it over many runs
# (results/echo_loopback.json); the synthetic rooms of test_echo*.py assert the decisions on a virtual
# clock. What these tests assert is deterministic: the control, and that the echo is found and
# followed on real devices.


def test_the_bots_own_voice_looped_back_cuts_it_off_without_echo_handling(pulse, chattts_root, tmp_path):
    """The control: speaker → microphone loopback (an acoustic echo) with ``--echo off``."""
    bot = tmp_path / "bot.py"
    bot.write_text("def reply(text):\n    return '今天天气很好。' * 3\n", encoding="utf-8")
    extra = ("--handler", f"{bot}:reply", "--tts-max-seconds", "2.0", "--echo", "off")
    thread, result = chat(chattts_root, tmp_path, 12.0, *extra)
    with pulse.loopback():
        pulse.wait_for_reader()
        say(pulse, "你好")
        thread.join(timeout=60)
    assert result.get("code") == 0
    first = turns(result)[0]
    why = f"turns {[(t['transcript'], t['interrupted'], t['discarded']) for t in turns(result)]}"
    assert first["transcript"] and first["first_played"] is not None, why
    assert first["interrupted"], f"without echo handling the bot hears itself; {why}"


@pytest.mark.parametrize(("move_to", "delay_ms"), [(None, (10, 150)), (300, (250, 450))])
def test_the_echo_of_the_bots_voice_is_found_and_followed(pulse, chattts_root, tmp_path, move_to, delay_ms):
    """With ``--echo auto`` the echo stage finds the loopback's delay on real devices and mutes the
    echo; when the loopback moves from 20 to 300 ms a second into the reply (a sound server
    rebuffering after an underrun does this), the tracked delay follows it."""
    bot = tmp_path / "bot.py"
    bot.write_text("def reply(text):\n    return '今天天气很好。' * 4\n", encoding="utf-8")
    extra = ("--handler", f"{bot}:reply", "--tts-max-seconds", "3.0", "--echo", "auto")
    thread, result = chat(chattts_root, tmp_path, 12.0, *extra)
    with pulse.loopback() as move:
        pulse.wait_for_reader()
        say(pulse, "你好")
        if move_to is not None:
            time.sleep(1.3)  # the endpoint, then a second into the reply
            move(move_to)
        thread.join(timeout=60)
    assert result.get("code") == 0
    first = turns(result)[0]
    counters, gauges = summary(result)["counters"], summary(result)["gauges"]
    why = f"counters {counters}, gauges {gauges}"
    assert first["transcript"] and first["first_played"] is not None, why
    assert counters.get("echo.suppressed_frames", 0) > 0, f"the gate muted the echo; {why}"
    assert counters.get("echo.delay_moves", 0) >= (1 if move_to is None else 2), why
    assert delay_ms[0] <= gauges["echo.delay_ms"] <= delay_ms[1], why


def test_a_sound_server_lost_mid_chat_is_one_line_and_a_clean_exit(chattts_root, tmp_path):
    """The whole CLI in its own process, on its own sound server, which dies while the bot listens."""
    server = PulseServer()
    server.start()
    argv = ["chat", "--input-device", "vmic", "--output-device", "vspeaker", "--asr", TINY_ASR]
    argv += ["--tts", str(chattts_root), "--quiet", "--duration", "60"]
    env = {**server._env(), "PYTHONPATH": str(Path(__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-m", "voiceloop", *argv], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        Pulse(server).wait_for_reader()  # models loaded, the mic is open
        server.kill()
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        server.stop()
    assert process.returncode == 2, stderr[-3000:]
    # PortAudio's ALSA code prints its own C diagnostics ("Expression '...' failed in ...") straight
    # to the stderr file descriptor; everything from voiceloop is the one error line
    ours = [line for line in stderr.splitlines() if not line.startswith(("Expression '", "ALSA lib "))]
    assert len(ours) == 1 and ours[0].startswith("voiceloop chat: error: "), stderr[-3000:]
    assert "lost" in ours[0] and "Traceback" not in stderr, stderr[-3000:]
