"""Sound devices through sounddevice/PortAudio: import it lazily, list devices, pick one.

``import voiceloop`` never needs PortAudio: sounddevice is imported inside these functions, and
every way of having no usable audio (no sounddevice, no PortAudio library, no sound server or
card, an unknown device name) becomes a :class:`DeviceError` saying what is missing.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from ..errors import UserError
from .alsa_log import route_alsa_errors

Kind = Literal["input", "output"]


class DeviceError(UserError):
    """A sound device problem the user can fix: nothing installed, no server, a bad name, device lost."""


@dataclass
class DeviceInfo:
    """One PortAudio device (a plain dataclass so ``vars(info)`` serializes to JSON)."""

    index: int
    name: str
    inputs: int
    outputs: int
    default_rate: float
    is_default_in: bool = False
    is_default_out: bool = False
    hostapi: str = ""

    def channels(self, kind: Kind) -> int:
        return self.inputs if kind == "input" else self.outputs

    def describe(self) -> str:
        marks = ("<" if self.is_default_in else " ") + (">" if self.is_default_out else " ")
        return (
            f"{marks}{self.index:3d} {self.name} ({self.inputs} in, {self.outputs} out, "
            f"{self.default_rate:.0f} Hz)"
        )


def import_sounddevice() -> ModuleType:
    """``import sounddevice``, turning a missing package or PortAudio library into a DeviceError."""
    if "sounddevice" not in sys.modules:  # PortAudio probes ALSA when sounddevice is first imported
        route_alsa_errors()
    try:
        import sounddevice
    except ImportError as exc:
        raise DeviceError(
            "sounddevice is not installed; desktop audio needs it: pip install 'voiceloop[desktop]'"
        ) from exc
    except OSError as exc:  # raised at import when libportaudio is missing
        raise DeviceError(
            f"the PortAudio library is missing ({exc}); install it "
            "(Debian/Ubuntu: apt-get install libportaudio2, Fedora: dnf install portaudio, "
            "macOS: brew install portaudio)"
        ) from exc
    return sounddevice


def no_devices_message() -> str:
    """Why PortAudio may see nothing, with the environment that decides it."""
    hints = []
    for var in ("PULSE_SERVER", "XDG_RUNTIME_DIR"):
        if os.environ.get(var):
            hints.append(f"{var}={os.environ[var]}")
    where = f" ({', '.join(hints)})" if hints else ""
    return (
        "no audio devices found: PortAudio sees no sound card and no sound server"
        f"{where}; start PulseAudio/PipeWire (or check PULSE_SERVER), or plug in a device"
    )


def list_devices(*, rescan: bool = False) -> list[DeviceInfo]:
    """Every device PortAudio knows, with the default input/output marked; none is a DeviceError.

    PortAudio scans devices once per process (when sounddevice is imported); ``rescan=True``
    re-initializes it to see a sound server started since — only safe while no stream is open.
    """
    sd = import_sounddevice()
    if rescan:
        sd._terminate()
        sd._initialize()
    try:
        raw = sd.query_devices()
        default_in, default_out = _defaults(sd)
        hostapis = [api["name"] for api in sd.query_hostapis()]
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot list audio devices: {exc}") from exc
    if len(raw) == 0:
        raise DeviceError(no_devices_message())
    devices = []
    for i, dev in enumerate(raw):
        api = dev.get("hostapi", -1)
        devices.append(
            DeviceInfo(
                index=i,
                name=str(dev["name"]),
                inputs=int(dev["max_input_channels"]),
                outputs=int(dev["max_output_channels"]),
                default_rate=float(dev["default_samplerate"]),
                is_default_in=i == default_in,
                is_default_out=i == default_out,
                hostapi=hostapis[api] if 0 <= api < len(hostapis) else "",
            )
        )
    return devices


def _defaults(sd: ModuleType) -> tuple[int, int]:
    pair: Any = sd.default.device
    try:
        return int(pair[0]), int(pair[1])
    except (TypeError, ValueError, IndexError):  # a name was assigned to sd.default.device
        return -1, -1


def pick_device(spec: str | int | None, kind: Kind) -> int:
    """Resolve a device for ``kind`` (input/output) to its PortAudio index.

    ``spec``: None (the default device), an index (int or digit string), or a case-insensitive
    name; an exact name wins over substrings, and a substring must match one device only.
    """
    if kind not in ("input", "output"):
        raise ValueError(f"kind must be 'input' or 'output', got {kind!r}")
    if isinstance(spec, bool) or not (spec is None or isinstance(spec, (int, str))):
        raise DeviceError(f"device must be an index or a name, got {type(spec).__name__} {spec!r}")
    devices = list_devices()
    capable = [d for d in devices if d.channels(kind) > 0]
    if not capable:
        raise DeviceError(f"no {kind} devices found{_menu(devices)}")
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "default")):
        chosen = [d for d in capable if (d.is_default_in if kind == "input" else d.is_default_out)]
        if not chosen:
            raise DeviceError(f"there is no default {kind} device; choose one with --device{_menu(capable)}")
        return chosen[0].index
    if isinstance(spec, int) or spec.strip().isdigit():
        index = int(spec)
        match = [d for d in devices if d.index == index]
        if not match:
            raise DeviceError(f"no audio device with index {index}{_menu(capable)}")
        if match[0].channels(kind) == 0:
            raise DeviceError(f"device {index} ({match[0].name}) has no {kind} channels{_menu(capable)}")
        return index
    wanted = spec.strip().lower()
    exact = [d for d in capable if d.name.lower() == wanted]
    if len(exact) == 1:
        return exact[0].index
    partial = exact or [d for d in capable if wanted in d.name.lower()]
    if len(partial) == 1:
        return partial[0].index
    if not partial:
        raise DeviceError(f"no {kind} device matches {spec!r}{_menu(capable)}")
    raise DeviceError(f"{kind} device {spec!r} is ambiguous: use an index or a longer name{_menu(partial)}")


def _menu(devices: list[DeviceInfo]) -> str:
    """The device list appended to an error message (the CLI prints the error as is)."""
    return "; devices: " + "; ".join(d.describe().strip() for d in devices) if devices else ""


def device_info(index: int) -> DeviceInfo:
    """The :class:`DeviceInfo` of one index (after :func:`pick_device`)."""
    for dev in list_devices():
        if dev.index == index:
            return dev
    raise DeviceError(f"no audio device with index {index}")
