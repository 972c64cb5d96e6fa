"""``voiceloop serve``: the WebRTC voice bot's application layer over the io transports.

``server`` (aiohttp: the page, ``/config``, ``/voices``, ``/offer``; one pipeline per peer on shared
engines), ``guard`` (what a request must pass before a session exists: Host, Origin, content type,
body, token, rate), ``session`` (one peer's pipeline and its data-channel messages), ``web/`` (the page).
"""

from .server import ServerOptions, VoiceServer

__all__ = ["ServerOptions", "VoiceServer"]
