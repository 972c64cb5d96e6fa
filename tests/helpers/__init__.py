"""Test helpers shared by the test modules and benchmarks: fake engines and stages on a virtual clock
(``fakes``), espeak-ng speech (``speech``), a private PulseAudio server (``pulse``), and tiny random
models written in the official file layouts (``asr_fixtures``, ``chattts_fixtures``)."""
