"""Where the soak's RSS went (issue 19): torch's CPU kernel caches, one entry per input shape.

oneDNN (torch's CPU convolutions) and ideep cache a compiled kernel per input shape, 1024 of each
unless ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` / ``LRU_CACHE_CAPACITY`` say otherwise. The TTS decoder
(decoder + Vocos convolutions) runs on streaming windows whose length is one of a few steady sizes,
plus a new one at the end of most sentences. This decodes the tiny ChatTTS assets' windows in a
child process per setting: the steady sizes, then 55 new lengths (odd, 21..129: the high-water mark
of every buffer is reached there), then 55 more (even, 20..128: only per-shape caches grow now),
then all of them again. Heap in use (glibc ``mallinfo2``) and RSS are read after ``gc.collect()``
and ``malloc_trim(0)``, so freed memory and allocator slack are not counted.

    python benchmarks/soak_kernels.py          # prints a table, writes results/soak_kernels.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
#: (label, cache capacity for both variables; None: torch's default of 1024)
SETTINGS = [("default (1024)", None), ("256", "256"), ("32", "32")]

CHILD = """
import ctypes, gc, json, random, sys
from pathlib import Path
sys.path[:0] = [{root!r}, {tests!r}, {bench!r}]
import soak, torch
from voiceloop.cli.main import build_parser
from voiceloop.cli.loop import agent_for, loop_options

libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info

def measure():
    gc.collect()
    libc.malloc_trim(0)
    rss = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines()
               if l.startswith("VmRSS:"))
    return {{"inuse_mib": libc.mallinfo2().uordblks / 2**20, "rss_mib": rss / 1024}}

tts = soak.tiny_tts(Path({bench!r}) / ".cache")
argv = ["serve", "--asr", str(soak.TINY_ASR), "--tts", str(tts), "--asr-threads", "1", "--tts-threads", "1"]
args = build_parser().parse_args(argv)
engine = agent_for(args, loop_options(args)).engines.tts
decode = engine._decode_fn()
width = engine.hidden_decoder.step_dim

def run(lengths):
    engine.lane.call(lambda: [decode(torch.randn(n, width)) for n in lengths])

odd, even = list(range(21, 130, 2)), list(range(20, 129, 2))
random.Random(0).shuffle(odd)
random.Random(1).shuffle(even)
run([12, 20, 28, 36, 57] * 4)  # the steady window sizes of a reply
points = {{"steady": measure()}}
run(odd)
points["odd"] = measure()
run(even)
points["even"] = measure()
run(odd + even)
points["again"] = measure()
print(json.dumps(points))
"""


def child(capacity: str | None) -> dict[str, dict[str, float]]:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    if capacity is not None:
        env.update({name: capacity for name in VARIABLES})
    code = CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), bench=str(HERE))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    sys.path.insert(0, str(HERE))
    from machine import finish, machine_info, print_table

    info = machine_info()
    rows, results = [], []
    for label, capacity in SETTINGS:
        points = child(capacity)
        step = {k: round(points["even"][k] - points["odd"][k], 2) for k in ("inuse_mib", "rss_mib")}
        first = {k: round(points["odd"][k] - points["steady"][k], 2) for k in ("inuse_mib", "rss_mib")}
        again = round(points["again"]["inuse_mib"] - points["even"]["inuse_mib"], 2)
        per_length = round(step["inuse_mib"] * 1024 / 55)
        results.append(
            {
                "cache": label,
                "capacity": capacity,
                "points": points,
                "first_55": first,
                "next_55": step,
                "again_inuse_mib": again,
                "inuse_kib_per_new_length": per_length,
            }
        )
        rows.append(
            [
                label,
                first["inuse_mib"],
                first["rss_mib"],
                step["inuse_mib"],
                step["rss_mib"],
                per_length,
                again,
            ]
        )
    header = [
        "kernel caches",
        "55 lengths: heap MiB",
        "RSS MiB",
        "55 more: heap MiB",
        "RSS MiB",
        "heap KiB / new length",
        "all again: heap MiB",
    ]
    print_table("TTS decode windows of new lengths: heap in use and RSS after gc + malloc_trim", header, rows)
    out = HERE / "results" / "soak_kernels.json"
    out.write_text(json.dumps({"machine": finish(info), "results": results}, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
