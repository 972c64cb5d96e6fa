"""Dialogue handlers: every handler form, the context object, partial hooks, the LLM example."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from aiohttp import web
from helpers.fakes import Collect

from voiceloop.clock import run
from voiceloop.dialogue import DialogueStage, Message, TurnContext, call_handler
from voiceloop.frames import (
    EndOfStream,
    FinalTranscript,
    Frame,
    PartialTranscript,
    ReplyEnd,
    ReplyText,
    TurnError,
)
from voiceloop.pipeline import Pipeline, Stage

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))


class Script(Stage):
    """A source of transcripts (the dialogue stage's input), spaced in time."""

    name = "script"

    def __init__(self, frames: list[Frame], gap: float = 1.0) -> None:
        super().__init__()
        self.frames, self.gap = frames, gap

    async def produce(self) -> None:
        for frame in self.frames:
            await self.emit(frame)
            await asyncio.sleep(self.gap)
        await self.emit(EndOfStream())


def converse(
    handler, texts: list[str], clock: str = "virtual", **kwargs
) -> tuple[list[Frame], DialogueStage]:
    finals = [FinalTranscript(text=t, turn_id=i) for i, t in enumerate(texts, 1)]
    dialogue, sink = DialogueStage(handler, **kwargs), Collect()
    run(Pipeline([Script(finals), dialogue, sink]).run(), clock=clock)
    return sink.frames, dialogue


def replies(frames: list[Frame]) -> dict[int, str]:
    out: dict[int, str] = {}
    for f in frames:
        if isinstance(f, ReplyText):
            out[f.turn_id] = out.get(f.turn_id, "") + f.text
    return out


def sync_fn(text):
    return f"echo {text}."


def sync_gen(text, ctx):
    yield "one, "
    yield f"turn {ctx.turn_id}."


async def async_fn(text):
    await asyncio.sleep(0.1)
    return f"async {text}."


async def async_gen(text, ctx):
    for word in ("streamed ", "reply ", f"{len(ctx.history)}."):
        await asyncio.sleep(0.05)
        yield word


class CallableObject:
    async def __call__(self, text, ctx):
        yield f"object {text}."


@pytest.mark.parametrize(
    ("handler", "clock", "expected"),
    [
        (sync_fn, "fast", {1: "echo hi.", 2: "echo there."}),
        (sync_gen, "fast", {1: "one,turn 1.", 2: "one,turn 2."}),
        (async_fn, "virtual", {1: "async hi.", 2: "async there."}),
        (async_gen, "virtual", {1: "streamed reply 0.", 2: "streamed reply 2."}),
        (CallableObject(), "virtual", {1: "object hi.", 2: "object there."}),
    ],
)
def test_every_handler_form(handler, clock, expected) -> None:
    frames, dialogue = converse(handler, ["hi", "there"], clock=clock)
    assert {k: v.replace(" ", "") for k, v in replies(frames).items()} == {
        k: v.replace(" ", "") for k, v in expected.items()
    }
    assert [f.turn_id for f in frames if isinstance(f, ReplyEnd)] == [1, 2]
    assert [m.role for m in dialogue.history] == ["user", "assistant", "user", "assistant"]


def test_context_carries_history_and_turn_id() -> None:
    seen: list[TurnContext] = []

    def handler(text, ctx):
        seen.append(ctx)
        return "好的。"

    converse(handler, ["你好", "再见"], clock="fast")
    assert [c.turn_id for c in seen] == [1, 2]
    assert seen[0].history == []
    assert [(m.role, m.text) for m in seen[1].history] == [("user", "你好"), ("assistant", "好的。")]
    assert all(c.cancelled for c in seen), "the signal is set once a turn is over"


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (lambda text: 42, "handler produced int, expected str"),
        (lambda text: (_ for _ in ()).throw(KeyError("k")), "KeyError"),
    ],
)
def test_bad_handlers_cost_one_turn(handler, message) -> None:
    frames, _ = converse(handler, ["a", "b"], clock="fast")
    errors = [f for f in frames if isinstance(f, TurnError)]
    assert len(errors) == 2 and all(message in e.error for e in errors)
    assert [f.turn_id for f in frames if isinstance(f, ReplyEnd)] == [1, 2]


def test_empty_transcripts_get_no_reply() -> None:
    calls = []
    frames, _ = converse(lambda t: calls.append(t) or "x.", ["  ", "real"], clock="fast")
    assert calls == ["real"]
    assert replies(frames) == {2: "x."}


def test_partial_hook_sees_partials_and_its_failures_are_contained() -> None:
    seen: list[str] = []

    async def on_partial(text):
        seen.append(text)
        if text == "bad":
            raise ValueError("hook bug")

    script = [
        PartialTranscript(text="he", turn_id=1),
        PartialTranscript(text="bad", turn_id=1),
        FinalTranscript(text="hello", turn_id=1),
    ]
    dialogue, sink = DialogueStage(lambda t: "ok.", on_partial=on_partial), Collect()
    pipeline = Pipeline([Script(script, gap=0.1), dialogue, sink])
    run(pipeline.run(), clock="fast")
    assert seen == ["he", "bad"]
    assert pipeline.metrics.counters["partial_hook_errors"] == 1
    assert replies(sink.frames) == {1: "ok."}


def test_history_is_bounded() -> None:
    _, dialogue = converse(
        lambda t: "r.",
        [str(i) for i in range(8)],
        clock="fast",
        options=__import__("voiceloop").DialogueOptions(max_history=5),
    )
    assert len(dialogue.history) == 5 and dialogue.history[-1] == Message("assistant", "r.", 8)


def test_openai_compatible_client_streams_from_a_local_server() -> None:
    from openai_chat import OpenAIChat

    received: list[dict] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        received.append({"auth": request.headers.get("Authorization"), "body": await request.json()})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in ["你好", "，我是", "语音助手。"]:
            chunk = {"choices": [{"delta": {"content": piece}}]}
            await response.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async def main() -> list[str]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            client = OpenAIChat(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key="k", system="sys")
            ctx = TurnContext(
                1, FinalTranscript("hi"), [Message("user", "早"), Message("assistant", "早上好")]
            )
            return [piece async for piece in call_handler(client, "你是谁", ctx)]
        finally:
            await runner.cleanup()

    pieces = asyncio.run(main())
    assert pieces == ["你好", "，我是", "语音助手。"]
    (request,) = received
    assert request["auth"] == "Bearer k"
    assert request["body"]["stream"] is True and request["body"]["model"] == "m"
    assert [m["role"] for m in request["body"]["messages"]] == ["system", "user", "assistant", "user"]
    assert request["body"]["messages"][-1]["content"] == "你是谁"
