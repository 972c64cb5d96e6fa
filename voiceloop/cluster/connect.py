"""Joining a Ray cluster with one clear line when it cannot be done (never a hang or a traceback)."""

from __future__ import annotations

import logging
import socket

from ..errors import UserError

#: how long an explicit cluster address may take to answer a TCP connect
CONNECT_TIMEOUT_S = 3.0


def ray_module():
    """Ray, or a UserError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise UserError("the cluster mode needs Ray: pip install 'voiceloop[cluster]'") from None
    return ray


def connect(address: str = "auto", namespace: str = "voiceloop") -> None:
    """``ray.init`` on ``address`` ("auto": the cluster ``ray start`` made on this machine; "host:port":
    its GCS), unless this process is connected already."""
    ray = ray_module()
    if ray.is_initialized():
        return
    if address not in ("auto", "local") and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(
                f"--ray takes auto or HOST:PORT (the head's 'ray start' address), got {address!r}"
            )
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
                pass
        except OSError as exc:
            raise UserError(
                f"cannot reach the Ray cluster at {address} within {CONNECT_TIMEOUT_S:g} s: {exc}; "
                "is 'ray start --head' running there, and the port open?"
            ) from None
    try:
        ray.init(
            address=address,
            namespace=namespace,
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=False,
        )
    except ConnectionError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"no Ray cluster at {address}: {first} (start one with 'ray start --head', "
            "then 'ray start --address=HEAD:6379' on the other machines)"
        ) from None
