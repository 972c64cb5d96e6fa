"""Per-frame overhead of voiceloop's stage graph, side by side with pipecat's.

Why: the frame path runs 50 times a second per stage, so whatever a framework spends per frame
is latency and CPU no model gets back. The goal (issue): voiceloop's per-frame overhead at least
5x lower than pipecat's. This script measures it on the same machine in the same run.

What: 3000 frames of 20 ms (60 s of 16 kHz mono int16 audio) go through
``source → 6 pass-through stages → sink``, built four ways:

* ``voiceloop``     — ``Pipeline([source, 6 Stages, sink]).run()``;
* ``pipecat``       — pipecat's ``PipelineWorker`` with its defaults, run by ``WorkerRunner``
  (RTVI, turn-tracking and idle-detection observers on);
* ``pipecat-lean``  — the same with ``enable_rtvi=False, enable_turn_tracking=False,
  idle_timeout_secs=None`` (no observers besides the worker's own fan-out);
* ``asyncio``       — reference floor: ``asyncio.Queue(64)`` between stages, one task per stage.

The source stamps ``time.perf_counter()`` into each frame when it emits it (voiceloop:
``capture_time``; pipecat: ``metadata``) and the sink records the difference. CPU per frame is
the worker process's ``time.process_time()`` from the first emit to the last arrival / frames.

Modes: ``unpaced`` — the source hands over one frame per event-loop turn (``await
asyncio.sleep(0)`` between frames, plus the framework's own backpressure where it has any) as fast
as the loop goes. The yield is needed for a fair comparison: pipecat's queues are unbounded, so
without it its source would enqueue all 3000 frames before the first one moves and the latency
would measure queue depth, not overhead. ``paced`` — one frame every 20 ms on an absolute
schedule, like a microphone (60 s per run).

A fifth, ``floor``, runs the source's schedule with no stages: the event loop and the
measurement alone. "CPU above floor" subtracts it; paced, the floor is mostly the cost of waking
an idle loop every 20 ms, which every implementation pays alike.

Each implementation runs in its own subprocess; the order rotates every repetition and the
reported numbers are medians over repetitions of the per-run statistics. pipecat is never a
voiceloop dependency: it lives in ``benchmarks/.venv-pipecat`` (created on first use from
``benchmarks/requirements-pipecat.txt``); its worker never imports voiceloop and vice versa.

Run: ``python benchmarks/pipeline_overhead.py`` (unpaced, 9 repetitions, under a minute plus a
one-time venv install; small VMs drift by +-30 % within seconds, hence 9 rather than 5);
``--paced`` adds the paced mode (3 repetitions, about 13 min); ``--mode paced`` runs only that.
Writes ``benchmarks/results/pipeline_overhead.json`` (a mode not run this time keeps its earlier
results) and prints the tables, also as Markdown for ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from machine import finish, machine_info, print_table  # stdlib only: this file runs in the pipecat venv too

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
VENV = BENCH / ".venv-pipecat"
REQUIREMENTS = BENCH / "requirements-pipecat.txt"
RESULTS = BENCH / "results" / "pipeline_overhead.json"

FRAME_S = 0.020
FRAME_SAMPLES = 320  # 20 ms at 16 kHz
FRAMES = 3000
STAGES = 6
QUEUE_SIZE = 64  # voiceloop's default queue size, used for the asyncio floor too

IMPLS = ("voiceloop", "pipecat", "pipecat-lean", "asyncio")
LABELS = {
    "voiceloop": "voiceloop",
    "pipecat": "pipecat (default worker)",
    "pipecat-lean": "pipecat (lean worker)",
    "asyncio": "plain asyncio queues",
    "floor": "source loop alone, no stages (floor)",
}
FLOOR_PACED_FRAMES = 1000  # 20 s is plenty to measure the idle-wake-up cost
GOAL = 5.0


# -- worker side (stdlib only at module level: this file also runs in the pipecat venv) ---------


class Probe:
    """Per-frame latency (source stamp → sink) and the process's CPU time over the frame window."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.latencies: list[float] = []
        self.cpu0 = self.cpu1 = self.wall0 = self.wall1 = 0.0

    def stamp(self, seq: int) -> float:
        """Called by the source right before it emits frame ``seq``; returns the stamp to carry."""
        if seq == 0:
            self.cpu0 = time.process_time()
            self.wall0 = time.perf_counter()
        return time.perf_counter()

    def arrive(self, stamp: float) -> None:
        """Called by the sink for every frame, first thing."""
        t = time.perf_counter()
        latencies = self.latencies
        latencies.append(t - stamp)
        if len(latencies) == self.frames:
            self.cpu1 = time.process_time()
            self.wall1 = t

    def summary(self) -> dict[str, Any]:
        if len(self.latencies) != self.frames:
            raise RuntimeError(f"sink saw {len(self.latencies)} of {self.frames} frames")
        ms = sorted(x * 1e3 for x in self.latencies)
        return {
            "frames": self.frames,
            "latency_median_ms": statistics.median(ms),
            "latency_p99_ms": _percentile(ms, 99),
            "latency_mean_ms": statistics.fmean(ms),
            "latency_max_ms": ms[-1],
            "cpu_us_per_frame": (self.cpu1 - self.cpu0) / self.frames * 1e6,
            "wall_s": self.wall1 - self.wall0,
        }


def _percentile(sorted_values: list[float], pct: float) -> float:
    """Linear-interpolated percentile of already sorted values (numpy's default method)."""
    pos = (len(sorted_values) - 1) * pct / 100
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


async def wait_turn(paced: bool, start: float, seq: int) -> None:
    """Before frame ``seq``: sleep until its 20 ms slot (paced) or yield one loop turn (unpaced)."""
    if paced:
        delay = start + seq * FRAME_S - time.perf_counter()
        await asyncio.sleep(delay if delay > 0 else 0)
    else:
        await asyncio.sleep(0)


def run_voiceloop(paced: bool, frames: int, stages: int) -> tuple[Probe, dict[str, str]]:
    """voiceloop: a backpressured source Stage, pass-through Stages, a sink Stage."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import voiceloop
    from voiceloop.frames import AudioFrame, EndOfStream, Frame
    from voiceloop.pipeline import Pipeline, Stage

    probe = Probe(frames)
    samples = np.zeros(FRAME_SAMPLES, dtype=np.int16)

    class Source(Stage):
        name = "source"

        async def produce(self) -> None:
            start = time.perf_counter()
            for seq in range(frames):
                await wait_turn(paced, start, seq)
                frame = AudioFrame(samples, seq=seq)
                frame.capture_time = probe.stamp(seq)
                await self.emit(frame)
            await self.emit(EndOfStream())

    class PassThrough(Stage):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.name = f"pass{index}"

    class Sink(Stage):
        name = "sink"

        async def process(self, frame: Frame) -> None:
            if frame.__class__ is AudioFrame:
                probe.arrive(frame.capture_time)  # type: ignore[attr-defined]

    pipeline = Pipeline([Source(), *(PassThrough(i) for i in range(stages)), Sink()], queue_size=QUEUE_SIZE)
    asyncio.run(pipeline.run())
    return probe, {"voiceloop": voiceloop.__version__}


def run_pipecat(paced: bool, frames: int, stages: int, *, lean: bool) -> tuple[Probe, dict[str, str]]:
    """pipecat: source, pass-through and sink FrameProcessors in a PipelineWorker run by WorkerRunner."""
    from loguru import logger

    logger.remove()  # pipecat logs at DEBUG to stderr; keep only problems (none per frame either way)
    logger.add(sys.stderr, level="WARNING")

    import pipecat
    from pipecat.frames.frames import (
        EndWorkerFrame,
        Frame,
        InputAudioRawFrame,
        StartFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    probe = Probe(frames)
    audio = bytes(FRAME_SAMPLES * 2)

    class PassThrough(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)

    class Source(PassThrough):
        def start_producing(self) -> None:
            self.create_task(self._produce(), name="benchmark-source")

        async def _produce(self) -> None:
            start = time.perf_counter()
            for seq in range(frames):
                await wait_turn(paced, start, seq)
                frame = InputAudioRawFrame(audio=audio, sample_rate=16_000, num_channels=1)
                frame.metadata["t"] = probe.stamp(seq)
                await self.push_frame(frame)
            # The documented way for a processor to end the pipeline: the worker then sends an
            # EndFrame through it.
            await self.push_frame(EndWorkerFrame(), FrameDirection.UPSTREAM)

    class Sink(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            if isinstance(frame, InputAudioRawFrame):
                probe.arrive(frame.metadata["t"])
                return  # consumed, like voiceloop's sink (lifecycle frames go on to the worker)
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)

    source = Source(name="source")
    passes = [PassThrough(name=f"pass{i}") for i in range(stages)]
    pipeline = Pipeline([source, *passes, Sink(name="sink")])
    options: dict[str, Any] = (
        {"enable_rtvi": False, "enable_turn_tracking": False, "idle_timeout_secs": None} if lean else {}
    )
    worker = PipelineWorker(pipeline, **options)

    @worker.event_handler("on_pipeline_started")
    async def _started(worker: PipelineWorker, frame: StartFrame) -> None:
        source.start_producing()  # only once every processor has its StartFrame

    async def main() -> None:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    asyncio.run(main())
    return probe, {"pipecat": pipecat.__version__}


def run_asyncio(paced: bool, frames: int, stages: int) -> tuple[Probe, dict[str, str]]:
    """Reference floor: bounded asyncio.Queues, one task per stage, ``None`` ends the stream."""
    probe = Probe(frames)
    payload = bytes(FRAME_SAMPLES * 2)

    class Item:
        __slots__ = ("payload", "seq", "stamp")

        def __init__(self, payload: bytes, seq: int) -> None:
            self.payload = payload
            self.seq = seq
            self.stamp = 0.0

    async def source(out: asyncio.Queue[Item | None]) -> None:
        start = time.perf_counter()
        for seq in range(frames):
            await wait_turn(paced, start, seq)
            item = Item(payload, seq)
            item.stamp = probe.stamp(seq)
            await out.put(item)
        await out.put(None)

    async def relay(inbox: asyncio.Queue[Item | None], out: asyncio.Queue[Item | None]) -> None:
        while True:
            item = await inbox.get()
            await out.put(item)
            if item is None:
                return

    async def sink(inbox: asyncio.Queue[Item | None]) -> None:
        while (item := await inbox.get()) is not None:
            probe.arrive(item.stamp)

    async def main() -> None:
        queues: list[asyncio.Queue[Item | None]] = [asyncio.Queue(QUEUE_SIZE) for _ in range(stages + 1)]
        relays = [relay(queues[i], queues[i + 1]) for i in range(stages)]
        await asyncio.gather(source(queues[0]), *relays, sink(queues[-1]))

    asyncio.run(main())
    return probe, {}


def run_floor(paced: bool, frames: int, stages: int) -> tuple[Probe, dict[str, str]]:
    """The source's schedule with no stages at all: what the event loop alone costs per frame.

    Paced, this is dominated by waking the idle loop every 20 ms, which every implementation
    pays the same way.
    """
    probe = Probe(frames)

    async def main() -> None:
        start = time.perf_counter()
        for seq in range(frames):
            await wait_turn(paced, start, seq)
            probe.arrive(probe.stamp(seq))

    asyncio.run(main())
    return probe, {}


WORKERS = {
    "voiceloop": run_voiceloop,
    "pipecat": lambda paced, frames, stages: run_pipecat(paced, frames, stages, lean=False),
    "pipecat-lean": lambda paced, frames, stages: run_pipecat(paced, frames, stages, lean=True),
    "asyncio": run_asyncio,
    "floor": run_floor,
}


def worker_main(impl: str, mode: str, frames: int, stages: int) -> None:
    """Run one implementation once and print its results as one JSON line."""
    probe, versions = WORKERS[impl](mode == "paced", frames, stages)
    result = {"impl": impl, "mode": mode, "stages": stages, **probe.summary()}
    result["versions"] = {"python": platform.python_version(), **versions}
    print(json.dumps(result), flush=True)


# -- orchestrator side -------------------------------------------------------------------------


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def ensure_pipecat_venv() -> Path:
    """Create benchmarks/.venv-pipecat and install the pinned pipecat (again if the pins changed)."""
    python = venv_python()
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = VENV / ".requirements-sha256"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    if not python.exists():
        print(f"creating {VENV.relative_to(ROOT)} (one time) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print(f"installing {REQUIREMENTS.relative_to(ROOT)} into it ...", file=sys.stderr, flush=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(wanted + "\n")
    return python


def run_worker(python: str, impl: str, mode: str, frames: int, stages: int) -> dict[str, Any]:
    cmd = [python, str(Path(__file__).resolve()), "--worker", impl, "--mode", mode]
    cmd += ["--frames", str(frames), "--stages", str(stages)]
    timeout = 120 + (frames * FRAME_S if mode == "paced" else 0)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)  # each worker imports only its own framework
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=BENCH, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {impl}/{mode} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


METRICS = ("latency_median_ms", "latency_p99_ms", "cpu_us_per_frame")  # the metrics
# CPU per frame minus the floor (the source's loop with no stages): the framework's own share;
# paced, the floor is mostly the cost of waking an idle event loop every 20 ms.
ABOVE_FLOOR = "cpu_us_per_frame_above_floor"
ALL_METRICS = (*METRICS, ABOVE_FLOOR)


def summarise(runs: dict[str, list[dict[str, Any]]], floor: dict[str, Any]) -> dict[str, Any]:
    """Medians over repetitions of each per-run statistic, plus the pipecat/voiceloop ratios.

    ``ratios`` divide the medians (the goal is judged on the issue's three metrics, the
    above-floor CPU ratio is reported beside them); ``ratios_per_repetition``
    divide runs of the same repetition, which ran seconds apart and so share the machine's
    state: their spread shows how much the ratio moves with noise.
    """
    impls: dict[str, Any] = {}
    for impl, results in runs.items():
        for r in results:
            r[ABOVE_FLOOR] = r["cpu_us_per_frame"] - floor["cpu_us_per_frame"]
        entry: dict[str, Any] = {"label": LABELS[impl], "repetitions": len(results)}
        for key in (*ALL_METRICS, "latency_mean_ms", "latency_max_ms", "wall_s"):
            values = [r[key] for r in results]
            entry[key] = statistics.median(values)
            if key in ALL_METRICS:
                entry[f"{key}_range"] = [min(values), max(values)]
        entry["runs"] = results
        impls[impl] = entry
    ratios: dict[str, Any] = {}
    per_rep: dict[str, Any] = {}
    if "voiceloop" in impls:
        base = impls["voiceloop"]
        for other in ("pipecat", "pipecat-lean", "asyncio"):
            if other in impls:
                ratios[f"{other}/voiceloop"] = {key: impls[other][key] / base[key] for key in ALL_METRICS}
                pairs = list(zip(runs[other], runs["voiceloop"], strict=True))
                per_rep[f"{other}/voiceloop"] = {
                    key: [o[key] / v[key] for o, v in pairs] for key in ALL_METRICS
                }
    goal = None
    if "pipecat/voiceloop" in ratios:
        goal = {key: value >= GOAL for key, value in ratios["pipecat/voiceloop"].items()}
        goal["all_issue_metrics"] = all(goal[key] for key in METRICS)
    return {
        "implementations": impls,
        "ratios": ratios,
        f"goal_{GOAL:g}x_vs_default_pipecat": goal,
        "ratios_per_repetition": per_rep,
        "floor": {"label": LABELS["floor"], **floor},
    }


def _fmt_ratio(value: float) -> str:
    return f"{value:.2f}x {'✅' if value >= GOAL else '❌'}"


def table_rows(modes: dict[str, Any]) -> list[list[str]]:
    """Rows shared by the terminal table and the Markdown one."""
    rows: list[list[str]] = []
    for mode, data in modes.items():
        impls = data["implementations"]
        for impl in IMPLS:
            if impl in impls:
                e = impls[impl]
                rows.append(
                    [
                        mode,
                        e["label"],
                        f"{e['latency_median_ms']:.3f}",
                        f"{e['latency_p99_ms']:.3f}",
                        f"{e['cpu_us_per_frame']:.1f}",
                        f"{e[ABOVE_FLOOR]:.1f}",
                    ]
                )
        floor = data.get("floor")
        if floor:
            rows.append([mode, f"_{floor['label']}_", "", "", f"_{floor['cpu_us_per_frame']:.1f}_", ""])
        for name, ratio in data["ratios"].items():
            if name.startswith("pipecat"):
                label = f"**{LABELS[name.split('/')[0]]} ÷ voiceloop**"
                spread = data.get("ratios_per_repetition", {}).get(name, {})
                cells = []
                for key in ALL_METRICS:
                    cell = _fmt_ratio(ratio[key])
                    if spread.get(key):
                        cell += f" ({min(spread[key]):.1f}–{max(spread[key]):.1f})"
                    cells.append(cell)
                rows.append([mode, label, *cells])
    return rows


HEADERS = [
    "mode",
    "implementation",
    "latency median (ms)",
    "latency p99 (ms)",
    "CPU per frame (µs)",
    "CPU above floor (µs)",
]


def markdown_table(modes: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 4) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(modes)]
    return "\n".join(lines)


def print_tables(report: dict[str, Any]) -> None:
    title = f"pipeline overhead: {report['frames']} frames x 20 ms, {report['stages']} pass-through stages"
    print_table(title, HEADERS, table_rows(report["modes"]))
    machine = report["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, commit {machine['git_commit']}")
    if sys.stdout.isatty():
        print("\nMarkdown (for benchmarks/README.md):\n" + markdown_table(report["modes"]))


def orchestrate(args: argparse.Namespace) -> None:
    modes = ["unpaced", "paced"] if args.mode == "both" or args.paced else [args.mode]
    impls = [i for i in IMPLS if not (args.skip_pipecat and i.startswith("pipecat"))]
    pipecat_python = str(ensure_pipecat_venv()) if not args.skip_pipecat else ""
    machine = machine_info()
    versions: dict[str, str] = {}
    new_modes: dict[str, Any] = {}
    for mode in modes:
        reps = args.reps if mode == "unpaced" else args.paced_reps
        runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
        for rep in range(reps):
            order = impls[rep % len(impls) :] + impls[: rep % len(impls)]  # rotate the order
            for impl in order:
                python = pipecat_python if impl.startswith("pipecat") else sys.executable
                result = run_worker(python, impl, mode, args.frames, args.stages)
                versions.update(result.pop("versions"))
                runs[impl].append(result)
                print(
                    f"{mode:8s} rep {rep + 1}/{reps} {impl:13s} median {result['latency_median_ms']:.3f} ms"
                    f"  p99 {result['latency_p99_ms']:.3f} ms  cpu {result['cpu_us_per_frame']:.1f} µs/frame",
                    file=sys.stderr,
                    flush=True,
                )
        floor_frames = args.frames if mode == "unpaced" else min(args.frames, FLOOR_PACED_FRAMES)
        floor = run_worker(sys.executable, "floor", mode, floor_frames, 0)
        floor.pop("versions")
        new_modes[mode] = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            # a mode kept from an earlier run below keeps the machine it was measured on
            "machine": {k: machine[k] for k in ("cpu", "isa", "cores", "git_commit", "git_dirty")},
            "repetitions": reps,
            **summarise(runs, floor),
        }
    previous: dict[str, Any] = {}
    if RESULTS.exists() and args.frames == FRAMES and args.stages == STAGES:
        try:
            previous = json.loads(RESULTS.read_text()).get("modes", {})
        except (OSError, ValueError):
            previous = {}
    ordered = {m: new_modes.get(m, previous.get(m)) for m in ("unpaced", "paced")}
    report = {
        "benchmark": "pipeline_overhead",
        "description": (
            f"{args.frames} frames x 20 ms through source -> {args.stages} pass-through stages -> sink; "
            "latency = sink perf_counter - source stamp; CPU = worker process_time over the frame window "
            "/ frames; numbers are medians over repetitions of per-run statistics"
        ),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "frames": args.frames,
        "stages": args.stages,
        "machine": finish(
            {**machine, "voiceloop": versions.get("voiceloop"), "pipecat": versions.get("pipecat")}
        ),
        "modes": {m: data for m, data in ordered.items() if data is not None},
    }
    if args.frames == FRAMES and args.stages == STAGES:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    print_tables(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=[*IMPLS, "floor"], help="internal: run one implementation once")
    parser.add_argument("--mode", choices=["unpaced", "paced", "both"], default="unpaced")
    parser.add_argument("--paced", action="store_true", help="also run the paced mode (~12 min)")
    parser.add_argument("--reps", type=int, default=9, help="repetitions per implementation, unpaced")
    parser.add_argument("--paced-reps", type=int, default=3, help="repetitions per implementation, paced")
    parser.add_argument("--frames", type=int, default=FRAMES, help="non-default values are not saved")
    parser.add_argument("--stages", type=int, default=STAGES, help="non-default values are not saved")
    parser.add_argument("--skip-pipecat", action="store_true", help="voiceloop and asyncio only")
    args = parser.parse_args()
    if args.worker:
        if args.mode == "both":
            parser.error("a worker runs one mode")
        worker_main(args.worker, args.mode, args.frames, args.stages)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
