"""The engines and the loop on a CUDA GPU: same results as on the CPU, fp16 sane, streaming exact.

Skipped without CUDA (CI has none); run on a GPU machine with ``pytest tests/test_gpu.py``.
CPU results are the reference: fp32 on the GPU must give the CPU's transcripts, fp16 the same
transcripts on nearly every held-out utterance, and the TTS's stream must equal its offline decode
on the GPU too (with full decoder context), whatever the dtype.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile
import torch
from helpers.speech import espeak
from test_asr_fixture import FIXTURE, heldout, render

from voiceloop.asr.model import Wav2Vec2Checkpoint
from voiceloop.asr.streaming import Wav2Vec2Engine
from voiceloop.cli import main
from voiceloop.compute import ModelOptions
from voiceloop.frames import FRAME_SAMPLES
from voiceloop.tts.chattts.engine import ChatTts, ChatTtsOptions
from voiceloop.tts.chattts.gpt import SamplingOptions
from voiceloop.tts.chattts.stream_decode import StreamDecodeOptions

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

UTTERANCES = 12
STEPS = 80
SAMPLING = SamplingOptions(max_new_tokens=STEPS, min_new_tokens=STEPS)


def streamed_text(engine: Wav2Vec2Engine, audio: np.ndarray) -> str:
    async def main_() -> str:
        session = engine.session()
        for i in range(0, len(audio), FRAME_SAMPLES):
            await session.accept(audio[i : i + FRAME_SAMPLES])
        return (await session.finalize()).text

    return asyncio.run(main_())


@pytest.fixture(scope="module")
def heldout_audio() -> list[np.ndarray]:
    return [render(item) for item in heldout()[:UTTERANCES]]


def test_asr_on_cuda_gives_the_cpu_transcripts(heldout_audio) -> None:
    engines = {
        name: Wav2Vec2Engine(Wav2Vec2Checkpoint.from_pretrained(str(FIXTURE), options))
        for name, options in {
            "cpu": ModelOptions(device="cpu"),
            "cuda-fp32": ModelOptions(device="cuda"),
            "cuda-fp16": ModelOptions(device="cuda", dtype="fp16"),
        }.items()
    }
    assert engines["cuda-fp16"].checkpoint.device.type == "cuda"
    texts = {name: [streamed_text(e, a) for a in heldout_audio] for name, e in engines.items()}
    assert sum(t != "" for t in texts["cpu"]) == UTTERANCES
    assert texts["cuda-fp32"] == texts["cpu"]
    same = sum(a == b for a, b in zip(texts["cuda-fp16"], texts["cpu"], strict=True))
    assert same >= UTTERANCES - 1, (texts["cuda-fp16"], texts["cpu"])


def test_asr_cuda_embeddings_match_the_cpu(heldout_audio) -> None:
    cpu, gpu = (
        Wav2Vec2Engine(Wav2Vec2Checkpoint.from_pretrained(str(FIXTURE), ModelOptions(device=d)))
        for d in ("cpu", "cuda")
    )
    a = cpu.embed(heldout_audio[0], layer=-1, pooling="none")
    b = gpu.embed(heldout_audio[0], layer=-1, pooling="none")
    assert a.shape == b.shape and a.shape[0] > 50
    assert np.abs(a - b).max() <= 1e-3 * max(1.0, float(np.abs(a).max()))


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_tts_stream_on_cuda_equals_its_offline_decode(chattts_root, dtype) -> None:
    exact = StreamDecodeOptions(first_chunk=3, chunk=7, lookahead=52, left_context=52, crossfade=0)
    options = ChatTtsOptions(model=ModelOptions(device="cuda", dtype=dtype), sampling=SAMPLING, stream=exact)
    engine = ChatTts.from_pretrained(str(chattts_root), options)
    try:
        assert engine.gpt.device.type == "cuda"
        speaker = engine.speaker("seed:3")
        chunks = list(engine.stream("你好，今天天气不错。", speaker, seed=5))
        (offline,) = engine.synthesize(["你好，今天天气不错。"], speaker, seed=5)
        assert len(chunks) > 3 and all(c.dtype == np.int16 for c in chunks)
        assert len(offline) == 512 * STEPS - 256
        # cuDNN/cuBLAS pick kernels by shape, so a chunk and the whole utterance round differently
        diff = np.abs(np.concatenate(chunks).astype(np.int32) - offline.astype(np.int32))
        assert diff.max() <= 8, diff.max()
        assert np.abs(offline.astype(np.int32)).max() > 0
    finally:
        engine.lane.close()


def test_tts_gpt_on_cuda_fp32_computes_what_the_cpu_does(chattts_root) -> None:
    """Same weights, same prompt: the state behind the first sampled codes agrees (the RNGs differ)."""
    hiddens = []
    for device in ("cpu", "cuda"):
        options = ChatTtsOptions(model=ModelOptions(device=device), sampling=SAMPLING)
        engine = ChatTts.from_pretrained(str(chattts_root), options)
        try:
            prompt = engine.gpt.code_prompt(["你好，今天天气不错。"], engine.speaker("seed:3"))
            first = next(engine.gpt.generate(prompt, replace(SAMPLING, seed=1)))
            hiddens.append(first.hidden.float().cpu())
        finally:
            engine.lane.close()
    assert torch.allclose(hiddens[0], hiddens[1], atol=1e-3, rtol=1e-3)


def test_run_on_cuda_transcribes_and_answers(chattts_root, tmp_path) -> None:
    silence = np.zeros(16_000, np.int16)
    parts = [silence[:8000], espeak("你好", voice="cmn-latn-pinyin"), silence, silence[:8000]]
    parts += [espeak("明天下雨", voice="cmn-latn-pinyin"), silence]
    user = tmp_path / "user.wav"
    soundfile.write(str(user), np.concatenate(parts), 16_000)
    metrics = tmp_path / "m.jsonl"
    argv = ["run", "--input", str(user), "--output", str(tmp_path / "bot.wav"), "--asr", str(FIXTURE)]
    argv += ["--tts", str(chattts_root), "--tts-max-seconds", "0.4", "--metrics-out", str(metrics)]
    argv += ["--device", "cuda", "--quiet"]  # precision auto: fp16 ASR, fp32 TTS
    assert main(argv) == 0
    turns = [t for t in map(json.loads, metrics.read_text().splitlines()) if t["type"] == "turn"]
    assert [t["transcript"] for t in turns] == ["你好", "明天下雨"]
    assert all(t["durations"]["tts_first_audio"] is not None for t in turns)
    audio, rate = soundfile.read(tmp_path / "bot.wav", dtype="int16")
    assert rate == 24_000 and np.abs(audio.astype(np.int32)).max() > 0
