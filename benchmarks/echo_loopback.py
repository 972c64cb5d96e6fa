"""How often the bot's own voice, looped back from the speaker to the mic, still cuts it off.

Real devices on a private PulseAudio server (null sinks, ``module-loopback`` from the speaker's
monitor into the mic: an acoustic echo with a sound server's real timing): each run starts
``voiceloop chat --echo auto`` in its own process with the bundled tiny ASR and random-weight
ChatTTS, says one utterance, and reads the turns it wrote. A run *leaks* when the bot's reply
was interrupted or when a later utterance kept a transcript (the bot heard itself and would
answer itself). Scenarios: ``steady`` (20 ms loopback) and ``moved`` (the loopback moves from
20 to 300 ms a second into the reply, as a sound server rebuffering after an underrun does).
``--echo off`` runs are the control: there the echo cuts the bot off nearly every time.

This is a rate, not a test: one run depends on the sound server's and the loop's scheduling, so
the tests assert what is deterministic (tests/test_echo*.py on a virtual clock, and the wiring
on PulseAudio in tests/test_chat.py) and this script measures how rare the rest is.

    python benchmarks/echo_loopback.py --runs 100            # both scenarios, echo auto
    python benchmarks/echo_loopback.py --runs 10 --echo off  # the control
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from helpers.pulse import Pulse, PulseServer, missing, use_server  # noqa: E402
from helpers.speech import espeak  # noqa: E402
from machine import finish, machine_info, print_table  # noqa: E402

TINY_ASR = ROOT / "tests" / "fixtures" / "tiny-zh-asr"
REPLY = "今天天气很好。" * 3


def one_run(server: PulseServer, pulse: Pulse, work: Path, scenario: str, echo: str) -> dict:
    """One conversation: the user's turn, the bot's reply into the loopback, the verdict."""
    metrics = work / f"chat-{time.monotonic_ns()}.jsonl"
    bot = work / "bot.py"
    argv = ["chat", "--input-device", "vmic", "--output-device", "vspeaker", "--asr", str(TINY_ASR)]
    argv += ["--tts", str(work / "tts"), "--metrics-out", str(metrics), "--quiet", "--duration", "8"]
    argv += ["--handler", f"{bot}:reply", "--tts-max-seconds", "2.0", "--echo", echo]
    env = {**server._env(), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "voiceloop", *argv], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        with pulse.loopback() as move:
            pulse.wait_for_reader()
            player = pulse.play(espeak("你好", voice="cmn-latn-pinyin"), 16_000)
            try:
                player.wait()
            finally:
                player.stop()
            if scenario == "moved":
                time.sleep(1.3)  # the endpoint, then a second into the reply
                move(300)
            _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    if process.returncode != 0:
        return {"error": stderr[-2000:]}
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    turns = sorted((t for t in lines if t["type"] == "turn"), key=lambda t: t["turn_id"])
    summary = lines[-1]
    if not turns or not turns[0]["transcript"] or turns[0]["first_played"] is None:
        return {"error": f"the user's turn got no reply: {turns}"}
    first, *others = turns
    self_turns = sum(1 for t in others if t["transcript"] and not t["discarded"])
    counters = summary.get("counters", {})
    return {
        "interrupted": bool(first["interrupted"]),
        "self_turns": self_turns,
        "refused_barge_ins": counters.get("echo.refused_barge_ins", 0),
        "moved_refusals": counters.get("echo.moved_refusals", 0),
        "underruns": counters.get("underruns", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100, help="runs per scenario")
    parser.add_argument("--scenarios", default="steady,moved")
    parser.add_argument("--echo", default="auto", help="echo mode of the bot (off: the control)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "echo_loopback.json")
    args = parser.parse_args()
    reason = missing()
    if reason:
        sys.exit(f"echo_loopback: {reason}")
    machine = machine_info()
    scenarios = args.scenarios.split(",")
    server = PulseServer()
    server.start()
    use_server(server)
    pulse = Pulse(server)
    results: dict[str, list[dict]] = {s: [] for s in scenarios}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "bot.py").write_text(f"def reply(text):\n    return {REPLY!r}\n", encoding="utf-8")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "voiceloop",
                    "tts",
                    "random-assets",
                    str(work / "tts"),
                    "--layers",
                    "2",
                ],
                check=True,
                capture_output=True,
            )
            for i in range(args.runs):  # scenarios alternate, so machine drift hits both alike
                for scenario in scenarios:
                    run = one_run(server, pulse, work, scenario, args.echo)
                    results[scenario].append(run)
                    verdict = "error" if "error" in run else ("LEAK" if leaked(run) else "ok")
                    print(f"{scenario} run {i + 1}/{args.runs}: {verdict} {run}", file=sys.stderr, flush=True)
    finally:
        server.stop()
    rows, table = {}, []
    for scenario, runs in results.items():
        done = [r for r in runs if "error" not in r]
        row = {
            "runs": len(done),
            "errors": len(runs) - len(done),
            "leaks": sum(leaked(r) for r in done),
            "interrupted": sum(r["interrupted"] for r in done),
            "self_turns": sum(r["self_turns"] > 0 for r in done),
            "refused_barge_ins": sum(r["refused_barge_ins"] for r in done),
            "moved_refusals": sum(r["moved_refusals"] for r in done),
            "runs_with_underruns": sum(r["underruns"] > 0 for r in done),
        }
        rows[scenario] = row
        keys = (
            "runs",
            "leaks",
            "interrupted",
            "self_turns",
            "refused_barge_ins",
            "runs_with_underruns",
            "errors",
        )
        table.append([scenario, args.echo, *(row[k] for k in keys)])
    print_table(
        f"Echo loopback on PulseAudio, {args.runs} runs per scenario",
        [
            "scenario",
            "echo",
            "runs",
            "leaks",
            "bot cut off",
            "self-answers",
            "refused barge-ins",
            "runs with underruns",
            "errors",
        ],
        table,
    )
    result = {"machine": finish(machine), "args": vars(args) | {"out": str(args.out)}, "scenarios": rows}
    result["runs"] = results
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def leaked(run: dict) -> bool:
    return run["interrupted"] or run["self_turns"] > 0


if __name__ == "__main__":
    main()
