"""``GET /metrics``: what a server (or a cluster gateway) exposes to Prometheus.

One :class:`ServeMetrics` per server, on its own registry (two servers in one process, as in tests,
never share counters). Gauges that describe the moment (sessions, per-worker load) are refreshed
by the server just before each scrape; counters and the voice-to-voice histogram grow as things
happen.
"""

from __future__ import annotations

from typing import Any

from ..frames import TurnMetrics

#: voice-to-voice buckets (s): a good turn is under 1 s, a bad one several
V2V_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0)


class ServeMetrics:
    """The Prometheus series of one server; ``render()`` is the scrape's body."""

    def __init__(self) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError as exc:  # pragma: no cover - part of the webrtc extra
            needs = "GET /metrics needs prometheus_client: pip install 'voiceloop[webrtc]'"
            raise ImportError(needs) from exc
        self.registry = CollectorRegistry()
        reg = self.registry
        self.sessions = Gauge("voiceloop_sessions", "live calls (peer sessions)", registry=reg)
        self.offers = Counter(
            "voiceloop_offers",
            "SDP offers by outcome: admitted, busy (503), bad (4xx), failed (the worker failed)",
            ["result"],
            registry=reg,
        )
        self.failovers = Counter(
            "voiceloop_failovers", "calls re-offered after their worker was lost", registry=reg
        )
        self.voice_to_voice = Histogram(
            "voiceloop_voice_to_voice_seconds",
            "end of the user's speech to the bot's first audio, per turn",
            buckets=V2V_BUCKETS,
            registry=reg,
        )
        self.turns = Counter("voiceloop_turns", "turns answered", registry=reg)
        labels = ["worker"]
        self.worker_calls = Gauge("voiceloop_worker_calls", "calls on each worker", labels, registry=reg)
        self.worker_busy = Gauge(
            "voiceloop_worker_busy", "busy fraction of the worker's compute thread", labels, registry=reg
        )
        self.worker_lag = Gauge(
            "voiceloop_worker_lag_seconds", "longest wait for the worker's compute", labels, registry=reg
        )
        self.worker_headroom = Gauge(
            "voiceloop_worker_headroom", "calls the worker can still admit", labels, registry=reg
        )
        self.workers = Gauge("voiceloop_workers", "workers by state", ["state"], registry=reg)

    def observe_turn(self, frame: Any) -> None:
        """A pipeline observer: every finished turn's voice to voice."""
        if not isinstance(frame, TurnMetrics):
            return
        self.turns.inc()
        v2v = frame.timeline.durations().get("voice_to_voice")
        if v2v is not None:
            self.voice_to_voice.observe(max(0.0, v2v))

    def observe_v2v(self, values: list[float], turns: int) -> None:
        """Turns measured elsewhere (a cluster worker's report)."""
        self.turns.inc(turns)
        for value in values:
            self.voice_to_voice.observe(max(0.0, value))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
