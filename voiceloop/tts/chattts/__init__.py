"""A ChatTTS-compatible text-to-speech engine written from the documented architecture.

Loads the official ``2Noise/ChatTTS`` asset layout; no code from the ``chattts`` or ``vocos``
packages. One module per model part: assets (files, strict loading), normalize (text front end),
speaker (voices), gpt (text refinement + code generation), decoder and vocos (codes/hidden → mel →
wave), stream_decode (bounded-context chunked decoding), engine (the streaming TtsEngine, with options
and session split out), voice + clone (voices made from a recording: ``spk_smp`` + ``txt_smp``).
"""
