"""The front door: one voice agent, your handler between a listening engine and a speaking one.

    agent = voiceloop.Agent(reply, asr="tests/fixtures/tiny-zh-asr", tts="espeak")
    agent.run_file("hello.wav", "reply.wav")   # a recording in, the bot's side out
    agent.chat()                               # the desktop microphone and speaker
    agent.serve(port=8080)                     # a WebRTC bot for browsers
    await agent.session(source, sink)          # your own transport

The engines load once, on first use (or :meth:`Agent.load`), and serve every conversation the
agent holds; the CLI's ``run``, ``chat`` and ``serve`` are this class behind flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .allocator import frozen_heap
from .clock import run
from .errors import UserError
from .loop import Engines, LoopOptions, build_pipeline, load_engines, load_handler
from .pipeline import Pipeline, Stage
from .timeline import Metrics
from .vad import VadOptions

#: With echo handling on speakers: user speech needed before it cuts the bot off. A leak of the bot's
#: own voice past the canceller is short; 300 ms rejects it (benchmarks/echo_loopback.py measures the
#: rate of what still leaks).
SPEAKER_BARGE_IN_MS = 300

PipelineHook = Callable[[Pipeline], Any]


class Agent:
    """A handler plus engines. ``handler``: a function (text → text, a generator of text, or async;
    see :mod:`voiceloop.dialogue`), a ``"module:function"`` / ``"file.py:function"`` spec, or None
    (echo the user). ``asr`` / ``tts``: ``ENGINE:MODEL`` or a model of the default engine
    (:mod:`voiceloop.engines`); ``vad``: :class:`VadOptions`; ``echo``: how :meth:`chat` handles the
    bot's voice reaching the microphone ("auto" | "aec" | "gate" | "aec+gate" | "off");
    ``options``: every other setting (:class:`LoopOptions`; ``asr``/``tts``/``vad`` override it)."""

    def __init__(
        self,
        handler: Callable[..., Any] | str | None = None,
        *,
        asr: str | None = None,
        tts: str | None = None,
        vad: VadOptions | None = None,
        echo: str = "auto",
        options: LoopOptions | None = None,
    ) -> None:
        from .aec import resolve_mode

        given = {k: v for k, v in (("asr", asr), ("tts", tts), ("vad", vad)) if v is not None}
        self.options = replace(options or LoopOptions(), **given)  # validated again
        self.handler = handler if callable(handler) else load_handler(handler)
        self.echo = echo if echo == "off" else resolve_mode(echo)
        self._engines: Engines | None = None

    # -- engines ---------------------------------------------------------------------------
    @property
    def engines(self) -> Engines:
        """The loaded engines (loaded now if they are not yet)."""
        if self._engines is None:
            self._engines = load_engines(self.options)
        return self._engines

    def load(self) -> Agent:
        """Load the engines now (downloads on first use of a hub id) rather than at the first call."""
        _ = self.engines
        return self

    def close(self) -> None:
        """Release the engines' threads and processes (the agent reloads them if used again)."""
        engines, self._engines = self._engines, None
        if engines is not None:
            engines.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- conversations ---------------------------------------------------------------------
    def run_file(
        self,
        input: str | Path,
        output: str | Path,
        *,
        realtime: bool = False,
        clock: str | None = None,
        tail_s: float = 3.0,
        metrics_out: str | Path | None = None,
        on_pipeline: PipelineHook | None = None,
    ) -> dict[str, Any]:
        """The whole loop on a recording: ``output`` gets the bot's side, time-aligned with the input.
        The input is paced like a microphone; unless ``realtime``, idle waits are skipped (compute
        still takes real time, so the latencies are honest). ``clock="virtual"``: compute takes no
        time either, so the conversation is the same on any machine, however busy (tests, regression
        runs of a handler; latencies then hold only the waits). ``tail_s`` of silence is appended so
        the last utterance ends and its reply plays. Returns the turn summary (p50/p95 per stage)."""
        from .io.files import FileSource, WavSink

        if not Path(input).is_file():
            raise UserError(f"input file {str(input)!r} does not exist")
        source = FileSource(str(input), pace=True, tail_silence_s=tail_s)
        sink = WavSink(str(output), self.engines.tts.sample_rate)
        if clock is None:
            clock = "real" if realtime else "fast"
        if clock not in ("real", "fast", "virtual"):
            raise UserError(f"clock must be real, fast or virtual, got {clock!r}")
        return self._run(source, sink, metrics_out, on_pipeline, clock=clock)

    def chat(
        self,
        *,
        input_device: str | int | None = None,
        output_device: str | int | None = None,
        duration: float | None = None,
        metrics_out: str | Path | None = None,
        on_pipeline: PipelineHook | None = None,
        speaker_barge_in_ms: int | None = SPEAKER_BARGE_IN_MS,
    ) -> dict[str, Any]:
        """Talk to it on the desktop's microphone and speaker (device index or name substring; None:
        the system's) until Ctrl-C or ``duration`` seconds. Returns the turn summary. With echo
        handling, a barge-in needs ``speaker_barge_in_ms`` of speech (None: what the options say)."""
        from .aec import EchoReference, EchoStage
        from .io.devices import MicSource, SpeakerSink, pick_device

        if duration is not None and not duration > 0:
            raise UserError("the chat duration must be positive")
        # devices first: a missing microphone should not cost a model download
        mic, speaker = pick_device(input_device, "input"), pick_device(output_device, "output")
        source = MicSource(mic, max_seconds=duration)
        sink = SpeakerSink(speaker, sample_rate=self.engines.tts.sample_rate)
        echo = None if self.echo == "off" else EchoStage(EchoReference(), self.echo)
        options = self.options
        if echo is not None and speaker_barge_in_ms is not None:
            barge_in = replace(options.barge_in, min_speech_ms=speaker_barge_in_ms)
            options = replace(options, barge_in=barge_in)
        return self._run(source, sink, metrics_out, on_pipeline, clock="real", echo=echo, options=options)

    def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        server: Any = None,
        observer: Any = None,
        on_start: Callable[[Any], Awaitable[Any] | Any] | None = None,
        cluster: Any = None,
        ray_address: str = "auto",
    ) -> None:
        """The WebRTC voice bot (one pipeline per browser peer, these engines shared) until Ctrl-C or
        SIGTERM. ``server``: a :class:`voiceloop.serve.ServerOptions` (host/port then come from it);
        ``observer``: sessions' events (a ``ServeLog``); ``on_start(server)`` runs once it listens.

        ``cluster``: a :class:`voiceloop.cluster.ClusterOptions` to place calls on the workers of the
        Ray cluster at ``ray_address`` instead (this process is then the gateway: it loads no model).
        SIGTERM then drains: no new calls, and it exits once the calls ended (or their grace ran out)."""
        from .serve import ServerOptions, VoiceServer

        options = server if server is not None else ServerOptions(host=host, port=port)

        async def main() -> None:
            calls = None
            if cluster is not None:
                from .cluster import ClusterCalls, WorkerSpec, connect

                connect(ray_address, cluster.namespace)
                spec = WorkerSpec(self.options, self.handler, server=options)
                calls = ClusterCalls(spec, cluster)
                await calls.start()
                voice_server = VoiceServer(None, None, self.options, options, observer=observer, calls=calls)
            else:
                engines, handler = self.engines, self.handler
                voice_server = VoiceServer(engines, handler, self.options, options, observer=observer)
            await voice_server.start()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows / a thread
                loop.add_signal_handler(signal.SIGTERM, stop.set)
            try:
                if on_start is not None and asyncio.iscoroutine(started := on_start(voice_server)):
                    await started
                await stop.wait()
                if calls is not None:  # SIGTERM: let the calls finish
                    await calls.drain_all()
            finally:
                await voice_server.stop()

        with frozen_heap(), contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server ends
            asyncio.run(main())

    def voice_from_audio(self, samples: Any, rate: int, transcript: str | None = None) -> Any:
        """A TTS voice from a recording (ChatTTS: the reference's ``spk_smp`` + ``txt_smp``): int16 or
        float samples at any rate, 5-10 s of one speaker. Without ``transcript``, this agent's ASR
        engine transcribes it (the result's ``transcript_source`` says "asr"). Returns a
        ``ClonedVoice``: use its ``voice`` as ``session(voice=...)``/``--voice`` or save it. Clone a
        voice only with its speaker's consent; the ChatTTS weights are CC BY-NC 4.0 (docs/tts.md)."""
        import concurrent.futures

        import numpy as np

        from .asr.recording import transcribe_recording

        tts, asr = self.engines.tts, self.engines.asr
        clone = getattr(tts, "voice_from_audio", None)
        if clone is None:
            raise UserError(
                f"the {type(tts).__name__} TTS engine cannot make voices from recordings (ChatTTS can)"
            )

        def transcribe(wave: np.ndarray, wave_rate: int) -> str:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:  # its own loop: callable from async code
                return pool.submit(asyncio.run, transcribe_recording(asr, wave, wave_rate)).result()

        return clone(samples, rate, transcript, transcribe=transcribe)

    async def session(
        self, source: Stage, sink: Any, *, metrics: Metrics | None = None, echo: Any = None
    ) -> Metrics:
        """One conversation on your own transport, in the running event loop: ``source`` is a live
        Stage emitting 16 kHz frames (see :mod:`voiceloop.io`), ``sink`` an
        :class:`~voiceloop.io.output.AudioSink`. Returns its metrics when the source ends."""
        engines, handler = self.engines, self.handler
        pipeline = build_pipeline(source, sink, engines, handler, self.options, metrics=metrics, echo=echo)
        return await pipeline.run()

    def _run(
        self,
        source: Stage,
        sink: Any,
        metrics_out: str | Path | None,
        on_pipeline: PipelineHook | None,
        *,
        clock: str,
        echo: Any = None,
        options: LoopOptions | None = None,
    ) -> dict[str, Any]:
        metrics = Metrics.to_file(str(metrics_out)) if metrics_out else Metrics()
        options = options or self.options
        engines, handler = self.engines, self.handler
        pipeline = build_pipeline(source, sink, engines, handler, options, metrics=metrics, echo=echo)
        hook = on_pipeline(pipeline) if on_pipeline is not None else None
        held = hook if isinstance(hook, contextlib.AbstractContextManager) else contextlib.nullcontext()
        try:
            with held, frozen_heap():
                run(pipeline.run(), clock=clock)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a live conversation ends: its turns still count
        finally:
            summary = metrics.close()
        return summary
