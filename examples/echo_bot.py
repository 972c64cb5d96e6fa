"""The smallest voice bot: handlers are plain functions.

Run a file through VAD → ASR → handler → TTS once the engines of your choice are loaded; here the
handler is all you write. Any of these forms works (see voiceloop.dialogue):
"""

from __future__ import annotations

import asyncio


def reply(text: str) -> str:
    """A sync function runs in a worker thread: blocking calls are fine."""
    return f"你说的是：{text}"


async def reply_async(text: str) -> str:
    await asyncio.sleep(0)  # e.g. await an HTTP call
    return f"You said: {text}"


async def reply_streaming(text: str, ctx):
    """An async generator streams pieces; declare ``ctx`` to get history and cancellation."""
    yield "Let me think. "
    for word in text.split():
        if ctx.cancelled:  # the user talked over us
            return
        yield word + " "
