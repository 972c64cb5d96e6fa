"""The ``voiceloop`` command line: one module per command group, each a thin layer over the library.

``main`` (:mod:`.main`) builds the parser from ``vad``, ``asr`` (transcribe, finetune, export-onnx),
``tts`` (say, voice, export-onnx, random-assets), ``loop`` (run, chat, devices) and ``serve``.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
