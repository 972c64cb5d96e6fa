"""False and missed barge-ins with the bot's own voice in the mic, per echo mode, on synthetic rooms.

Why: a bot that hears itself through the speakers interrupts itself (a "barge-in" by its own
echo) and answers its own words. This measures how often that happens with each echo mode, and
what each mode costs in real barge-ins it misses.

Rooms (seeded): the bot's replies are espeak-ng sentences (English and Mandarin) at 24 kHz,
-20 dBFS, pushed to an ``EchoReference`` with their play times. The mic hears them through an
``EchoPath``: 40-120 ms late, a decaying impulse response (5-30 ms decay), -12..+3 dB echo gain,
loudspeaker overdrive in half of the rooms (tanh drive 1.5-3), mic noise -72..-60 dBFS. In half of
the replies the user barges in (another voice, -32..-22 dBFS: 15 dB below to 10 dB above the
echo) 0.4 s or more into the reply. Each room is one session of 6 replies, 1 s apart, so the
canceller and the gate carry what they learned from reply to reply, as in a real session.

Per mode, the mic runs through ``EchoProcessor`` and the real ``Endpointer``; every SpeechStarted
decided while the bot plays is put to the mode's barge-in predicate. Playback is not cut by a
barge-in (each decision is counted on the same audio in every mode).

* false barge-in: an allowed SpeechStarted, during playback, whose trigger window holds no user
  speech (counted on the replies without a user barge-in);
* missed barge-in: a reply with a user barge-in but no allowed SpeechStarted overlapping the
  user's speech; delay = decision time - user onset for the detected ones.

Echo path jumps: in ``--jump-rooms`` more rooms the echo delay jumps by 100-300 ms in the middle
of the third reply (a sound server rebuffering after an underrun, a device switch), measured for
the AEC modes with and without the moved-echo check (``... no-move-check``), side by side.

Run: ``python benchmarks/echo.py [--rooms 40] [--seed 0]`` (about a minute per 20 rooms on 2
cores); writes ``benchmarks/results/echo.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers.speech import RATE, espeak, trim_bounds  # noqa: E402
from machine import finish, machine_info, print_table  # noqa: E402

from voiceloop.aec import EchoProcessor, EchoReference, GateOptions, aec_available  # noqa: E402
from voiceloop.aec.room import EchoPath, run_frames, scale_to_dbfs  # noqa: E402
from voiceloop.frames import AudioFrame, SpeechStarted  # noqa: E402
from voiceloop.vad import Endpointer  # noqa: E402

BOT_RATE = 24_000
BOT_LINES = [
    ("en", "The weather today is sunny with a light breeze, and tomorrow it will rain."),
    ("en", "I can book a table for two at seven thirty, would you like that?"),
    ("en", "Your train leaves at nine fifteen from platform four, please be on time."),
    ("cmn", "好的，我已经帮你订好了明天上午十点的会议室。"),
    ("cmn", "今天北京天气晴朗，最高气温二十五度，适合出门散步。"),
    ("cmn", "这家餐厅的评价很好，晚上七点还有两个空位。"),
]
USER_LINES = [
    ("cmn", "等一下，我想改成下午。", 150, 70),
    ("cmn", "不对不对，是明天。", 170, 30),
    ("en", "Wait, stop, that is not what I asked.", 160, 75),
    ("en", "No, make it eight o'clock instead.", 180, 25),
]
MODES = ["off", "gate no-mute", "gate", "aec", "aec+gate", "aec+gate no-move-check"]
JUMP_MODES = ["gate", "gate no-move-check", "aec+gate", "aec+gate no-move-check"]
REPLIES_PER_ROOM = 6
GAP_S = 1.0
T0 = 1000.0  # pipeline clock at the start of a session
PLAY_TAIL_S = 0.1  # the sink still plays this long after the last sample was handed over
BOT_DBFS = -20.0
#: Errors in the play times the sink reports (reported - actual): device latency misjudged.
PLAY_TIME_ERRORS_MS = [-400, -200, -100, -50, 0, 50, 100, 150, 300]


def clip(voice: str, text: str, speed: int = 165, pitch: int = 50) -> np.ndarray:
    x = espeak(text, voice, speed, pitch)
    a, b = trim_bounds(x)
    return x[round(a * RATE) : round(b * RATE)]


@dataclass
class Reply:
    start: float  # clock time the reply starts playing
    end: float
    user: tuple[float, float] | None  # clock interval of the user's barge-in speech
    user_to_echo_db: float = 0.0  # user speech level over the echo level at the mic


@dataclass
class Session:
    path: EchoPath
    far: np.ndarray  # the bot's playback, int16 at BOT_RATE, from T0
    mic: np.ndarray  # int16 at 16 kHz, from T0
    replies: list[Reply] = field(default_factory=list)


def make_session(
    rng: np.random.Generator,
    seed: int,
    bots: list[np.ndarray],
    users: list[np.ndarray],
    jump: tuple[float, float] | None = None,
) -> Session:
    """One room's session; ``jump`` = (ms, fraction): the echo delay grows by ``ms`` that far into
    the third reply."""
    path = EchoPath(
        delay_ms=float(rng.uniform(40, 120)),
        gain_db=float(rng.uniform(-12, 3)),
        decay_ms=float(rng.uniform(5, 30)),
        noise_dbfs=float(rng.uniform(-72, -60)),
        drive=float(rng.choice([0.0, 0.0, 1.5, 3.0])),
        seed=seed,
    )
    far16: list[np.ndarray] = [np.zeros(round(0.5 * RATE), np.int16)]
    near = []
    replies = []
    pos = len(far16[0])
    for i in range(REPLIES_PER_ROOM):
        bot = bots[int(rng.integers(len(bots)))]
        reply = Reply(T0 + pos / RATE, T0 + (pos + len(bot)) / RATE, None)
        if i % 2 == int(rng.integers(2)):  # about half the replies, never in a fixed pattern
            user_dbfs = float(rng.uniform(-32, -22))
            user = scale_to_dbfs(users[int(rng.integers(len(users)))], user_dbfs)
            reply.user_to_echo_db = user_dbfs - (BOT_DBFS + path.gain_db)
            onset = pos + round(rng.uniform(0.4, max(0.5, len(bot) / RATE - 1.0)) * RATE)
            near.append((onset, user))
            reply.user = (T0 + onset / RATE, T0 + (onset + len(user)) / RATE)
        replies.append(reply)
        gap = np.zeros(round(GAP_S * RATE), np.int16)
        far16 += [bot, gap]
        pos += len(bot) + len(gap)
    far_16k = np.concatenate(far16)
    total = max([len(far_16k)] + [onset + len(user) for onset, user in near]) + RATE // 2
    far_16k = np.concatenate([far_16k, np.zeros(total - len(far_16k), np.int16)])
    near_sig = np.zeros(total, np.float64)
    for onset, user in near:
        near_sig[onset : onset + len(user)] += user
    far = np.round(soxr.resample(far_16k.astype(np.float32), RATE, BOT_RATE)).astype(np.int16)
    near16 = np.clip(near_sig, -32768, 32767).astype(np.int16)
    mic = path.mic(far, BOT_RATE, near16)
    if jump is not None:
        moved = replace(path, delay_ms=path.delay_ms + jump[0]).mic(far, BOT_RATE, near16)
        third = replies[2]
        at = round((third.start + jump[1] * (third.end - third.start) - T0) * RATE)
        mic = np.concatenate([mic[:at], moved[at:]])
    return Session(path, far, mic, replies)


class Playback:
    """Pushes the bot audio into the reference the way the output stage does: 20 ms writes with
    their play times, ``AHEAD_S`` before they play (the sink's buffer)."""

    AHEAD_S = 0.2

    def __init__(self, far: np.ndarray, reference: EchoReference, error_s: float = 0.0) -> None:
        self.far, self.reference, self.pos, self.error_s = far, reference, 0, error_s

    def until(self, clock: float) -> None:
        chunk = BOT_RATE // 50
        end = min(len(self.far), round((clock + self.AHEAD_S - T0) * BOT_RATE))
        while self.pos < end:
            play_time = T0 + self.pos / BOT_RATE + self.error_s  # as the sink reports it
            self.reference.push(self.far[self.pos : self.pos + chunk], BOT_RATE, play_time)
            self.pos += chunk


class NoMoveCheck(EchoProcessor):
    """The processor as it was before the moved-echo check (the side-by-side baseline)."""

    def _echo_moved(self, started: SpeechStarted, found: tuple[float, float] | None) -> bool:
        return False


def make_processor(mode: str, reference: EchoReference) -> EchoProcessor:
    if mode.endswith(" no-move-check"):
        return NoMoveCheck(reference, mode.removesuffix(" no-move-check"))
    if mode == "gate no-mute":  # the gate as a barge-in predicate only
        return EchoProcessor(reference, "gate", gate=GateOptions(suppress="off"))
    if mode.endswith(" fixed"):  # trusting the reported play times (no delay tracking)
        return EchoProcessor(reference, mode.removesuffix(" fixed"), track_delay=False)
    return EchoProcessor(reference, mode)


def evaluate(session: Session, mode: str, error_s: float = 0.0) -> dict:
    reference = EchoReference()
    playback = Playback(session.far, reference, error_s)
    proc = make_processor(mode, reference)

    def process(frame: AudioFrame) -> AudioFrame:
        playback.until(frame.capture_time)
        return proc.process(frame)

    endpointer = Endpointer()
    starts: list[tuple[SpeechStarted, bool]] = []

    def on_frame(_: object, out: object) -> None:
        for ev in endpointer.process(out):  # type: ignore[arg-type]
            if isinstance(ev, SpeechStarted):
                playing = any(r.start <= ev.time <= r.end + PLAY_TAIL_S for r in session.replies)
                starts.append((ev, playing and proc.allow(ev)))

    t = time.process_time()
    out = run_frames(process, session.mic, start_time=T0, on_frame=on_frame)
    cpu = time.process_time() - t
    frames = len(out) // 320
    false_starts, false_replies, detected, delays, barge_ins = 0, 0, 0, [], []
    for reply in session.replies:
        in_reply = [(ev, ok) for ev, ok in starts if ok and reply.start <= ev.time <= reply.end + PLAY_TAIL_S]
        if reply.user is None:
            false_starts += len(in_reply)
            false_replies += bool(in_reply)
            continue
        u0, u1 = reply.user
        hits = [ev.time - u0 for ev, _ in in_reply if ev.speech_time < u1 and ev.time > u0]
        barge_ins.append((reply.user_to_echo_db, bool(hits)))
        if hits:
            detected += 1
            delays.append(min(hits))
    quiet = [r for r in session.replies if r.user is None]
    erle = None
    if proc.canceller is not None and quiet:  # echo-only replies, after the first (convergence)
        sel = np.zeros(len(out), bool)
        for r in quiet[1:] or quiet:
            sel[round((r.start - T0) * RATE) : round((r.end - T0) * RATE)] = True
        m, o = session.mic[: len(out)][sel].astype(np.float64), out[sel].astype(np.float64)
        erle = float(10 * np.log10(np.dot(m, m) / max(np.dot(o, o), 1.0)))
    return {
        "quiet_replies": len(quiet),
        "false_barge_ins": false_starts,
        "replies_with_false": false_replies,
        "user_replies": len(session.replies) - len(quiet),
        "detected": detected,
        "delays": delays,
        "barge_ins": barge_ins,
        "erle_db": erle,
        "cpu_ms_per_frame": 1000 * cpu / max(frames, 1),
        "coupling_db": proc.gate.coupling_db if proc.gate is not None else None,
    }


def missed_by_level(barge_ins: list[tuple[float, bool]]) -> dict[str, str]:
    """Missed / total barge-ins per bucket of user level over echo level at the mic."""
    out = {}
    for name, lo, hi in (("< -6 dB", -99, -6), ("-6..0 dB", -6, 0), ("0..6 dB", 0, 6), (">= 6 dB", 6, 99)):
        hits = [ok for level, ok in barge_ins if lo <= level < hi]
        out[name] = f"{hits.count(False)}/{len(hits)}"
    return out


def summarize(runs: list[dict]) -> dict:
    quiet = sum(r["quiet_replies"] for r in runs)
    users = sum(r["user_replies"] for r in runs)
    false = sum(r["false_barge_ins"] for r in runs)
    detected = sum(r["detected"] for r in runs)
    delays = [d for r in runs for d in r["delays"]]
    erles = [r["erle_db"] for r in runs if r["erle_db"] is not None]
    return {
        "quiet_replies": quiet,
        "false_barge_ins": false,
        "replies_with_false_barge_in": sum(r["replies_with_false"] for r in runs),
        "false_per_reply": false / max(quiet, 1),
        "user_barge_ins": users,
        "missed": users - detected,
        "missed_rate": (users - detected) / max(users, 1),
        "missed_by_user_to_echo_db": missed_by_level([b for r in runs for b in r["barge_ins"]]),
        "delay_ms_median": 1000 * float(np.median(delays)) if delays else None,
        "delay_ms_p95": 1000 * float(np.percentile(delays, 95)) if delays else None,
        "erle_db_median": float(np.median(erles)) if erles else None,
        "erle_db_min": float(np.min(erles)) if erles else None,
        "cpu_ms_per_frame": float(np.median([r["cpu_ms_per_frame"] for r in runs])),
    }


def false_and_missed(s: dict) -> list[str]:
    return [
        f"{s['false_barge_ins']} in {s['replies_with_false_barge_in']}/{s['quiet_replies']} replies",
        f"{s['missed']}/{s['user_barge_ins']} ({100 * s['missed_rate']:.0f}%)",
    ]


def print_tables(summary: dict, sweep: dict, jump_summary: dict, rooms: str, jump_rooms: int) -> None:
    rows = []
    for mode, s in summary.items():
        delay, erle = "-", "-"
        if s["delay_ms_median"] is not None:
            delay = f"{s['delay_ms_median']:.0f}/{s['delay_ms_p95']:.0f}"
        if s["erle_db_median"] is not None:
            erle = f"{s['erle_db_median']:.0f}/{s['erle_db_min']:.0f} dB"
        rows.append([mode, *false_and_missed(s), delay, erle, f"{s['cpu_ms_per_frame']:.3f}"])
    columns = ["mode", "false barge-ins", "missed barge-ins", "delay med/p95 ms", "ERLE med/min", "ms/frame"]
    print_table(rooms, columns, rows)
    sweep_rows = []
    for error_ms in PLAY_TIME_ERRORS_MS:
        cells = []
        for m in sweep:
            s = sweep[m][str(error_ms)]
            cells.append(f"{s['false_barge_ins']}/{s['quiet_replies']}, {s['missed']}/{s['user_barge_ins']}")
        sweep_rows.append([error_ms, *cells])
    print_table(
        "play-time error sweep (+: reported later than played)",
        ["error ms", *(f"{m} false/missed" for m in sweep)],
        sweep_rows,
    )
    print_table(
        f"echo delay jumps by 100-300 ms in the third reply ({jump_rooms} rooms)",
        ["mode", "false barge-ins", "missed barge-ins"],
        [[mode, *false_and_missed(s)] for mode, s in jump_summary.items()],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep-rooms", type=int, default=8, help="rooms for the play-time error sweep")
    parser.add_argument("--jump-rooms", type=int, default=12, help="rooms whose echo delay jumps")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "echo.json")
    args = parser.parse_args()
    machine = machine_info()
    modes = MODES if aec_available() else [m for m in MODES if "aec" not in m]
    bots = [clip(v, t) for v, t in BOT_LINES]
    bots = [scale_to_dbfs(b, BOT_DBFS) for b in bots]
    users = [clip(v, t, s, p) for v, t, s, p in USER_LINES]
    rng = np.random.default_rng(args.seed)
    per_mode: dict[str, list[dict]] = {m: [] for m in modes}
    rooms = []
    sweep_rooms: list[Session] = []
    t0 = time.time()
    for i in range(args.rooms):
        session = make_session(rng, args.seed * 1000 + i, bots, users)
        rooms.append(asdict(session.path))
        if i < args.sweep_rooms:
            sweep_rooms.append(session)
        for mode in modes:
            per_mode[mode].append(evaluate(session, mode))
    summary = {m: summarize(runs) for m, runs in per_mode.items()}
    sweep: dict[str, dict[str, dict]] = {}
    swept = [m for m in ("gate", "aec", "aec+gate") if m in modes]
    for mode in swept + [f"{m} fixed" for m in swept if "aec" in m]:
        sweep[mode] = {}
        for error_ms in PLAY_TIME_ERRORS_MS:
            runs = [evaluate(session, mode, error_ms / 1000) for session in sweep_rooms]
            sweep[mode][str(error_ms)] = summarize(runs)
    jump_rng = np.random.default_rng(args.seed + 7777)  # the rooms above stay as they were
    jump_modes = [m for m in JUMP_MODES if m.split()[0] in modes]
    jumps: dict[str, list[dict]] = {m: [] for m in jump_modes}
    for i in range(args.jump_rooms):
        jump = (float(jump_rng.uniform(100, 300)), float(jump_rng.uniform(0.3, 0.7)))
        session = make_session(jump_rng, 500_000 + args.seed * 1000 + i, bots, users, jump=jump)
        for mode in jump_modes:
            jumps[mode].append(evaluate(session, mode))
    jump_summary = {m: summarize(runs) for m, runs in jumps.items()}
    took = f"{args.rooms} rooms x {REPLIES_PER_ROOM} replies ({time.time() - t0:.0f} s)"
    print_tables(summary, sweep, jump_summary, took, args.jump_rooms)
    result = {
        "description": __doc__.split("\n\n")[0],
        "rooms": args.rooms,
        "replies_per_room": REPLIES_PER_ROOM,
        "seed": args.seed,
        "machine": finish(machine),
        "gate_defaults": asdict(GateOptions()),
        "summary": summary,
        "play_time_error_sweep": sweep,
        "echo_path_jumps": {"rooms": args.jump_rooms, "summary": jump_summary},
        "room_paths": rooms,
        "per_room": per_mode,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
