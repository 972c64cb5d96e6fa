"""Dialogue handlers: a handler is just a function.

Any of these works as a handler (``ctx`` is optional — declare a second parameter to get it):

    def reply(text): return "..."                    # runs in a worker thread
    def reply(text, ctx): yield "piece"; yield ...   # sync generator, also in a thread
    async def reply(text): return "..."
    async def reply(text, ctx): yield "piece"        # e.g. a streaming LLM

A handler that raises, yields something that is not text, or stays silent past a timeout costs
that turn only: the stage reports a :class:`TurnError` and the session goes on. Sync handlers run
in daemon threads, so even one that never returns cannot block shutdown; it is abandoned and
told to stop through ``ctx.cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .clock import ThreadWork, now
from .frames import FinalTranscript, Frame, Interruption, PartialTranscript, ReplyEnd, ReplyText, TurnError
from .pipeline import Stage
from .text import SpeakableSplitter, SplitOptions

log = logging.getLogger("voiceloop")

Handler = Callable[..., Any]

#: turns the bot starts itself (:meth:`DialogueStage.say`) are numbered from here, far above the VAD's
#: user turns (1, 2, 3, ...), so the two never share a timeline
SAY_TURN_BASE = 1_000_000


@dataclass(slots=True)
class SayRequest(Frame):
    """Text the bot should speak as its own turn (queued by :meth:`DialogueStage.say`).

    Flushed by a barge-in like any other pending bot output.
    """

    survives_interrupt: ClassVar[bool] = False
    turn_id: int
    text: str


@dataclass
class Message:
    """One history entry; ``role`` is "user" or "assistant"."""

    role: str
    text: str
    turn_id: int = -1


@dataclass
class TurnContext:
    """What a handler may want beside the text: turn id, history and a cancellation signal."""

    turn_id: int
    transcript: FinalTranscript | PartialTranscript
    history: list[Message]
    cancel_event: threading.Event = field(default_factory=threading.Event)

    @property
    def cancelled(self) -> bool:
        """True once the turn was interrupted or timed out: stop generating."""
        return self.cancel_event.is_set()


@dataclass
class DialogueOptions:
    """Handler limits. Defaults allow a slow local LLM but not a hung one.

    ``first_text_timeout_s``: longest wait for the first text of a reply (15 s).
    ``idle_timeout_s``: longest gap between two pieces of a streamed reply (15 s).
    ``max_history``: messages kept in ``ctx.history`` (oldest dropped first; 100).
    ``split``: how reply text is cut into speakable pieces for TTS.
    """

    first_text_timeout_s: float = 15.0
    idle_timeout_s: float = 15.0
    max_history: int = 100
    split: SplitOptions | None = None


def echo(text: str) -> str:
    """The default handler: say back what was heard."""
    return text


def _wants_context(fn: Handler) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


def _kind(fn: Handler) -> str:
    """ "asyncgen", "coroutine" or "sync" — also for callable objects with an async ``__call__``."""
    for target in (fn, type(fn).__call__ if not inspect.isroutine(fn) else None):
        if inspect.isasyncgenfunction(target):
            return "asyncgen"
        if inspect.iscoroutinefunction(target):
            return "coroutine"
    return "sync"


async def call_handler(fn: Handler, text: str, ctx: TurnContext) -> AsyncIterator[str]:
    """Run any kind of handler and yield its text as it comes."""
    args = (text, ctx) if _wants_context(fn) else (text,)
    kind = _kind(fn)
    if kind == "asyncgen":
        async with aclosing(fn(*args)) as pieces:
            async for piece in pieces:
                yield piece
    elif kind == "coroutine":
        result = await fn(*args)
        if result is not None:
            yield result
    else:
        async for piece in _in_thread(fn, args, ctx):
            yield piece


async def _in_thread(fn: Handler, args: tuple[Any, ...], ctx: TurnContext) -> AsyncIterator[str]:
    """Run a sync function or generator in a daemon thread, streaming what it produces."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    work = ThreadWork()

    def post(kind: str, value: Any) -> None:
        if not ctx.cancelled:
            with contextlib.suppress(RuntimeError):  # the loop is gone; nobody is waiting
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

    def body() -> None:
        try:
            result = fn(*args)
            if inspect.isgenerator(result):
                for piece in result:
                    if ctx.cancelled:
                        result.close()
                        break
                    post("piece", piece)
            elif result is not None:
                post("piece", result)
            post("done", None)
        except BaseException as exc:
            post("error", exc)
        finally:
            work.done()

    threading.Thread(target=body, name="voiceloop-handler", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        ctx.cancel_event.set()
        work.done()  # an abandoned thread must not hold a fast-mode clock


class DialogueStage(Stage):
    """Calls the handler for each final transcript and emits speakable :class:`ReplyText` pieces."""

    name = "dialogue"
    interruptible = True

    def __init__(
        self,
        handler: Handler = echo,
        *,
        on_partial: Handler | None = None,
        options: DialogueOptions | None = None,
    ) -> None:
        super().__init__()
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        self.handler = handler
        self.on_partial = on_partial
        self.options = options or DialogueOptions()
        self.history: list[Message] = []
        self._ctx: TurnContext | None = None
        self._said = 0  # turns started by say()

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, FinalTranscript):
            await self._reply(frame)
        elif isinstance(frame, SayRequest):
            await self._say(frame)
        elif isinstance(frame, PartialTranscript):
            if self.on_partial is not None:
                await self._partial(frame)
        else:
            await self.forward(frame)

    async def _partial(self, partial: PartialTranscript) -> None:
        ctx = TurnContext(partial.turn_id, partial, list(self.history))
        try:
            async with asyncio.timeout(self.options.idle_timeout_s):
                async with aclosing(call_handler(self.on_partial, partial.text, ctx)) as out:  # type: ignore[arg-type]
                    async for _ in out:
                        pass
        except Exception as exc:
            log.warning("on_partial hook failed: %s: %s", type(exc).__name__, exc)
            self.metrics.count("partial_hook_errors")

    def say(self, text: str) -> int:
        """Speak ``text`` as a bot turn of its own; returns its turn id.

        Why here: the text then takes exactly the path of a handler reply (speakable pieces, TTS,
        output, history, timeline, barge-in), queued behind whatever the dialogue is doing. Raises
        ``ValueError`` for empty text and ``RuntimeError`` when the stage is not running or its queue
        is full (the caller reports it; nothing waits).
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("nothing to say: the text is empty")
        if self.inbox is None or self.pipeline is None or self._task is None or self._task.done():
            raise RuntimeError("the dialogue stage is not running")
        inbox = self.inbox
        if len(inbox) >= inbox.maxsize:
            raise RuntimeError("the dialogue queue is full; try again")
        self._said += 1
        turn_id = SAY_TURN_BASE + self._said
        inbox.put_nowait(SayRequest(turn_id, text))
        return turn_id

    async def _say(self, request: SayRequest) -> None:
        turn_id = request.turn_id
        ctx = self._ctx = TurnContext(turn_id, FinalTranscript(request.text, turn_id=turn_id), [])
        self.pipeline.reply_turn = turn_id  # type: ignore[union-attr]

        async def text() -> AsyncGenerator[str, None]:
            yield request.text

        await self._speak(turn_id, ctx, text())

    async def _reply(self, final: FinalTranscript) -> None:
        turn_id, pipeline = final.turn_id, self.pipeline
        assert pipeline is not None
        if final.preemptive and not pipeline.holding(final.preemptive):
            return  # retracted before it got here: the user went on speaking
        if not final.text.strip():
            self.metrics.count("empty_transcripts")
            pipeline.finish_turn(turn_id)
            return
        ctx = self._ctx = TurnContext(turn_id, final, list(self.history))
        self._remember(Message("user", final.text, turn_id))
        pipeline.reply_turn = turn_id
        await self._speak(turn_id, ctx, call_handler(self.handler, final.text, ctx))

    async def _speak(self, turn_id: int, ctx: TurnContext, source: AsyncGenerator[str, None]) -> None:
        """Stream reply text into speakable pieces, with the handler limits; always ends the reply."""
        splitter = SpeakableSplitter(self.options.split)
        reply: list[str] = []
        try:
            async with aclosing(source) as deltas:
                while True:
                    limit = self.options.idle_timeout_s if reply else self.options.first_text_timeout_s
                    try:
                        async with asyncio.timeout(limit):
                            delta = await anext(deltas)
                    except StopAsyncIteration:
                        break
                    if not isinstance(delta, str):
                        raise TypeError(f"handler produced {type(delta).__name__}, expected str")
                    if not delta:
                        continue
                    self.metrics.stamp(turn_id, "handler_first_text", now())
                    reply.append(delta)
                    for piece in splitter.push(delta):
                        await self.emit(ReplyText(turn_id, piece))
            for piece in splitter.flush():
                await self.emit(ReplyText(turn_id, piece))
        except TimeoutError:
            await self._fail(turn_id, "handler_timeouts", f"no text within {limit:g} s")
        except Exception as exc:
            await self._fail(turn_id, "handler_errors", f"{type(exc).__name__}: {exc}")
        finally:
            ctx.cancel_event.set()
        text = "".join(reply)
        self.metrics.turn(turn_id).reply = text
        if text:
            self._remember(Message("assistant", text, turn_id))
        await self.emit(ReplyEnd(turn_id, text))

    async def _fail(self, turn_id: int, counter: str, message: str) -> None:
        log.warning("turn %d: handler failed: %s", turn_id, message)
        self.metrics.count(counter)
        self.metrics.turn(turn_id).error = message
        await self.emit(TurnError(turn_id, self.name, message))

    def _remember(self, message: Message) -> None:
        self.history.append(message)
        del self.history[: -self.options.max_history]

    def on_retract(self, turn_id: int, cut: bool) -> None:
        """A retracted preemptive reply leaves no trace: neither its user text nor its reply."""
        if self._ctx is not None and self._ctx.turn_id == turn_id:
            self._ctx.cancel_event.set()
        self.history = [m for m in self.history if m.turn_id != turn_id]

    def on_interrupt(self, interruption: Interruption) -> None:
        """Keep only what the user actually heard of the interrupted reply."""
        if self._ctx is not None:
            self._ctx.cancel_event.set()
        turn_id = interruption.turn_id
        for index in range(len(self.history) - 1, -1, -1):
            message = self.history[index]
            if message.turn_id != turn_id:
                continue
            if message.role == "assistant":
                if interruption.played_text:
                    message.text = interruption.played_text
                else:
                    del self.history[index]
            elif interruption.played_text:
                self.history.insert(index + 1, Message("assistant", interruption.played_text, turn_id))
            break
