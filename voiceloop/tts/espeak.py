"""An offline TTS engine over the espeak-ng program: no model, no download, no GPU.

Why: espeak-ng is a small system package that speaks a hundred languages far faster than real time.
Its voice is robotic, but it makes the whole loop runnable anywhere, and — because the bundled tiny
ASR (``tests/fixtures/tiny-zh-asr``) was trained on espeak-ng Mandarin — it gives the project an
end-to-end oracle: what this engine says, that model transcribes back.

Each piece of text runs one ``espeak-ng --stdout`` process (never through a shell; the text goes on
stdin, so nothing in it is read as an option). Its WAV header gives the rate, then the PCM is passed
on in small chunks as espeak-ng writes it. Barge-in (``cancel()``) or closing the generator kills the
process at once and reaps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import re
import shutil
import struct
import subprocess
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from ..clock import thread_work
from ..engines import EngineSettings, take_options
from ..errors import UserError
from .base import TtsCapabilities, TtsEngine, TtsSession

log = logging.getLogger(__name__)

#: The voice the tiny ASR fixture was trained on (benchmarks/make_tiny_asr.py). espeak-ng 1.51's plain
#: "cmn" reads the pinyin of multi-character words with English rules, so its Mandarin is unintelligible.
DEFAULT_VOICE = "cmn-latn-pinyin"
INSTALL_HINT = "the espeak TTS engine needs espeak-ng: apt-get install espeak-ng (or brew install espeak-ng)"
#: Voices worth suggesting first when a name is unknown (those espeak-ng has).
_SUGGESTED = ("cmn-latn-pinyin", "cmn", "en-us", "en-gb", "en", "de", "fr", "es", "ja")
#: ChatTTS prosody tags ([uv_break], [laugh], [break_6] ...): espeak-ng would read them out.
_TAG = re.compile(r"\[[a-z_0-9]+\]")
_BREAK_TAG = re.compile(r"\[(?:uv_break|lbreak|break_\d+)\]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_PROBE_TEXT = "a"


class EspeakNotFoundError(UserError):
    """espeak-ng is not installed (or the configured executable is not one)."""


class UnknownVoiceError(UserError):
    """The voice is not one espeak-ng offers."""


class EspeakError(RuntimeError):
    """espeak-ng failed or wrote something that is not 16-bit mono PCM WAV."""


@dataclass(frozen=True)
class EspeakOptions:
    """espeak-ng's knobs; every default is espeak-ng's own except the Mandarin voice."""

    voice: str = DEFAULT_VOICE  # used when from_pretrained gets no model name
    speed: int = 175  # words per minute (-s), 80..450
    pitch: int = 50  # 0..99 (-p)
    gap: int = 0  # extra pause between words, in 10 ms units at the default speed (-g)
    amplitude: int = 100  # 0..200 (-a)
    #: audio per piece is cut here (the process killed): a runaway text cannot flood the output
    max_seconds: float = 60.0
    chunk_ms: int = 60  # size of the chunks handed on (the last of a piece may be shorter)
    executable: str | None = None  # path or name of espeak-ng; None: found on PATH

    def __post_init__(self) -> None:
        ranges = (("speed", 80, 450), ("pitch", 0, 99), ("gap", 0, 1000), ("amplitude", 0, 200))
        for name, low, high in ranges:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"espeak {name} must be an integer in {low}..{high}, got {value!r}")
        if not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds!r}")
        if not 10 <= self.chunk_ms <= 1000:
            raise ValueError(f"chunk_ms must be in 10..1000, got {self.chunk_ms!r}")


def find_espeak(executable: str | None = None) -> str:
    """The espeak-ng program's path, or an error that says how to install it."""
    found = shutil.which(executable or "espeak-ng")
    if found is None:
        where = f" ({executable!r} is not an executable)" if executable else " (not found on PATH)"
        raise EspeakNotFoundError(INSTALL_HINT + where)
    return found


def prepare_text(text: str) -> str:
    """What espeak-ng should read: tags removed (breaks become a pause), "" if nothing is speakable."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = _TAG.sub("", _BREAK_TAG.sub(", ", text))
    text = _CONTROL.sub(" ", text).strip(" \t\n,")  # a pause at either end is no pause
    return text if any(ch.isalnum() for ch in text) else ""


def parse_wav_header(data: bytes | bytearray) -> tuple[int, int] | None:
    """``(sample rate, offset of the PCM)`` of a WAV stream's start; None while it is incomplete.

    espeak-ng streams, so its size fields are placeholders and are ignored.
    """
    if len(data) < 12:
        return None
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise EspeakError(f"espeak-ng did not write a WAV stream (starts with {bytes(data[:12])!r})")
    at, rate = 12, None
    while len(data) >= at + 8:
        kind, size = data[at : at + 4], struct.unpack_from("<I", data, at + 4)[0]
        if kind == b"data":
            if rate is None:
                raise EspeakError("espeak-ng's WAV stream has no format chunk before its data")
            return rate, at + 8
        if len(data) < at + 8 + size:
            return None
        if kind == b"fmt ":
            fmt, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, at + 8)
            if (fmt, channels, bits) != (1, 1, 16):
                raise EspeakError(f"espeak-ng wrote format {fmt}, {channels} channel(s), {bits} bits")
        at += 8 + size + (size & 1)
    return None


class VoiceCatalogue:
    """The voice names espeak-ng accepts with ``-v``: languages, their aliases and voice files (any
    case), optionally with a ``+variant`` (its file's exact name, checked here: espeak-ng silently
    ignores an unknown one)."""

    def __init__(self, languages: list[str], names: set[str], variants: set[str]) -> None:
        self.languages = languages
        self._names = {name.lower() for name in names} | {name.lower() for name in languages}
        self._variants = variants

    @classmethod
    def load(cls, executable: str) -> VoiceCatalogue:
        languages, names = _parse_voices(_run_list(executable, "--voices"))
        _, variant_files = _parse_voices(_run_list(executable, "--voices=variant"))
        return cls(languages, names, {name for name in variant_files if "/" not in name})

    def check(self, voice: str) -> str:
        """``voice`` if espeak-ng has it, else an :class:`UnknownVoiceError` naming a few it has."""
        if not isinstance(voice, str) or not voice.strip():
            raise UnknownVoiceError(f"an espeak voice must be a non-empty name, got {voice!r}")
        base, plus, variant = voice.strip().partition("+")
        if base.lower() in self._names and (not plus or variant in self._variants):
            return voice.strip()
        if base.lower() in self._names:
            some = difflib.get_close_matches(variant, sorted(self._variants), n=3) or sorted(self._variants)
            raise UnknownVoiceError(
                f"espeak-ng has no voice variant {variant!r}; try one of {', '.join(some[:8])} "
                "(all: espeak-ng --voices=variant)"
            )
        some = difflib.get_close_matches(base.lower(), sorted(self._names), n=3)
        some += [v for v in _SUGGESTED if v in self._names and v not in some]
        some += [v for v in self.languages if v not in some]
        raise UnknownVoiceError(
            f"espeak-ng has no voice {base!r}; try one of {', '.join(some[:8])} (all: espeak-ng --voices)"
        )


def _run_list(executable: str, flag: str) -> str:
    try:
        done = subprocess.run([executable, flag], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        raise EspeakNotFoundError(f"{INSTALL_HINT} ({executable!r} cannot run: {exc})") from exc
    if done.returncode != 0:
        raise EspeakError(f"espeak-ng {flag} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _parse_voices(listing: str) -> tuple[list[str], set[str]]:
    """An ``espeak-ng --voices`` table → (languages, the other names -v takes: aliases, voice files)."""
    languages: list[str] = []
    names: set[str] = set()
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 5:
            continue
        languages.append(fields[1])
        names |= {fields[4], fields[4].rsplit("/", 1)[-1]}  # sit/cmn-Latn-pinyin, cmn-Latn-pinyin
        names |= set(re.findall(r"\(([^\s()]+) \d+\)", " ".join(fields[5:])))  # (zh-cmn 5)(zh 5)
    return languages, names


class EspeakTts(TtsEngine):
    """espeak-ng as a streaming engine; sessions are cheap (one process per piece)."""

    def __init__(
        self, executable: str, voice: str, options: EspeakOptions, catalogue: VoiceCatalogue
    ) -> None:
        self.executable = executable
        self.voice = voice
        self.options = options
        self.catalogue = catalogue
        self._sessions: weakref.WeakSet[EspeakSession] = weakref.WeakSet()
        self._closed = False
        self.warm_up()  # the rate comes from espeak-ng's own header, not an assumption

    @classmethod
    def from_pretrained(cls, model: str | None = None, options: EspeakOptions | None = None) -> EspeakTts:
        """``model`` is the espeak voice ("cmn-latn-pinyin", "en-us", ...; None: ``options.voice``)."""
        options = options or EspeakOptions()
        executable = find_espeak(options.executable)
        catalogue = VoiceCatalogue.load(executable)
        return cls(executable, catalogue.check(model or options.voice), options, catalogue)

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def capabilities(self) -> TtsCapabilities:
        return TtsCapabilities(streaming=True, voices=True, seed_voices=False)

    def voices(self) -> list[str]:
        """The language voices espeak-ng offers (each also takes a ``+variant``)."""
        return list(self.catalogue.languages)

    def command(self, voice: str) -> list[str]:
        """The argv for one piece: text from stdin (UTF-8), WAV to stdout."""
        o = self.options
        args = ["-v", voice, "-s", str(o.speed), "-p", str(o.pitch), "-g", str(o.gap), "-a", str(o.amplitude)]
        return [self.executable, *args, "-b", "1", "--stdout", "--stdin"]

    def warm_up(self) -> None:
        """One short synthesis (blocking): checks the program and voice work and reads the rate."""
        try:
            done = subprocess.run(
                self.command(self.voice), input=_PROBE_TEXT.encode(), capture_output=True, timeout=30
            )
        except OSError as exc:
            raise EspeakNotFoundError(f"{INSTALL_HINT} ({self.executable!r} cannot run: {exc})") from exc
        header = parse_wav_header(done.stdout) if done.returncode == 0 else None
        if header is None:
            reason = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
            raise EspeakError(f"espeak-ng could not speak with voice {self.voice!r}: {reason}")
        self.sample_rate = header[0]

    def session(self, voice: str | None = None) -> EspeakSession:
        if self._closed:
            raise RuntimeError("the espeak engine is closed")
        session = EspeakSession(self, self.voice if voice is None else self.catalogue.check(voice))
        self._sessions.add(session)
        return session

    def voice_names(self) -> list[str]:
        return []  # no saved voices: every espeak voice is named by voices()

    def close(self) -> None:
        """Cancel every synthesis still running (killing its process); no new sessions after this."""
        self._closed = True
        for session in list(self._sessions):
            session.cancel()


class EspeakSession(TtsSession):
    """One conversation's voice; each piece is one espeak-ng process, killed on cancel."""

    def __init__(self, engine: EspeakTts, voice: str) -> None:
        self.engine = engine
        self.voice = voice
        self._running: set[asyncio.subprocess.Process] = set()
        self._epoch = 0  # bumped by cancel(): a piece started before then stops
        self._closed = False

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        spoken = prepare_text(text)
        if self._closed or self.engine._closed:
            raise RuntimeError("the espeak session is closed")
        if not spoken:
            return
        epoch = self._epoch
        try:
            process = await asyncio.create_subprocess_exec(
                *self.engine.command(self.voice),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:  # removed since load
            raise EspeakNotFoundError(f"{INSTALL_HINT} ({exc})") from exc
        self._running.add(process)
        try:
            if epoch != self._epoch:  # cancelled while the process started
                return
            async for chunk in self._stream(process, spoken, epoch):
                yield chunk
        finally:
            self._running.discard(process)
            _kill(process)
            with thread_work():  # reaping is real time, not idle time, on a skip-idle clock
                await process.wait()

    async def _stream(
        self, process: asyncio.subprocess.Process, text: str, epoch: int
    ) -> AsyncIterator[np.ndarray]:
        assert process.stdin is not None and process.stdout is not None
        try:  # espeak-ng reads all of stdin before it speaks, so this cannot deadlock
            process.stdin.write(text.encode())
            await process.stdin.drain()
            process.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # exited early: its status and stderr say why, below
        buffer, rate, budget, step = bytearray(), 0, 0, 2
        while True:
            with thread_work():  # espeak-ng computes meanwhile: a skip-idle clock must wait for it
                data = await process.stdout.read(1 << 16)
            if epoch != self._epoch:
                return
            if not data:
                break
            buffer += data
            if not rate:
                header = parse_wav_header(buffer)
                if header is None:
                    continue
                rate, offset = header
                del buffer[:offset]
                budget = round(self.engine.options.max_seconds * rate)
                step = 2 * max(1, round(rate * self.engine.options.chunk_ms / 1000))
            while len(buffer) >= step:
                chunk = _pcm(buffer, step, budget)
                budget -= len(chunk)
                yield chunk
                if epoch != self._epoch:
                    return
                if budget <= 0:
                    log.warning("espeak piece cut at %.0f s: %.40r...", self.engine.options.max_seconds, text)
                    return
        if rate and len(buffer) >= 2:
            yield _pcm(buffer, len(buffer) & ~1, budget)
        await self._check_exit(process, has_header=bool(rate))

    async def _check_exit(self, process: asyncio.subprocess.Process, has_header: bool) -> None:
        with thread_work():
            status = await process.wait()
        if status != 0 or not has_header:
            assert process.stderr is not None
            reason = (await process.stderr.read()).decode(errors="replace").strip()
            reason = reason or f"exit status {status}"
            raise EspeakError(f"espeak-ng failed with voice {self.voice!r}: {reason}")

    @property
    def processes(self) -> tuple[asyncio.subprocess.Process, ...]:
        """The espeak-ng processes synthesizing for this session now (for monitoring and tests)."""
        return tuple(self._running)

    def cancel(self) -> None:
        """Barge-in: kill the pieces in flight now (their generators then end without more audio)."""
        self._epoch += 1
        for process in list(self._running):
            _kill(process)

    async def aclose(self) -> None:
        self._closed = True
        self.cancel()
        for process in list(self._running):
            with thread_work():
                await process.wait()


def _pcm(buffer: bytearray, size: int, budget: int) -> np.ndarray:
    """The first ``size`` bytes of ``buffer`` as int16 samples (at most ``budget``), removed from it."""
    chunk = np.frombuffer(bytes(buffer[:size]), dtype="<i2").astype(np.int16)[: max(budget, 0)]
    del buffer[:size]
    return chunk


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped
            process.kill()


def load(model: str | None, settings: EngineSettings) -> EspeakTts:
    """The plugin entry (``--tts espeak[:VOICE]``): named options are :class:`EspeakOptions` fields."""
    return EspeakTts.from_pretrained(
        model, take_options("espeak", settings.options, EspeakOptions, EspeakOptions)
    )
