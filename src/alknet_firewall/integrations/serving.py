"""Running an ASGI app on uvicorn with a graceful shutdown (the gateway, the model server).

:func:`serve` runs ``app`` until SIGTERM or SIGINT, then:

1. keeps listening, but answers every **new** request ``503`` (``shutting_down``, with
   ``Retry-After`` and ``Connection: close``), ``/healthz`` included, so load balancers move on;
2. lets the requests already **in flight** finish (streams included) for up to ``grace_s``;
3. stops: closes the listeners and idle connections, cancels what is left, runs the app's
   lifespan shutdown, and returns 0 (a second signal stops at once).

It also sets uvicorn's keep-alive above common clients' idle pool timeout (``keepalive_s``;
httpx keeps idle connections 5 s, as long as uvicorn's default, which lets a client send on a
connection the server is closing) and exposes ``limit_concurrency``. uvicorn's own
``X-Forwarded-For`` handling is off (``proxy_headers=False``): the client address is the peer's,
and only the app decides which proxies to believe. Nothing here knows about the firewall::

    from alknet_firewall.integrations.serving import serve
    sys.exit(serve(app, host="127.0.0.1", port=8090, grace_s=10))
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from types import FrameType
from typing import Any

from . import openai_errors

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

DEFAULT_KEEPALIVE_S = 75.0
DEFAULT_GRACE_S = 10.0


class DrainGate:
    """ASGI middleware: counts HTTP requests in flight; once :attr:`draining`, answers new
    ones 503 ``shutting_down`` and closes their connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.draining = False
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.draining:
            await openai_errors.shutting_down().closing().send(send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def _server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn's server, with the drain phase before its own shutdown, exiting normally
        (uvicorn re-raises the signal after shutting down, which would make SIGTERM exit
        -15)."""

        def __init__(self, config: Any, gate: DrainGate, grace_s: float) -> None:
            super().__init__(config)
            self.gate = gate
            self.grace_s = grace_s
            self.stop_requested = False
            self.drain_deadline: float | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.stop_requested:  # a second signal: stop now
                self.force_exit = True
                self.should_exit = True
                return
            self.stop_requested = True

        async def on_tick(self, counter: int) -> bool:
            if self.stop_requested and self.drain_deadline is None:
                self.gate.draining = True
                self.drain_deadline = time.monotonic() + self.grace_s
                log.info(
                    "shutting down: %d request(s) in flight get %.0f s; new ones get 503",
                    self.gate.in_flight,
                    self.grace_s,
                )
            if self.drain_deadline is not None:
                if self.gate.in_flight == 0:
                    return True
                if time.monotonic() >= self.drain_deadline:
                    log.warning(
                        "grace period over: %d request(s) still in flight are cut",
                        self.gate.in_flight,
                    )
                    return True
            return bool(await super().on_tick(counter))

    return GracefulServer


def port_number(value: str) -> int:
    """argparse type of a TCP port (0 picks a free one)."""
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0..65535")
    return port


def add_server_arguments(
    p: argparse.ArgumentParser, *, section: str, codebook_help: str, log_level: str
) -> None:
    """The arguments of every command that serves (``serve``, ``model serve``): ``--host``
    and ``--port`` over the settings ``section``, ``--config``, ``--codebook``, ``--log-level``."""
    p.add_argument("--host", default=None, help=f"bind address (default: {section}.host)")
    p.add_argument("--port", type=port_number, default=None, help=f"port (default: {section}.port)")
    # SUPPRESS: without --config here, the top-level --config (before the command) stays.
    p.add_argument("--config", default=argparse.SUPPRESS, help="YAML settings file")
    p.add_argument("--codebook", default=None, help=codebook_help)
    p.add_argument(
        "--log-level",
        default=log_level,
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level",
    )


def serve(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    keepalive_s: float = DEFAULT_KEEPALIVE_S,
    limit_concurrency: int | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    **uvicorn_options: Any,
) -> int:
    """Serve ``app`` until a signal, shut down gracefully (see the module doc); the exit code."""
    import uvicorn

    gate = DrainGate(app)
    config = uvicorn.Config(
        gate,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        timeout_keep_alive=max(1, round(keepalive_s)),
        limit_concurrency=limit_concurrency,
        # The drain phase already waited for the requests in flight.
        timeout_graceful_shutdown=1,
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 and rewrite the client address
        # before the app sees it; who is a trusted proxy is the app's call (server.trusted_proxies).
        **{"proxy_headers": False, **uvicorn_options},
    )
    server = _server_class()(config, gate, grace_s)
    server.run()
    if getattr(server, "started", False) is False and not server.stop_requested:
        return 1  # could not start (port in use...): uvicorn logged why
    return 0


__all__ = [
    "DEFAULT_GRACE_S",
    "DEFAULT_KEEPALIVE_S",
    "DrainGate",
    "add_server_arguments",
    "port_number",
    "serve",
]
