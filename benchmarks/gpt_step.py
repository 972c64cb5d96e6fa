"""ChatTTS GPT step costs side by side: stock ``LlamaModel``, ``LeanLlama`` and the onnxruntime graph.

Why: README's claims about the GPT backends (the lean stack against stepping transformers'
``LlamaModel``, the onnxruntime graph against torch, the prompt pass, several sessions' rows in one
torch pass) need one script that measures them together. Full-size random weights in the official
layout (``benchmarks/tts.py``'s assets: 20 layers, hidden 768) cost what the released model costs.

Per precision (fp32, int8) three steppers on the same weights, loaded the way the engine loads them
(``ChatTtsGpt.load``): ``LlamaModel`` (``lean=False``), ``LeanLlama`` (the torch backend) and
``OrtLlama`` (the onnx backend). Each repetition gives every stepper a fresh cache and one prompt
pass (``--prompt`` positions), then ``--steps`` one-token steps, the steppers taking turns step by
step (the order rotating), so a busy moment of the machine hits all of them alike.
``stack``: the transformer alone (the step API); ``generate``: a whole ``ChatTtsGpt.generate`` step
(stack, code heads, sampling). Rows (int8): N sequences one position each, as N concurrent sessions
step — torch's ``forward_rows`` (one pass; what ``OrtLlama.forward_rows`` sends 2+ rows to) against
N graph calls and N torch calls one after another. Reported: the median over repetitions of each
repetition's median step.

    python benchmarks/gpt_step.py [--threads 2] [--reps 5] [--steps 24] [--prompt 45] [--rows 1,2,4,8]

Prints tables and writes ``benchmarks/results/gpt_step.json`` (with the load average: on a shared
machine the ratios measured side by side are what holds). Where other jobs hold a core, torch's
OpenMP barriers wait on descheduled threads and multi-threaded torch steps grow many times over
(onnxruntime's far less): compare backends there with ``--threads 1``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from machine import finish, machine_info, print_table  # noqa: E402
from tts import full_size_assets  # noqa: E402

from voiceloop.compute import ModelOptions  # noqa: E402
from voiceloop.tts.chattts.gpt import _CACHE_KW, ChatTtsGpt, SamplingOptions  # noqa: E402
from voiceloop.tts.chattts.gpt_onnx import OrtLlama  # noqa: E402
from voiceloop.tts.chattts.llama import LeanLlama  # noqa: E402

TEXT = "你好，欢迎使用我们的语音助手，今天我们来测试一下流式合成的速度"
STEPPERS = ("LlamaModel", "LeanLlama", "onnxruntime")


def ms(seconds: float) -> float:
    return round(1000 * seconds, 2)


class Stepper:
    """One way of running the GPT's transformer stack: a prompt pass, then one position at a time."""

    def __init__(self, name: str, gpt: ChatTtsGpt) -> None:
        self.name, self.gpt = name, gpt
        self.model = gpt.llama

    @torch.inference_mode()
    def start(self, prompt: torch.Tensor) -> tuple[float, Callable[[torch.Tensor], None]]:
        """Run the prompt ``[1, P, hidden]`` on a fresh cache: (its seconds, a function that runs
        the next position ``[hidden]``)."""
        length = prompt.shape[1]
        if isinstance(self.model, (LeanLlama, OrtLlama)):
            cache = self.model.new_cache(1, torch.float32, "cpu")

            def forward(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
                return self.model(x, pos, cache, None)
        else:  # stock LlamaModel, called as ChatTtsGpt.generate calls it
            dynamic, mask = DynamicCache(), torch.ones(1, length, dtype=torch.long)

            def forward(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
                nonlocal mask
                mask = mask if x.shape[1] > 1 else torch.cat([mask, mask.new_ones(1, 1)], 1)
                kwargs = {"attention_mask": mask, "position_ids": pos, "use_cache": True, _CACHE_KW: dynamic}
                return self.model(inputs_embeds=x, **kwargs).last_hidden_state

        started = time.perf_counter()
        forward(prompt, torch.arange(length)[None])
        prompt_s = time.perf_counter() - started
        at = length

        @torch.inference_mode()
        def step(x: torch.Tensor) -> None:
            nonlocal at
            out = forward(x[None, None], torch.tensor([[at]]))
            at += 1
            if not torch.isfinite(out).all():
                raise RuntimeError(f"{self.name}: non-finite hidden states")

        return prompt_s, step

    def generation(self, steps: int, seed: int) -> Iterator[object]:
        """``ChatTtsGpt.generate`` on a code prompt, ``steps`` + 1 steps (EOS masked): each
        ``next`` after the first is one whole step (stack, code heads, sampling)."""
        width = self.gpt.embed.emb_text.embedding_dim
        speaker = torch.randn(width, generator=torch.Generator().manual_seed(0))
        prompt = self.gpt.code_prompt([TEXT], speaker)
        sampling = SamplingOptions(max_new_tokens=steps + 1, min_new_tokens=steps + 1, seed=seed)
        return self.gpt.generate(prompt, sampling)


def load(root: Path, precision: str, threads: int) -> list[Stepper]:
    """The three steppers of one precision; the torch lean stack is the onnx backend's own copy
    (``OrtLlama.batched``: the same weights, quantized as the torch backend quantizes them)."""
    options = ModelOptions(device="cpu", quantize="int8" if precision == "int8" else None, threads=threads)
    stock = ChatTtsGpt.load(root, options, lean=False)
    onnx = ChatTtsGpt.load(root, options, backend="onnx")
    assert isinstance(onnx.llama, OrtLlama) and onnx.llama.batched is not None
    lean = ChatTtsGpt(onnx.llama.batched, onnx.embed, onnx.tokenizer, onnx.config, torch.float32)
    torch.set_num_threads(threads)
    return [Stepper("LlamaModel", stock), Stepper("LeanLlama", lean), Stepper("onnxruntime", onnx)]


def rotated(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def spread(per_rep: list[float]) -> dict[str, float]:
    """Median and range over repetitions (each value already a repetition's median)."""
    return {"ms": ms(statistics.median(per_rep)), "min_ms": ms(min(per_rep)), "max_ms": ms(max(per_rep))}


def span(value: dict[str, float]) -> str:
    return f"{value['ms']:.1f} ({value['min_ms']:.1f}-{value['max_ms']:.1f})"


def measure_steppers(steppers: list[Stepper], args: argparse.Namespace, hidden: int) -> list[dict[str, Any]]:
    """Per repetition: the prompt passes, then the steppers' steps taken in turn (the order
    rotating every step), so a busy moment of the machine hits all of them alike."""
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randn(1, args.prompt, hidden, generator=gen)
    xs = torch.randn(args.steps, hidden, generator=gen)
    names = [s.name for s in steppers]
    prompt_s: dict[str, list[float]] = {n: [] for n in names}
    stack_s: dict[str, list[float]] = {n: [] for n in names}
    gen_s: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.reps + 1):  # rep 0 warms up: first-call allocations, kernel choice
        count = args.steps if rep else 3
        runs = {}
        for s in rotated(steppers, rep):
            seconds, runs[s.name] = s.start(prompt)
            prompt_s[s.name].append(seconds)
        walls: dict[str, list[float]] = {n: [] for n in names}
        for i in range(count):
            for s in rotated(steppers, rep + i):
                walls[s.name].append(timed(functools.partial(runs[s.name], xs[i])))
        generations = {s.name: s.generation(count, seed=rep) for s in steppers}
        for s in steppers:
            next(generations[s.name])  # the prompt pass and the first step
        gen_walls: dict[str, list[float]] = {n: [] for n in names}
        for i in range(count):
            for s in rotated(steppers, rep + i):
                gen_walls[s.name].append(timed(functools.partial(next, generations[s.name])))
        if rep == 0:
            for n in names:
                prompt_s[n].clear()
            continue
        for n in names:
            stack_s[n].append(statistics.median(walls[n]))
            gen_s[n].append(statistics.median(gen_walls[n]))
        print(f"  rep {rep}: load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    return [
        {
            "stepper": n,
            "stack_step": spread(stack_s[n]),
            "generate_step": spread(gen_s[n]),
            "prompt_pass": spread(prompt_s[n]),
        }
        for n in names
    ]


def measure_rows(steppers: list[Stepper], args: argparse.Namespace, hidden: int) -> list[dict[str, Any]]:
    """N sequences one position each: torch in one pass, the graph N times, torch N times; the
    three ways take turns step by step, as the steppers do."""
    onnx = next(s.model for s in steppers if s.name == "onnxruntime")
    lean = next(s.model for s in steppers if s.name == "LeanLlama")
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randn(1, args.prompt, hidden, generator=gen)
    methods: dict[str, tuple[Any, Callable[[list], list]]] = {
        "torch, one pass (forward_rows)": (lean, lean.forward_rows),
        "graph, one after another": (onnx, lambda rows: [onnx(e, p, c) for e, p, c in rows]),
        "torch, one after another": (lean, lambda rows: [lean(e, p, c) for e, p, c in rows]),
    }
    names = list(methods)
    out = []
    with torch.inference_mode():
        for count in args.rows:
            per_rep: dict[str, list[float]] = {n: [] for n in names}
            xs = torch.randn(args.steps, count, hidden, generator=gen)
            for rep in range(args.reps + 1):  # rep 0: warm-up for this row count
                caches = {}
                for name, (model, _) in methods.items():
                    caches[name] = [model.new_cache(1, torch.float32, "cpu") for _ in range(count)]
                    for cache in caches[name]:
                        model(prompt, torch.arange(args.prompt)[None], cache, None)
                walls: dict[str, list[float]] = {n: [] for n in names}
                for i in range(args.steps if rep else 2):
                    pos = torch.tensor([[args.prompt + i]])
                    for name in rotated(names, rep + i):
                        rows = [(xs[i, r][None, None], pos, c) for r, c in enumerate(caches[name])]
                        walls[name].append(timed(lambda name=name, rows=rows: methods[name][1](rows)))
                if rep:
                    for name in names:
                        per_rep[name].append(statistics.median(walls[name]))
            out.append({"rows": count, **{name: spread(v) for name, v in per_rep.items()}})
            print(f"  {count} rows: load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=24, help="one-token steps timed per repetition")
    parser.add_argument("--prompt", type=int, default=45, help="positions of the prompt pass")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--rows", default="1,2,4,8", help="row counts of the concurrent-sessions part (int8)")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpt_step.json")
    args = parser.parse_args()
    args.rows = [int(x) for x in args.rows.split(",") if x]
    torch.set_num_threads(args.threads)
    root = full_size_assets(args.cache)
    config = json.loads((root / "asset" / "gpt" / "config.json").read_text())
    hidden = int(config["hidden_size"])
    result: dict[str, Any] = {
        "machine": machine_info(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "model": {k: config[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size")},
        "steps": [],
        "rows": [],
    }
    started = time.perf_counter()
    for precision in args.precisions.split(","):
        print(f"{precision}: loading ...", file=sys.stderr, flush=True)
        steppers = load(root, precision, args.threads)
        for row in measure_steppers(steppers, args, hidden):
            result["steps"].append({"precision": precision, **row})
        if precision == "int8" and args.rows:
            result["rows"] = measure_rows(steppers, args, hidden)
        del steppers
    finish(result["machine"])
    result["seconds"] = round(time.perf_counter() - started, 1)

    print_table(
        f"GPT step, full-size random weights, {args.threads} threads: median (range over {args.reps} reps)",
        ["precision", "stepper", "stack ms/step", "generate ms/step", f"prompt pass ({args.prompt}) ms"],
        [
            [
                r["precision"],
                r["stepper"],
                span(r["stack_step"]),
                span(r["generate_step"]),
                span(r["prompt_pass"]),
            ]
            for r in result["steps"]
        ],
    )
    if result["rows"]:
        names = [k for k in result["rows"][0] if k != "rows"]
        print_table(
            "int8, several sequences one position each (concurrent sessions): ms per call of all rows",
            ["int8 rows", *[f"{n} ms" for n in names]],
            [[str(r["rows"]), *[f"{r[n]['ms']:.1f}" for n in names]] for r in result["rows"]],
        )
    machine = result["machine"]
    print(f"load average {machine['loadavg_start']} -> {machine['loadavg_end']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
