"""``voiceloop serve``: the command, and its access flags (the bearer token's sources, exposure,
allowed names, offer rate). What each refusal protects against is in docs/serve-security.md, the
checks in :mod:`voiceloop.serve.guard`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError
from .loop import add_loop_arguments, agent_for, loop_options

TOKEN_ENV = "VOICELOOP_TOKEN"


def add_access_arguments(serve: argparse.ArgumentParser) -> None:
    token = serve.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file",
        metavar="PATH",
        help="require 'Authorization: Bearer TOKEN' on /offer, /voices, /config, the token read from PATH "
        f"(or set {TOKEN_ENV}); the page takes it from its address after #token=",
    )
    token.add_argument("--token", help="the token itself (visible to every user in ps: prefer --token-file)")
    serve.add_argument(
        "--insecure-open",
        action="store_true",
        help="serve a non-loopback --host with no token: anyone who reaches the port can use the bot",
    )
    serve.add_argument(
        "--public-url",
        metavar="URL",
        help="the address users open (a DNS name, a reverse proxy): its host is accepted in Host headers",
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="another origin (https://app.example) whose pages may call this server (repeatable; "
        "default: the page's own origin only)",
    )
    serve.add_argument(
        "--offer-rate",
        type=float,
        default=12.0,
        metavar="PER_MIN",
        help="offers per minute per client address after a burst (429 beyond; 0: no limit; default: 12)",
    )
    serve.add_argument(
        "--offer-burst",
        type=int,
        default=10,
        metavar="N",
        help="offers at once per client address (default: 10)",
    )


def serve_token(args: argparse.Namespace) -> str | None:
    """The bearer token: ``--token-file``, ``--token`` (visible to every user in ``ps``), else the
    ``VOICELOOP_TOKEN`` environment variable; None: no token."""
    if args.token_file is not None:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read --token-file {args.token_file}: {exc}") from exc
        if not token or any(c.isspace() for c in token):
            raise UserError(f"--token-file {args.token_file} must hold the token alone on one line")
        return token
    if args.token is not None:
        return args.token
    env = os.environ.get(TOKEN_ENV)
    if env is not None and not env.strip():
        raise UserError(f"{TOKEN_ENV} is set but empty")
    return env.strip() if env is not None else None


def access_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~voiceloop.serve.server.ServerOptions` fields these flags set."""
    return {
        "token": serve_token(args),
        "insecure_open": args.insecure_open,
        "public_url": args.public_url,
        "allow_origins": tuple(args.allow_origin or ()),
        "offer_rate_per_min": args.offer_rate,
        "offer_burst": args.offer_burst,
    }


def cmd_serve(args: argparse.Namespace) -> int:
    """The WebRTC voice bot: one pipeline per browser peer, one set of models for all of them.

    Output: a line per session and per turn on stderr (``--quiet``: lost turns only; ``--json``:
    every session's events as JSON lines on stdout, each tagged ``"session": N``, after a first
    ``{"type": "listening", "url": ...}`` line). ``--metrics-out`` collects the turns of all sessions.
    Runs until Ctrl-C or SIGTERM, then prints (``--json``) or writes the summary over all sessions.
    """
    import asyncio

    from ..serve import ServerOptions
    from ..serve.session import ServeLog
    from ..serve.voice_upload import VoiceUploadOptions

    if args.stats_s is not None and not args.stats_s > 0:
        raise UserError("--stats-s must be positive")
    options = loop_options(args)
    server_options = ServerOptions(
        host=args.host,
        port=args.port,
        **access_options(args),
        max_sessions=args.max_sessions,
        ice_servers=[ice_server(url) for url in args.ice_server or []],
        voice_upload=VoiceUploadOptions(allow_saving=args.allow_voice_saving),
    )
    cluster = cluster_options(args)  # --ray: Ray installed and the cluster reached, or one line now
    agent = agent_for(args, options, load=cluster is None)
    metrics = open(args.metrics_out, "w", encoding="utf-8") if args.metrics_out else None  # noqa: SIM115
    log = ServeLog("json" if args.json else "quiet" if args.quiet else "plain", metrics=metrics)

    def listening(server) -> None:
        page = server_options.public_url or server.url
        if args.json:
            print(json.dumps({"type": "listening", "url": server.url, "page": page}), flush=True)
        elif not args.quiet:
            hint = f" (open {page}#token=TOKEN)" if server_options.token else ""
            print(f"voiceloop serve: listening on {server.url}{hint}", file=sys.stderr, flush=True)
        if args.stats_s:  # ends with the server's event loop
            _tasks.add(asyncio.get_running_loop().create_task(_serve_stats(server, args)))

    try:
        agent.serve(
            server=server_options, observer=log, on_start=listening, cluster=cluster, ray_address=args.ray
        )
    finally:
        log.close()
        agent.close()
    return 0


_tasks: set = set()  # the stats task, referenced while it runs


async def _serve_stats(server, args: argparse.Namespace) -> None:
    """Every ``--stats-s``: live sessions and the event loop's asyncio tasks, the leak watch of a
    long-running server (benchmarks/soak.py reads it). ``--json``: a ``stats`` line on stdout."""
    import asyncio

    from ..clock import now

    while True:
        await asyncio.sleep(args.stats_s)
        sessions, tasks = server.sessions, len(asyncio.all_tasks())
        if args.json:
            record = {"type": "stats", "sessions": sessions, "tasks": tasks, "time": round(now(), 4)}
            print(json.dumps(record), flush=True)
        elif not args.quiet:
            line = f"voiceloop serve: {sessions} session(s), {tasks} asyncio task(s)"
            print(line, file=sys.stderr, flush=True)


def ice_server(url: str) -> Any:
    """``stun:host:port`` as it is; ``turn:USER:PASS@host:port`` (or ``turns:``) with its credentials
    split out, as WebRTC wants them (the page gets them from /config, the server's peers use them)."""
    scheme, _, rest = url.partition(":")
    if scheme not in ("turn", "turns") or "@" not in rest:
        return url
    from aiortc import RTCIceServer

    secret, _, where = rest.rpartition("@")
    user, sep, password = secret.partition(":")
    if not sep or not user or not where:
        raise UserError(f"--ice-server {scheme}: expects {scheme}:USER:PASSWORD@HOST:PORT")
    return RTCIceServer(urls=f"{scheme}:{where}", username=user, credential=password)


def cluster_options(args: argparse.Namespace) -> Any:
    """``--ray``: a :class:`voiceloop.cluster.ClusterOptions` from the cluster flags; else None."""
    if args.ray is None:
        return None
    from ..cluster import AdmissionOptions, ClusterOptions, connect
    from ..cluster.connect import ray_module

    ray_module()  # not installed: one line naming the extra, before anything loads
    try:
        options = ClusterOptions(
            workers=args.workers,
            worker_cpus=args.worker_cpus,
            worker_gpus=args.worker_gpus,
            drain_grace_s=args.drain_grace_s,
            attach=args.attach,
            admission=AdmissionOptions(target_busy=args.target_busy, overlap_risk=args.overlap_risk),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    connect(args.ray, options.namespace)
    return options


def add_cluster_arguments(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("past one machine (Ray; docs/cluster.md)")
    group.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="place calls on workers of this Ray cluster (auto: the one 'ray start' made here; "
        "HOST:PORT: its head); this process is then the gateway and loads no model",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker actors (default: as many as the cluster's CPUs hold)",
    )
    group.add_argument(
        "--attach",
        action="store_true",
        help="a second gateway: use the workers the first one started (it launches none)",
    )
    group.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs per worker (default: 1)")
    group.add_argument(
        "--target-busy",
        type=float,
        default=0.7,
        metavar="F",
        help="admit while a worker's predicted busy fraction stays under F (default: 0.7)",
    )
    group.add_argument(
        "--overlap-risk",
        type=float,
        default=None,
        metavar="P",
        help="also keep the chance that more replies overlap than a worker computes at full speed under P "
        "(e.g. 0.05; default: off)",
    )
    group.add_argument("--worker-gpus", type=float, default=0.0, help="GPUs per worker (default: 0)")
    group.add_argument(
        "--drain-grace-s",
        type=float,
        default=3600.0,
        metavar="S",
        help="on SIGTERM or POST /drain, how long a draining worker's calls may go on (default: 3600)",
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="the WebRTC voice bot (aiohttp + aiortc), one pipeline per peer")
    serve.add_argument(
        "--host", default="127.0.0.1", help="bind address (default: %(default)s; others need a token)"
    )
    serve.add_argument("--port", type=int, default=8080)
    add_access_arguments(serve)
    serve.add_argument("--max-sessions", type=int, default=4, help="concurrent peers (503 beyond)")
    serve.add_argument(
        "--allow-voice-saving",
        action="store_true",
        help="let a page save a voice it recorded under a name (default: recorded voices stay in memory, "
        "for that call only)",
    )
    serve.add_argument(
        "--ice-server",
        action="append",
        help="stun:HOST:PORT or turn:USER:PASSWORD@HOST:PORT (repeatable; default: none)",
    )
    serve.add_argument(
        "--stats-s",
        type=float,
        default=None,
        metavar="S",
        help="every S seconds, a line with the live sessions and asyncio tasks (leak watch)",
    )
    add_cluster_arguments(serve)
    add_loop_arguments(serve)
    serve.set_defaults(func=cmd_serve)
