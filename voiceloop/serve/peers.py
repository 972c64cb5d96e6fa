"""The calls one process holds: a WebRTC peer connection and a conversation pipeline per call.

:class:`Peers` is what ``voiceloop serve`` and a cluster worker (:mod:`voiceloop.cluster.worker`)
have in common: it turns an SDP offer into an answer and a running pipeline on shared engines, watches
each peer (never connected, microphone silent, connection or data channel gone), checkpoints each
call's conversation after every turn (:mod:`voiceloop.serve.history`) and starts a re-offered call
with the turns already done. It knows nothing of HTTP: the server and the worker put their own front
(checks, admission) before :meth:`Peers.open`.

Liveness for the page: every ``heartbeat_s`` each session sends ``{"type": "alive"}`` on its data
channel. A page that hears nothing for a few heartbeats treats the call as lost and offers again
with its call id (the process died, or hangs: the heartbeat comes from the event loop that runs the
calls, so a stuck loop is as silent as a dead one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..frames import Frame, TurnError, TurnMetrics
from ..io.webrtc import WebRtcSink, WebRtcSource
from ..loop import Engines, LoopOptions, build_pipeline
from ..pipeline import Pipeline
from .history import CallHistory, MemoryHistory
from .session import Session, voice_catalog

if TYPE_CHECKING:
    from .server import ServerOptions

log = logging.getLogger(__name__)


class SessionObserver(Protocol):
    """Told when a peer's pipeline is built and when it is gone (``voiceloop serve``'s log)."""

    def session_started(self, sid: int, pipeline: Pipeline) -> None: ...

    def session_ended(self, sid: int, pipeline: Pipeline) -> None: ...


class BadOffer(Exception):
    """An offer SDP this process cannot answer (the HTTP front turns it into a 400)."""


def loopback_candidates(sdp: str) -> str:
    """The SDP without ICE candidates that are not on 127.0.0.1 (tests and single-machine demos)."""
    lines = sdp.split("\r\n") if "\r\n" in sdp else sdp.split("\n")
    kept = []
    for line in lines:
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) < 5 or fields[4] != "127.0.0.1":
                continue
        kept.append(line)
    return ("\r\n" if "\r\n" in sdp else "\n").join(kept)


class Peers:
    """Live calls on shared engines. ``await open(sdp, call)`` → answer; ``await close_all()``."""

    def __init__(
        self,
        engines: Engines,
        handler: Callable[..., Any],
        loop_options: LoopOptions,
        options: ServerOptions,
        observer: SessionObserver | None = None,
        history: CallHistory | None = None,
    ) -> None:
        self.engines = engines
        self.handler = handler
        self.loop_options = loop_options
        self.options = options
        self.observer = observer
        self.history: CallHistory = history if history is not None else MemoryHistory()
        self._sessions: dict[int, Session] = {}
        self._calls: dict[int, str] = {}  # session id → call id
        self._next_id = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        #: called with each ended call's id once its session is gone (the cluster worker's books)
        self.on_ended: Callable[[str], None] | None = None

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def session(self, sid: int) -> Session | None:
        return self._sessions.get(sid)

    def live(self) -> list[Session]:
        """The sessions now (a copy: closing them while iterating is fine)."""
        return list(self._sessions.values())

    def call_of(self, sid: int) -> str | None:
        return self._calls.get(sid)

    def call_session(self, call: str) -> Session | None:
        """The live session of ``call`` in this process (POST /voice names a call, not a session)."""
        return next((self._sessions[sid] for sid, c in self._calls.items() if c == call), None)

    def voices(self) -> dict[str, Any]:
        """What the TTS engine offers (``GET /voices``): default, ``seeds`` (``seed:N`` works), names."""
        return voice_catalog(self.engines.tts, self.loop_options.voice)

    # -- a call ----------------------------------------------------------------------------
    async def open(self, sdp: str, call: str) -> dict[str, Any]:
        """Answer ``sdp`` and start the call's pipeline, resuming ``call``'s checkpointed turns.

        Raises :class:`BadOffer` when the SDP is unusable (nothing is left behind then)."""
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

        earlier = await self.history.get(call)
        servers = [
            s if isinstance(s, RTCIceServer) else RTCIceServer(urls=s) for s in self.options.ice_servers
        ]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        source, sink = WebRtcSource(), WebRtcSink()
        pipeline = build_pipeline(source, sink, self.engines, self.handler, self.loop_options)
        self._next_id += 1
        session = Session(
            self._next_id,
            pc,
            source,
            sink,
            pipeline,
            catalog=self.voices(),
            max_say_chars=self.options.max_say_chars,
        )
        session.dialogue.history = earlier
        pipeline.add_observer(session.send_event)
        pipeline.add_observer(lambda frame: self._checkpoint(session, call, frame))
        self._wire(session, call)
        if self.options.loopback_candidates_only:
            sdp = loopback_candidates(sdp)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if not any(t.kind == "audio" for t in pc.getTransceivers()):
                raise BadOffer("the offer SDP has no audio track (m=audio line)")
            pc.addTrack(sink.track)
            await pc.setLocalDescription(await pc.createAnswer())
        except BadOffer:
            await pc.close()
            raise
        except Exception as exc:  # aiortc raises ValueError, AttributeError, ... on bad SDP
            await pc.close()
            raise BadOffer(f"cannot use the offer SDP: {type(exc).__name__}: {exc}") from exc
        self._sessions[session.id] = session
        self._calls[session.id] = call
        if earlier:
            turns = len({m.turn_id for m in earlier})
            session.send({"type": "resumed", "call": call, "turns": turns, "messages": len(earlier)})
        if self.observer is not None:
            self.observer.session_started(session.id, pipeline)
        loop = asyncio.get_running_loop()
        session.task = loop.create_task(self._run(session), name=f"voiceloop:peer{session.id}")
        session.watchdog = loop.call_later(self.options.connect_timeout_s, self._check_connected, session)
        if self.options.heartbeat_s and (self._heartbeat is None or self._heartbeat.done()):
            self._heartbeat = loop.create_task(self._beat(), name="voiceloop:heartbeat")
        local = pc.localDescription
        return {"sdp": local.sdp, "type": local.type, "session": session.id, "call": call}

    def _checkpoint(self, session: Session, call: str, frame: Frame) -> None:
        """After each turn (its metrics or its error): the conversation so far, outside the pipeline."""
        if isinstance(frame, TurnMetrics | TurnError) and not session.closing:
            try:
                self.history.put(call, session.dialogue.history)
            except Exception:  # a store that is gone costs the checkpoint, never the call
                log.warning("session %s: checkpoint failed", session.id, exc_info=True)

    def _wire(self, session: Session, call: str) -> None:
        pc = session.pc

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio" and session.source.track is None:
                session.source.attach(track)
            else:  # not ours to play: still drain it (its queue is unbounded)
                self.spawn(_drain(track))

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label != "events":
                return
            session.open_channel(channel)
            channel.on("open", session.flush_backlog)
            channel.on("close", lambda: self.spawn(self.close(session, hung_up=session.hung_up)))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state in ("failed", "closed"):
                self.spawn(self.close(session))
            elif state == "connected" and not session.closing:  # from now on, watch the audio
                if session.watchdog is not None:
                    session.watchdog.cancel()
                session.watchdog = asyncio.get_running_loop().call_later(
                    self.options.media_timeout_s, self._check_media, session, session.source.received
                )

    def _check_connected(self, session: Session) -> None:
        if session.closing:
            return
        if session.pc.connectionState != "connected":
            log.info("session %s: not connected after %.0f s", session.id, self.options.connect_timeout_s)
            self.spawn(self.close(session))

    def _check_media(self, session: Session, seen: int) -> None:
        """Every ``media_timeout_s``: has the peer's microphone sent anything since the last look?"""
        if session.closing:
            return
        received = session.source.received
        if received == seen:
            reason = f"no audio from the peer for {self.options.media_timeout_s:g} s"
            log.info("session %s: %s", session.id, reason)
            session.send({"type": "closing", "reason": reason, "resume": False})  # the page stays off
            self.spawn(self.close(session))
            return
        session.watchdog = asyncio.get_running_loop().call_later(
            self.options.media_timeout_s, self._check_media, session, received
        )

    async def _beat(self) -> None:
        """Runs while there are sessions (an idle server keeps no task)."""
        while self._sessions:
            await asyncio.sleep(self.options.heartbeat_s)
            for session in list(self._sessions.values()):
                if session.channel is not None and not session.closing:
                    session.send({"type": "alive"})

    async def _run(self, session: Session) -> None:
        try:
            await session.pipeline.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: pipeline failed", session.id)
        finally:
            if not session.closing:
                self.spawn(self.close(session))

    async def close(self, session: Session, hung_up: bool = False, reason: str | None = None) -> None:
        """Tear a session down once: cancel its pipeline, close the connection, forget it.

        ``hung_up``: the page said bye: its checkpoint goes too. Any other end keeps it (it expires),
        so the page can offer again and go on (``reason`` is sent to it first)."""
        if session.closing:
            return
        if reason is not None:
            session.send({"type": "closing", "reason": reason})
        session.closing = True
        if session.watchdog is not None:
            session.watchdog.cancel()
        task = session.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await session.pc.close()  # the pipeline's stages closed their engine sessions as it ended
        call = self._calls.pop(session.id, None)
        if hung_up and call is not None:
            self.history.drop(call)
        if self._sessions.pop(session.id, None) is not None:
            if self.observer is not None:
                try:
                    self.observer.session_ended(session.id, session.pipeline)
                except Exception:
                    log.exception("session %s: the session observer failed", session.id)
            if call is not None and self.on_ended is not None:
                self.on_ended(call)

    async def close_call(self, call: str, reason: str) -> bool:
        """End the session of ``call`` here (it moved elsewhere); False when there is none."""
        for sid, owner in list(self._calls.items()):
            if owner == call and (session := self._sessions.get(sid)) is not None:
                await self.close(session, reason=reason)
                return True
        return False

    async def close_all(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        await asyncio.gather(*(self.close(s) for s in list(self._sessions.values())))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _drain(track: Any) -> None:
    from aiortc.mediastreams import MediaStreamError

    try:
        while True:
            await track.recv()
    except MediaStreamError:
        pass
