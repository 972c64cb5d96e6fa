"""Audio in and out: files, desktop devices, WebRTC — all adapted to the canonical frames."""

from .files import FileSource, WavSink, read_audio
from .output import AudioSink, OutputStage, PacedSink

__all__ = ["AudioSink", "FileSource", "OutputStage", "PacedSink", "WavSink", "read_audio"]
