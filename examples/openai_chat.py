"""An LLM dialogue handler: any OpenAI-compatible streaming chat-completions server.

Works with OpenAI, vLLM, llama.cpp's server, Ollama's /v1, LM Studio… Configure with arguments
or the environment: OPENAI_BASE_URL (default https://api.openai.com/v1), OPENAI_MODEL,
OPENAI_API_KEY. Needs aiohttp (``pip install 'voiceloop[webrtc]'``).

    from examples.openai_chat import OpenAIChat
    handler = OpenAIChat(model="qwen2.5-7b-instruct", system="你是一个简洁的语音助手。")
    DialogueStage(handler)

The handler is an async generator, so its text streams into TTS while the model is still
writing; ``ctx.history`` becomes the conversation (already truncated to what the user heard
when they interrupted the bot), and a cancelled turn closes the HTTP stream.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import aiohttp

from voiceloop.dialogue import TurnContext

DEFAULT_SYSTEM = (
    "You are a voice assistant. Answer briefly in the user's language, in plain sentences "
    "without lists or markdown, because your words will be spoken aloud."
)


class OpenAIChat:
    """Callable dialogue handler streaming from ``{base_url}/chat/completions``."""

    def __init__(
        self,
        *,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        system: str = DEFAULT_SYSTEM,
        temperature: float = 0.7,
        max_tokens: int = 300,
        timeout_s: float = 30.0,
    ) -> None:
        self.model = model or os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")).rstrip(
            "/"
        )
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.system = system
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    def messages(self, text: str, ctx: TurnContext) -> list[dict[str, str]]:
        history = [{"role": m.role, "content": m.text} for m in ctx.history]
        return [{"role": "system", "content": self.system}, *history, {"role": "user", "content": text}]

    async def __call__(self, text: str, ctx: TurnContext) -> AsyncIterator[str]:
        body = {
            "model": self.model,
            "messages": self.messages(text, ctx),
            "stream": True,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with (
            aiohttp.ClientSession(timeout=self.timeout) as session,
            session.post(f"{self.base_url}/chat/completions", json=body, headers=headers) as response,
        ):
            if response.status != 200:
                detail = (await response.text())[:200]
                raise RuntimeError(f"chat completions returned HTTP {response.status}: {detail}")
            async for raw in response.content:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                choices = json.loads(data).get("choices") or [{}]
                delta = (choices[0].get("delta") or {}).get("content")
                if delta:
                    yield delta
