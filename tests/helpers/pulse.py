"""A private PulseAudio sound server for device tests (no sound card, no dbus, runs as root).

Null sinks give a real 48 kHz clock and a bit-exact digital path:

* ``vspeaker`` (48 kHz stereo): where the app plays; tests record its monitor (``vspeaker_mon``);
* ``vmic_feed`` (48 kHz mono): tests play "speech" into it; ``vmic`` (a remap of its monitor) is
  the app's microphone;
* ``loopback()`` routes ``vspeaker.monitor`` into ``vmic_feed``: the bot hears itself (echo tests).

PortAudio reaches the server through ALSA's pulse plugin, under the PCM names written to
``$XDG_CONFIG_HOME/alsa/asoundrc``, and scans devices once, at ``import sounddevice`` — so the
environment is set before that import (or PortAudio is re-initialized). Idle null-sink monitors
render in ~2 s blocks, which stalls the first low-latency reader for 1.4-1.8 s: one permanent
``parec`` "keeper" per monitor avoids that.

Use the ``pulse`` fixture (``from pulse import pulse_fixture``); tests skip when PulseAudio is missing.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

RATE = 48_000
INSTALL = "apt-get install libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins"

_PA_CONFIG = """\
load-module module-native-protocol-unix auth-anonymous=1 socket={socket}
load-module module-null-sink sink_name=vspeaker rate=48000 channels=2
load-module module-null-sink sink_name=vmic_feed rate=48000 channels=1
load-module module-remap-source source_name=vmic master=vmic_feed.monitor
set-default-sink vspeaker
set-default-source vmic
"""

_PCMS = {"vmic": "vmic", "vmic_feed": "vmic_feed", "vspeaker": "vspeaker", "vspeaker_mon": "vspeaker.monitor"}


def missing() -> str | None:
    """Why the harness cannot run here (None when it can)."""
    for tool in ("pulseaudio", "pactl", "parec"):
        if shutil.which(tool) is None:
            return f"{tool} not installed ({INSTALL})"
    if not list(Path("/usr/lib").glob("*/alsa-lib/libasound_module_pcm_pulse.so")) and not list(
        Path("/usr/lib").glob("alsa-lib/libasound_module_pcm_pulse.so")
    ):
        return f"the ALSA pulse plugin is not installed ({INSTALL})"
    # Not imported here: PortAudio must first see the server's environment.
    if importlib.util.find_spec("sounddevice") is None:
        return "sounddevice not installed (pip install -e '.[desktop]')"
    if ctypes.util.find_library("portaudio") is None:
        return f"the PortAudio library is not installed ({INSTALL})"
    return None


class PulseServer:
    """One private PulseAudio daemon with the virtual devices, its keepers and its ALSA names."""

    def __init__(self, root: Path | None = None) -> None:
        self._owns_root = root is None  # a temporary directory, removed by stop()
        self.root = Path(tempfile.mkdtemp(prefix="voiceloop-pulse-")) if root is None else root
        self.socket = self.root / "native"
        self.env = {
            "PULSE_SERVER": f"unix:{self.socket}",
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_RUNTIME_DIR": str(self.root / "runtime"),
        }
        self.daemon: subprocess.Popen[bytes] | None = None
        self.keepers: list[subprocess.Popen[bytes]] = []

    def start(self, timeout: float = 10.0) -> None:
        runtime = Path(self.env["XDG_RUNTIME_DIR"])
        runtime.mkdir(parents=True, exist_ok=True)
        runtime.chmod(0o700)
        alsa = Path(self.env["XDG_CONFIG_HOME"]) / "alsa"
        alsa.mkdir(parents=True, exist_ok=True)
        (alsa / "asoundrc").write_text(
            "".join(
                f'pcm.{name} {{ type pulse; device "{dev}"; hint {{ show on; description "{name}" }} }}\n'
                for name, dev in _PCMS.items()
            )
        )
        config = self.root / "virtual.pa"
        config.write_text(_PA_CONFIG.format(socket=self.socket))
        self.daemon = subprocess.Popen(
            ["pulseaudio", "--daemonize=no", "-n", "-F", str(config), "--exit-idle-time=-1",
             "--disallow-exit=yes", "--realtime=no", "--high-priority=no",
             f"--log-target=file:{self.root / 'pulse.log'}"],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while subprocess.run(["pactl", "info"], env=self._env(), capture_output=True).returncode != 0:
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                logfile = self.root / "pulse.log"
                log = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
                self.stop()
                raise RuntimeError(f"pulseaudio did not start: {log}")
            time.sleep(0.05)
        flowing = []
        for monitor in ("vspeaker.monitor", "vmic_feed.monitor"):
            keeper = subprocess.Popen(
                ["parec", "-d", monitor, "--latency-msec=10", f"--rate={RATE}", "--channels=1"],
                env=self._env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            self.keepers.append(keeper)
            flowing.append(threading.Event())
            threading.Thread(target=_discard, args=(keeper, flowing[-1]), daemon=True).start()
        # Until the keepers read at a low latency the sinks still render in ~2 s blocks.
        for event in flowing:
            if not event.wait(max(0.1, deadline + 5 - time.monotonic())):
                self.stop()
                raise RuntimeError("the PulseAudio keeper readers got no audio")

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def pactl(self, *args: str) -> str:
        result = subprocess.run(["pactl", *args], env=self._env(), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip()

    def stop(self) -> None:
        for proc in [*self.keepers, self.daemon]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [*self.keepers, self.daemon]:
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.keepers, self.daemon = [], None
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def kill(self) -> None:
        """The sound server dies (SIGKILL): every client stream is lost."""
        if self.daemon is not None:
            self.daemon.kill()
            self.daemon.wait()


def _discard(keeper: subprocess.Popen[bytes], flowing: threading.Event) -> None:
    """Read a keeper's audio and throw it away; signal once ~100 ms of it has arrived."""
    assert keeper.stdout is not None
    got = 0
    while chunk := keeper.stdout.read1(4096):
        got += len(chunk)
        if got >= RATE // 5:
            flowing.set()


def use_server(server: PulseServer) -> None:
    """Point this process's PortAudio at ``server`` (re-initializing it if already imported)."""
    os.environ.update(server.env)
    sd = sys.modules.get("sounddevice")
    if sd is not None:
        sd._terminate()
        sd._initialize()


class Player:
    """Plays an array into a device from an output stream; ``onset`` estimates when it is heard."""

    def __init__(self, samples: np.ndarray, rate: int, device: str) -> None:
        import sounddevice as sd

        data = np.asarray(samples)
        if data.dtype != np.int16:
            data = np.clip(np.rint(data * 32767), -32768, 32767).astype(np.int16)
        self.data = data.reshape(-1)
        self.pos = 0
        self.handed: float | None = None  # time.monotonic() when the first sample went to PortAudio
        self.onset: float | None = None  # ... plus the reported output latency: when the sink has it
        self.finished = threading.Event()
        self.stream = sd.RawOutputStream(
            device=device, samplerate=rate, channels=1, dtype="int16", blocksize=rate // 50,
            latency="low", callback=self._callback,
        )  # fmt: skip
        self.stream.start()

    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        out = np.frombuffer(outdata, dtype=np.int16)
        chunk = self.data[self.pos : self.pos + frames]
        if self.onset is None and len(chunk):
            self.handed = time.monotonic()
            self.onset = self.handed + self.stream.latency
        out[: len(chunk)] = chunk
        out[len(chunk) :] = 0
        self.pos += len(chunk)
        if self.pos >= len(self.data):
            self.finished.set()

    def wait(self, timeout: float = 30.0) -> None:
        if not self.finished.wait(timeout):
            raise TimeoutError("playback did not finish")
        time.sleep(self.stream.latency)

    def stop(self) -> None:
        self.stream.abort()
        self.stream.close()


class Recorder:
    """Records a device; maps sample indices to ``time.monotonic()`` from the callback times."""

    def __init__(self, device: str, rate: int) -> None:
        import sounddevice as sd

        self.rate = rate
        self.blocks: list[np.ndarray] = []
        self.received = 0
        self._offset = float("inf")  # min over callbacks of (callback time - end sample / rate)
        self._lock = threading.Lock()
        self.stream = sd.RawInputStream(
            device=device, samplerate=rate, channels=1, dtype="int16", blocksize=rate // 100,
            latency="low", callback=self._callback,
        )  # fmt: skip
        self.stream.start()

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        t = time.monotonic()
        block = np.frombuffer(bytes(indata), dtype=np.int16)
        with self._lock:
            self.blocks.append(block)
            self.received += len(block)
            self._offset = min(self._offset, t - self.received / self.rate)

    def audio(self) -> np.ndarray:
        with self._lock:
            return np.concatenate(self.blocks) if self.blocks else np.zeros(0, np.int16)

    def arrival_of(self, index: int) -> float:
        """When sample ``index`` reached this process (the earliest callbacks bound the delay)."""
        return self._offset + index / self.rate

    def time_of(self, index: int) -> float:
        """When sample ``index`` was at the sink: arrival minus the reported input latency."""
        return self.arrival_of(index) - self.stream.latency

    def index_at(self, t: float) -> int:
        return max(0, round((t - self._offset + self.stream.latency) * self.rate))

    def stop(self) -> np.ndarray:
        self.stream.abort()
        self.stream.close()
        return self.audio()


class Pulse:
    """What the ``pulse`` fixture yields: play into the virtual mic, record the virtual speaker."""

    mic = "vmic"
    speaker = "vspeaker"
    rate = RATE

    def __init__(self, server: PulseServer) -> None:
        self.server = server

    def play(self, samples: np.ndarray, rate: int = RATE, device: str = "vmic_feed") -> Player:
        """Start playing int16 or float (±1) mono samples into ``device`` (default: the mic feed)."""
        return Player(samples, rate, device)

    def recorder(self, device: str = "vspeaker_mon", rate: int = RATE) -> Recorder:
        """Start recording ``device`` (default: what the virtual speaker plays); ``stop()`` it."""
        return Recorder(device, rate)

    def wait_for_reader(self, source: str = "vmic", timeout: float = 90.0, settle: float = 0.5) -> None:
        """Block until an application records ``source`` (an app's microphone is open), then ``settle``
        seconds more: a fixed sleep either wasted time or, on a cold start, let speech in too early."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sources = {}
            for line in self.server.pactl("list", "short", "sources").splitlines():
                fields = line.split("\t")
                if len(fields) > 1:
                    sources[fields[0]] = fields[1]
            for line in self.server.pactl("list", "short", "source-outputs").splitlines():
                fields = line.split("\t")
                if len(fields) > 1 and sources.get(fields[1]) == source:
                    time.sleep(settle)
                    return
            time.sleep(0.05)
        raise TimeoutError(f"nothing recorded {source!r} within {timeout} s")

    def record(self, seconds: float, device: str = "vspeaker_mon", rate: int = RATE) -> np.ndarray:
        rec = self.recorder(device, rate)
        time.sleep(seconds)
        return rec.stop()

    def round_trip(self, clicks: int = 5) -> float:
        """Sample-exact harness latency: play clicks into the speaker and record its monitor."""
        import sounddevice as sd

        period = RATE // 4
        signal = np.zeros(period * (clicks + 1), np.float32)
        for k in range(1, clicks + 1):
            signal[k * period : k * period + 48] = 0.8
        recording = sd.playrec(
            signal, RATE, channels=1, device=("vspeaker_mon", "vspeaker"), blocksize=RATE // 100,
            latency="low", blocking=True,
        )[:, 0]  # fmt: skip
        delays = []
        for k in range(1, clicks + 1):
            heard = np.nonzero(np.abs(recording[k * period : (k + 1) * period]) > 0.2)[0]
            if len(heard):
                delays.append(heard[0] / RATE)
        if not delays:
            raise RuntimeError("no click came back from the speaker's monitor")
        return float(np.median(delays))

    @contextlib.contextmanager
    def loopback(self, latency_msec: int = 20) -> Iterator[Callable[[int], None]]:
        """Everything played on the speaker also reaches the microphone (acoustic echo). Yields
        ``move(latency_msec)``: the echo path changes delay (the loopback is loaded anew)."""
        modules = [self._load_loopback(latency_msec)]

        def move(latency: int) -> None:
            self.server.pactl("unload-module", modules.pop())
            modules.append(self._load_loopback(latency))

        try:
            yield move
        finally:
            self.server.pactl("unload-module", modules.pop())

    def _load_loopback(self, latency_msec: int) -> str:
        return self.server.pactl(
            "load-module", "module-loopback", "source=vspeaker.monitor", "sink=vmic_feed",
            f"latency_msec={latency_msec}",
        )  # fmt: skip


_shared: dict[str, Any] = {}


@pytest.fixture(scope="session", name="pulse")
def pulse_fixture() -> Iterator[Pulse]:
    """A private PulseAudio server for the whole session (shared if several modules import this)."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    if not _shared:
        saved = {k: os.environ.get(k) for k in ("PULSE_SERVER", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR")}
        server = PulseServer()
        server.start()
        use_server(server)
        _shared.update(server=server, saved=saved, users=0, helper=Pulse(server))
    _shared["users"] += 1
    try:
        yield _shared["helper"]
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            _shared["server"].stop()
            for key, value in _shared["saved"].items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            _shared.clear()
