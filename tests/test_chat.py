"""``voiceloop chat`` against a real PulseAudio server with null sinks (no sound card needed).

The utterances are espeak-ng Mandarin played into the virtual microphone; the bot (the trained tiny
ASR + random-weight ChatTTS, echo handler) answers on the virtual speaker, which the tests record.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pulse import Pulse, PulseServer, pulse_fixture  # noqa: F401  (the fixture)
from speech import espeak, require_espeak

from voiceloop.cli import main

TINY_ASR = str(Path(__file__).parent / "fixtures" / "tiny-zh-asr")
pytestmark = pytest.mark.usefixtures("one_thread")


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


KNOWN_LEAK = pytest.mark.xfail(
    strict=False,
    reason="open in issue 5: about 1 run in 100 the canceller and the gate let the bot's own voice "
    "through for the 300 ms a barge-in needs, on a steady echo path with no loop stall (1 of 98 "
    "runs on the 2-core AMX VM, 2026-11-27; earlier ~1 in 20 with stalls, since fixed). The "
    "failure message carries the debug line of every barge-in decision (gate evidence, raw echo "
    "share, tracked delay)",
)


@pytest.mark.parametrize("echo", [pytest.param("auto", marks=KNOWN_LEAK), "off"])
def test_the_bots_own_voice_looped_back_does_not_interrupt_it(pulse, chattts_root, tmp_path, caplog, echo):
    """Speaker → microphone loopback (an acoustic echo): with echo handling the bot finishes its reply;
    without it (the control) its own voice cuts it off."""
    bot = tmp_path / "bot.py"
    bot.write_text("def reply(text):\n    return '今天天气很好。' * 3\n", encoding="utf-8")
    extra = ("--handler", f"{bot}:reply", "--tts-max-seconds", "2.0", "--echo", echo)
    caplog.set_level(logging.DEBUG, logger="voiceloop")
    thread, result = chat(chattts_root, tmp_path, 12.0, *extra)
    with pulse.loopback():
        pulse.wait_for_reader()
        say(pulse, "你好")
        thread.join(timeout=60)
    assert result.get("code") == 0
    first, *others = turns(result)
    lines = Path(result["metrics"]).read_text().splitlines()
    decisions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("barge-in")]
    why = f"turns {[(t['transcript'], t['interrupted'], t['discarded']) for t in turns(result)]}, {lines[-1]}"
    why += "".join(f"\n  {line}" for line in decisions)
    # the user's utterance became a turn and got a reply (AEC colours the audio: the tiny model may hear 雨好)
    assert first["transcript"] and first["first_played"] is not None, why
    if echo == "off":
        assert first["interrupted"], f"the control: without echo handling the bot hears itself; {why}"
        return
    assert not first["interrupted"], f"the bot's own voice must not cut it off; {why}"
    assert all(t["discarded"] or not t["transcript"] for t in others), f"nor start a turn of its own; {why}"


def test_an_echo_path_that_moves_mid_reply_does_not_interrupt_the_bot(pulse, chattts_root, tmp_path):
    """The loopback's latency jumps from 20 to 300 ms while the bot speaks (a sound server that
    rebuffers after an underrun does this): the canceller and the gate lose the echo for a
    while, and the moved-echo check has to keep the bot from cutting itself off."""
    bot = tmp_path / "bot.py"
    bot.write_text("def reply(text):\n    return '今天天气很好。' * 3\n", encoding="utf-8")
    extra = ("--handler", f"{bot}:reply", "--tts-max-seconds", "2.0", "--echo", "auto")
    thread, result = chat(chattts_root, tmp_path, 12.0, *extra)
    with pulse.loopback() as move:
        pulse.wait_for_reader()
        say(pulse, "你好")
        time.sleep(1.3)  # the endpoint, then a second into the reply
        move(300)
        thread.join(timeout=60)
    assert result.get("code") == 0
    first, *others = turns(result)
    lines = Path(result["metrics"]).read_text().splitlines()
    why = f"turns {[(t['transcript'], t['interrupted'], t['discarded']) for t in turns(result)]}, {lines[-1]}"
    assert first["transcript"] and first["first_played"] is not None, why
    assert not first["interrupted"], f"the moved echo must not cut the bot off; {why}"
    assert all(t["discarded"] or not t["transcript"] for t in others), f"nor start a turn of its own; {why}"


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
