"""``voiceloop chat --tts espeak`` on real (virtual) sound devices, checked by ear.

The user speaks espeak-ng Mandarin into the private PulseAudio server's virtual microphone; the bot
(the tiny ASR, a handler with a fixed sentence, the espeak engine) answers on the virtual speaker; the
test records the speaker and the tiny ASR — trained on espeak-ng Mandarin — transcribes the recording
back to the handler's sentence. The same oracle as tests/test_espeak_loop.py, through PortAudio, ALSA's
pulse plugin and the sound server's 48 kHz clock instead of a WAV file.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers.oracle import at_16k, cer_against, speech_only
from helpers.pulse import pulse_fixture  # noqa: F401  (the fixture)
from helpers.speech import espeak, require_espeak

from voiceloop.cli import main

TINY_ASR = str(Path(__file__).parent / "fixtures" / "tiny-zh-asr")
REPLY = "你好，明天早上下雨，晚上很冷。"
MAX_CER = 0.10
#: microphone seconds the chat listens for; the user's ~1 s of speech starts 0.5 s in. The mic ending
#: does not cut the ~4 s reply short (the pipeline drains at the end of input; the test asserts it)
CHAT_SECONDS = 10.0
# Generous waits for a loaded machine: the assertions are on content only, never on time.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(600)]


def transcribe_48k(audio: np.ndarray) -> str:
    """The tiny ASR's transcript (spaces removed) of int16 audio recorded at 48 kHz."""
    from voiceloop.asr.streaming import Wav2Vec2Engine

    asr = Wav2Vec2Engine.from_pretrained(TINY_ASR)
    try:
        return asr.transcribe(at_16k(audio, 48_000)).text.replace(" ", "")
    finally:
        asr.lane.close()


def test_chat_on_sound_devices_speaks_a_reply_the_tiny_asr_understands(pulse, tmp_path):
    require_espeak()
    bot = tmp_path / "bot.py"
    bot.write_text(f"def reply(text):\n    return {REPLY!r}\n", encoding="utf-8")
    metrics = tmp_path / "chat.jsonl"
    argv = ["chat", "--input-device", "vmic", "--output-device", "vspeaker", "--asr", TINY_ASR]
    argv += ["--tts", "espeak", "--handler", f"{bot}:reply", "--echo", "off", "--quiet"]
    argv += ["--metrics-out", str(metrics), "--duration", str(CHAT_SECONDS)]
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(code=main(argv)), daemon=True)
    thread.start()

    recording = pulse.recorder()
    try:
        pulse.wait_for_reader()  # the models are loaded and the microphone is open
        player = pulse.play(espeak("你好", voice="cmn-latn-pinyin"), 16_000)
        try:
            player.wait()
        finally:
            player.stop()
        thread.join(timeout=180)
    finally:
        audio = recording.stop()
    assert not thread.is_alive(), "voiceloop chat did not end"
    assert result.get("code") == 0

    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    turns = [line for line in lines if line["type"] == "turn"]
    why = [(t["transcript"], t["reply"], t["interrupted"], t["discarded"]) for t in turns]
    assert len(turns) == 1 and turns[0]["transcript"] == "你好", why
    assert turns[0]["reply"] == REPLY and not turns[0]["interrupted"], why
    assert turns[0]["first_played"] is not None, why

    speech = speech_only(audio, pulse.rate)
    assert len(speech) > pulse.rate, "the bot's reply reached the speaker"
    said = transcribe_48k(speech)
    cer = cer_against(REPLY, said)
    assert cer <= MAX_CER, f"CER {cer:.1%}: {REPLY} -> {said}"
