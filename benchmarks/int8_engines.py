"""Which torch backend should pack int8 weights on this CPU? fbgemm against oneDNN, side by side.

Runs the linear layers of the ASR's 24-layer XLSR-53-large encoder (per layer: four 1024x1024, one
1024x4096, one 4096x1024; 302 MB of int8 weights, so the stack streams from memory like the real
model) at the row counts voiceloop feeds them: 1 (a TTS decoding step has this shape), 44 (one
streaming ASR step, C + R = 0.88 s) and 400 (8 s offline). Each backend runs in its own process, and
oneDNN once more per instruction-set cap (``ONEDNN_MAX_CPU_ISA``) to show what it does on CPUs
without AMX or AVX-512. Output: a table and ``benchmarks/results/int8_engines.json``; the engine
``voiceloop.quantize.int8_engine()`` picks is printed beside it.

    python benchmarks/int8_engines.py [--reps 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import finish, machine_info, print_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "int8_engines.json"
ROWS = (1, 44, 400)
LAYERS = 24
#: (engine, ONEDNN_MAX_CPU_ISA or None)
VARIANTS = (
    ("fbgemm", None),
    ("onednn", None),
    ("onednn", "AVX512_CORE_VNNI"),
    ("onednn", "AVX2_VNNI"),
    ("onednn", "AVX2"),
)


def measure(engine: str, reps: int, threads: int) -> dict[str, object]:
    """In this process: pack the stack with ``engine``, time it at each row count (median ms)."""
    import numpy as np
    import torch
    from torch import nn

    from voiceloop.quantize import int8_linears

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shapes = [(1024, 1024)] * 4 + [(1024, 4096), (4096, 1024)]
    stack = nn.ModuleList(nn.Linear(i, o) for _ in range(LAYERS) for i, o in shapes)
    reference = nn.ModuleList(nn.Linear(i, o) for i, o in shapes[-2:])  # for the rounding error
    reference.load_state_dict(stack[4:6].state_dict())
    int8_linears(stack, rows=44, engine=engine)
    out: dict[str, object] = {}
    with torch.inference_mode():
        for rows in ROWS:
            inputs = {n: torch.randn(rows, n) for n in (1024, 4096)}
            for _ in range(2):
                for layer in stack:
                    layer(inputs[layer.in_features])
            walls = []
            for _ in range(reps):
                started = time.perf_counter()
                for layer in stack:
                    layer(inputs[layer.in_features])
                walls.append(time.perf_counter() - started)
            out[f"ms_rows_{rows}"] = float(np.median(walls) * 1e3)
        x = torch.randn(44, 1024)
        exact = reference[1](torch.nn.functional.gelu(reference[0](x)))
        approx = stack[5](torch.nn.functional.gelu(stack[4](x)))
        out["rel_error_mlp"] = float((approx - exact).norm() / exact.norm())
    return out


def machine() -> dict[str, object]:
    """The shared machine block plus the int8 packing engine voiceloop would pick here."""
    import torch  # noqa: F401  (imported so the block records torch's CPU kernel level)

    from voiceloop.quantize import has_amx, int8_engine

    return machine_info(amx=has_amx(), int8_engine=int8_engine())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], args.reps, args.threads)))
        return 0
    info = machine()
    rows = []
    for engine, isa in VARIANTS:
        env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
        if isa:
            env["ONEDNN_MAX_CPU_ISA"] = isa
        cmd = [sys.executable, __file__, "--child", engine, "--reps", str(args.reps)]
        cmd += ["--threads", str(args.threads)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"engine": engine, "onednn_max_isa": isa or "(all)", **result})
    base = next(r for r in rows if r["engine"] == "fbgemm")
    print_table(
        f"{LAYERS} layers of int8 linears, {args.threads} threads, median of {args.reps} (ms)",
        [
            "engine",
            "oneDNN ISA cap",
            *(f"{n} rows" for n in ROWS),
            "x fbgemm at 44 rows",
            "MLP rounding error",
        ],
        [
            [
                r["engine"],
                r["onednn_max_isa"],
                *(f"{r[f'ms_rows_{n}']:.1f}" for n in ROWS),
                f"{base['ms_rows_44'] / r['ms_rows_44']:.2f}",
                f"{r['rel_error_mlp']:.4f}",
            ]
            for r in rows
        ],
    )
    print(f"voiceloop packs with: {info['int8_engine']} (AMX: {info['amx']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": finish(info), "reps": args.reps, "rows": rows}, indent=1) + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
