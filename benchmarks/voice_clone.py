"""What a voice from a recording costs: first audio and GPT speed with an audio prompt vs none.

A cloned voice puts the recording's DVAE codes (46.875 per second of audio) into every sentence's
prompt, so each sentence's prefill is longer; after it, each step attends over those extra cached
positions. This runs the full-size random ChatTTS (the released model's compute; see
benchmarks/tts.py) on the CPU in int8, streams one sentence of exactly ``--steps`` GPT steps per
run with no prompt (a speaker vector), a 5 s and a 10 s prompt (``--prompts``), and reports the
median time to first audio, the prefill alone, the GPT's steps/s after it, and how long making the
voice took (DVAE encoding of the recording).

    python benchmarks/voice_clone.py [--threads 2] [--steps 96] [--repeats 5] [--prompts 5,10]

Prints a table and writes ``benchmarks/results/voice_clone.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from helpers.chattts_fixtures import write_random_assets  # noqa: E402
from machine import finish, machine_info, print_table  # noqa: E402

from voiceloop.compute import ModelOptions  # noqa: E402
from voiceloop.tts.chattts.engine import ChatTts, ChatTtsOptions  # noqa: E402
from voiceloop.tts.chattts.gpt import SamplingOptions  # noqa: E402
from voiceloop.tts.chattts.voice import Voice  # noqa: E402

TEXT = "你好，欢迎使用我们的语音助手，今天我们来测试一下流式合成的速度"
TRANSCRIPT = "今天天气不错，我们一起去公园散步吧，顺便买点水果回来"  # length of ~10 s of speech
GOLDEN = HERE.parent / "tests" / "fixtures" / "chattts-golden" / "voice_clone_golden.py"


def full_size_assets(cache: Path) -> Path:
    root = cache / "chattts-random-full"
    if not (root / "asset" / "Vocos.safetensors").is_file():
        print(f"writing full-size random assets to {root} (about 1.2 GB) ...", file=sys.stderr)
        write_random_assets(root, gpt_layers=20, seed=0, embed_tokens=True, official_tokenizer=None)
    return root


def recording(seconds: float):
    """The parity tests' voiced test signal (the cost depends only on its length)."""
    spec = importlib.util.spec_from_file_location("voice_clone_golden", GOLDEN)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.clone_wave(seconds)


def one_run(engine: ChatTts, voice: Voice, seed: int) -> dict[str, float]:
    """One streamed sentence (first audio, total), then the GPT alone (prefill, steps/s after it)."""
    started, first = time.perf_counter(), None
    for _chunk in engine.stream(TEXT, voice, seed=seed):
        first = first if first is not None else time.perf_counter() - started
    total = time.perf_counter() - started
    prompt = engine._code_prompt([TEXT], voice)
    started = time.perf_counter()
    marks = [
        time.perf_counter()
        for _step in engine.gpt.generate(prompt, replace(engine.options.sampling, seed=seed))
    ]
    rate = (len(marks) - 1) / (marks[-1] - marks[0])
    return {"ttfa_s": first, "total_s": total, "prefill_s": marks[0] - started, "gpt_steps_per_s": rate}


def measure(engine: ChatTts, voices: dict[str, Voice], repeats: int) -> dict[str, dict[str, float]]:
    """Medians per voice; the voices take turns within each repeat, so a busy machine's load
    swings fall on all of them alike."""
    for voice in voices.values():
        list(engine.stream("你好", voice, seed=0))  # warm-up
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in voices}
    for r in range(repeats):
        for name, voice in voices.items():
            runs[name].append(one_run(engine, voice, r))
    out = {}
    for name, voice in voices.items():
        prompt = engine._code_prompt([TEXT], voice)
        out[name] = {"prompt_positions": int(prompt.mask.shape[1])}
        for key in ("ttfa_s", "prefill_s", "gpt_steps_per_s", "total_s"):
            out[name][key] = round(statistics.median(run[key] for run in runs[name]), 3)
        for key in ("ttfa_s", "prefill_s"):  # the least-disturbed run: a busy machine only adds time
            out[name][key.replace("_s", "_min_s")] = round(min(run[key] for run in runs[name]), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=96, help="GPT steps per sentence (96 = 2.0 s audio)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", default="5,10", help="recording lengths in seconds (besides none)")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "voice_clone.json")
    args = parser.parse_args()
    machine = machine_info(threads=args.threads)
    torch.set_num_threads(args.threads)
    root = full_size_assets(args.cache)
    model = ModelOptions(device="cpu", quantize="int8", threads=args.threads)
    engine = ChatTts.from_pretrained(str(root), ChatTtsOptions(model=model, sampling=SamplingOptions()))
    torch.set_num_threads(args.threads)
    backend = engine.options.resolved_gpt_backend()
    engine.options.sampling = replace(
        engine.options.sampling, max_new_tokens=args.steps, min_new_tokens=args.steps
    )
    voices: dict[str, Voice] = {"none (speaker vector)": engine.voice("seed:1")}
    made: dict[str, float] = {}
    for seconds in (float(s) for s in args.prompts.split(",")):
        wave = recording(seconds)
        engine.voice_from_audio(wave, 24_000, TRANSCRIPT)  # warm-up (loads the DVAE once)
        started = time.perf_counter()
        cloned = engine.voice_from_audio(wave, 24_000, TRANSCRIPT)
        name = f"{seconds:g} s recording"
        made[name] = round(time.perf_counter() - started, 3)
        voices[name] = engine.voice(cloned.voice)
    measured = measure(engine, voices, args.repeats)
    engine.lane.close()
    rows = []
    for name, values in measured.items():
        rows.append(
            {"prompt": name, **values, **({"voice_from_audio_s": made[name]} if name in made else {})}
        )
        print(rows[-1], file=sys.stderr)
    base = rows[0]
    for row in rows:
        row["ttfa_cost_s"] = round(row["ttfa_s"] - base["ttfa_s"], 3)
        row["prefill_cost_s"] = round(row["prefill_s"] - base["prefill_s"], 3)
    columns = [
        "prompt",
        "prompt_positions",
        "ttfa_s",
        "ttfa_min_s",
        "ttfa_cost_s",
        "prefill_s",
        "prefill_min_s",
    ]
    columns += ["gpt_steps_per_s", "voice_from_audio_s"]
    print_table(
        f"First audio with a cloned voice: random full-size ChatTTS, int8, {backend} GPT, {args.threads}t",
        columns,
        [[row.get(c, "") for c in columns] for row in rows],
    )
    result = {
        "machine": finish(machine),
        "model": "full-size random ChatTTS (benchmarks/tts.py), int8",
        "gpt_backend": backend,
        "steps": args.steps,
        "text": TEXT,
        "transcript": TRANSCRIPT,
        "repeats": args.repeats,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
