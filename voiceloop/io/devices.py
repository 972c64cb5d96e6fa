"""Desktop audio devices (sounddevice/PortAudio): listing and picking, the microphone, the speaker.

Everything here imports sounddevice lazily, so ``import voiceloop`` works without PortAudio; any
missing piece (package, library, sound server, device) is a :class:`DeviceError` that says what
to install or start. The pieces live in ``devices_list``, ``devices_mic`` and ``devices_speaker``.
"""

from .devices_list import DeviceError, DeviceInfo, device_info, import_sounddevice, list_devices, pick_device
from .devices_mic import MicSource
from .devices_speaker import SpeakerSink

__all__ = [
    "DeviceError",
    "DeviceInfo",
    "MicSource",
    "SpeakerSink",
    "device_info",
    "import_sounddevice",
    "list_devices",
    "pick_device",
]
