"""Streaming TTS benchmark: time to first audio, GPT steps/s and RTF on full-size random weights.

Random weights in the official layout (20-layer GPT, full Embed/Decoder/Vocos) cost exactly what
the released model costs per step; EOS is disabled (min_new_tokens = max_new_tokens) so every run
generates the same number of steps. Variants: fp32 and int8 on the CPU (fp16 on CUDA when present);
in the same run, the reference ``chattts`` package's stream mode on the same files when its
throwaway environment exists (``benchmarks/setup_chattts_reference.sh``).

    python benchmarks/tts.py [--steps 240] [--threads 2] [--repeats 3] [--skip-reference]

Prints a table and writes ``benchmarks/results/tts.json``. Real time is 46.875 GPT steps/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
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

TEXT = "你好，欢迎使用我们的语音助手，今天我们来测试一下流式合成的速度"
STEPS_PER_SECOND = 46.875


def full_size_assets(cache: Path) -> Path:
    root = cache / "chattts-random-full"
    if not (root / "asset" / "Vocos.safetensors").is_file():
        print(f"writing full-size random assets to {root} (about 1.2 GB) ...", file=sys.stderr)
        write_random_assets(root, gpt_layers=20, seed=0, embed_tokens=True, official_tokenizer=None)
    return root


def measure(engine: ChatTts, steps: int, repeats: int) -> dict[str, float]:
    """Median over repeats of one streamed utterance of exactly ``steps`` GPT steps."""
    speaker = engine.speaker(engine.random_voice())
    engine.options.sampling = replace(engine.options.sampling, max_new_tokens=steps, min_new_tokens=steps)
    list(engine.stream("你好", speaker, seed=0))  # warm-up: first-call allocations, lazy init
    ttfa, total, audio = [], [], []
    for r in range(repeats):
        started = time.perf_counter()
        first = None
        samples = 0
        for chunk in engine.stream(TEXT, speaker, seed=r):
            if first is None:
                first = time.perf_counter() - started
            samples += len(chunk)
        total.append(time.perf_counter() - started)
        ttfa.append(first)
        audio.append(samples / engine.sample_rate)
    # GPT alone: steps/s without decoding.
    prompt = engine.gpt.code_prompt([TEXT], speaker)
    gpt_rates = []
    for r in range(repeats):
        started = time.perf_counter()
        count = sum(1 for _ in engine.gpt.generate(prompt, replace(engine.options.sampling, seed=r)))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        gpt_rates.append(count / (time.perf_counter() - started))
    t, a = statistics.median(total), statistics.median(audio)
    return {
        "ttfa_s": round(statistics.median(ttfa), 3),
        "total_s": round(t, 3),
        "audio_s": round(a, 3),
        "rtf": round(t / a, 3),
        "gpt_steps_per_s": round(statistics.median(gpt_rates), 1),
        "gpt_rtf": round(STEPS_PER_SECOND / statistics.median(gpt_rates), 3),
    }


def reference(root: Path, threads: int, steps: int) -> list[dict]:
    python = HERE / ".venv-chattts" / "bin" / "python"
    if not python.exists():
        return [{"variant": "reference", "skipped": "run benchmarks/setup_chattts_reference.sh first"}]
    rows = []
    cmd = [str(python), str(HERE / "chattts_reference.py"), "--assets", str(root), "--threads", str(threads)]
    cmd += ["--text", TEXT, "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return [{"variant": "reference", "error": proc.stderr.strip().splitlines()[-1:]}]
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
            for run in report.get("runs", []):
                rows.append(
                    {
                        "variant": f"reference chattts {report.get('chattts')} fp32, {run['name']}",
                        "ttfa_s": run["ttfa_s"],
                        "total_s": run["total_s"],
                        "audio_s": run["audio_s"],
                        "rtf": run["rtf"],
                        "gpt_steps_per_s": run["gpt_steps_per_s"],
                        "gpt_rtf": round(STEPS_PER_SECOND / run["gpt_steps_per_s"], 3),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=240, help="GPT steps per utterance (240 = 5.1 s audio)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--variants",
        default="fp32,int8,torch-fp32,torch-int8",
        help="comma list of fp32,int8,bf16 (CPU; the default GPT backend: onnxruntime when installed), "
        "torch-fp32,torch-int8 (CPU, the torch GPT), fp16,cuda-fp32,cuda-bf16 (GPU)",
    )
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "tts.json")
    args = parser.parse_args()
    machine = machine_info(threads=args.threads)
    torch.set_num_threads(args.threads)
    root = full_size_assets(args.cache)
    rows = []
    variants = args.variants.split(",")
    if torch.cuda.is_available() and "fp16" not in variants:
        variants.append("fp16")
    for variant in variants:
        backend = "torch" if variant.startswith("torch-") else "auto"
        model = {
            "fp32": ModelOptions(device="cpu", threads=args.threads),
            "int8": ModelOptions(device="cpu", quantize="int8", threads=args.threads),
            "bf16": ModelOptions(device="cpu", dtype="bf16", threads=args.threads),
            "fp16": ModelOptions(device="cuda", dtype="fp16"),
            "cuda-fp32": ModelOptions(device="cuda"),
            "cuda-bf16": ModelOptions(device="cuda", dtype="bf16"),
        }[variant.removeprefix("torch-")]
        options = ChatTtsOptions(model=model, sampling=SamplingOptions(), gpt_backend=backend)
        engine = ChatTts.from_pretrained(str(root), options)
        torch.set_num_threads(args.threads)
        name = f"voiceloop {variant.removeprefix('torch-')}, {options.resolved_gpt_backend()} GPT"
        row = {"variant": name, **measure(engine, args.steps, args.repeats)}
        print(row, file=sys.stderr)
        rows.append(row)
        engine.lane.close()
        del engine
    if not args.skip_reference:
        rows += reference(root, args.threads, args.steps)
    columns = ["variant", "ttfa_s", "rtf", "gpt_steps_per_s", "gpt_rtf", "total_s", "audio_s"]
    print_table(
        f"Streaming TTS, {args.steps} GPT steps ({args.steps / STEPS_PER_SECOND:.1f} s audio)",
        columns,
        [
            [row.get(c, row.get("skipped", row.get("error", "")) if c == "ttfa_s" else "") for c in columns]
            for row in rows
        ],
    )
    result = {
        "machine": finish(machine),
        "steps": args.steps,
        "text": TEXT,
        "stream_options": ChatTtsOptions().stream.__dict__,
        "goals": {"ttfa_int8_s": 0.35, "rtf": 1.0},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
