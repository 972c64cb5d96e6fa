"""``voiceloop serve``'s access flags: the bearer token's sources, exposure, allowed names, offer rate.

Apart from :mod:`voiceloop.app_cli` because they are many and belong together; what each refusal
protects against is in docs/serve-security.md, the checks in :mod:`voiceloop.io.webrtc_guard`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .errors import UserError

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
    """The :class:`~voiceloop.io.webrtc_server.ServerOptions` fields these flags set."""
    return {
        "token": serve_token(args),
        "insecure_open": args.insecure_open,
        "public_url": args.public_url,
        "allow_origins": tuple(args.allow_origin or ()),
        "offer_rate_per_min": args.offer_rate,
        "offer_burst": args.offer_burst,
    }
