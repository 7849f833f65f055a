"""``alknet-firewall model serve``: register the sub-command (imports nothing heavy)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..integrations.serving import add_server_arguments

__all__ = [
    "add_model_serve_command",
    "check_exposure",
    "cmd_model_serve",
]


def add_model_serve_command(msub: Any) -> None:
    p = msub.add_parser(
        "serve",
        help="share the activation model over HTTP (screening processes use model.backend remote)",
        description="Serve the activation wire protocol (docs/deploy/protocol.md): a single-box "
        "uvicorn server (--engine local) or a Ray Serve application (--engine ray).",
    )
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: one uvicorn process; ray: Ray Serve (extra alknet-firewall[ray])",
    )
    add_server_arguments(
        p,
        section="model_server",
        codebook_help="serve the model read the way this codebook needs (default: configured "
        "codebook)",
        log_level="warning",
    )
    p.set_defaults(func=cmd_model_serve)


def _settings(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from ..config import load_settings

    settings = load_settings(getattr(args, "config", None))
    if args.engine == "ray":
        changes: dict[str, Any] = {
            "ray": {k: v for k, v in (("http_host", args.host), ("http_port", args.port)) if v}
        }
    else:
        changes = {
            "model_server": {k: v for k, v in (("host", args.host), ("port", args.port)) if v}
        }
    if args.codebook:
        changes["detection"] = {"codebook": str(Path(args.codebook))}
    return settings.merged(**changes)


def check_exposure(settings: Any, host: str) -> None:
    """Refuse to share the model beyond this machine without keys: anyone who reaches it
    could use it (and load it) unless ``model_server.allow_anonymous`` says another layer
    authenticates clients."""
    from ..errors import ConfigurationError
    from ..integrations.edge import is_loopback
    from .app import server_keys

    ms = settings.model_server
    if ms.allow_anonymous or is_loopback(host) or server_keys(settings):
        return
    raise ConfigurationError(
        f"refusing to serve the model on {host} without keys: anyone who reaches it could use "
        "it. Set model_server.keys (or model_server.keys_file; clients send model.remote.key), "
        "bind 127.0.0.1, or set model_server.allow_anonymous: true if another layer "
        "authenticates clients"
    )


def cmd_model_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    # Before the model loads: a refused start costs nothing.
    host = settings.ray.http_host if args.engine == "ray" else settings.model_server.host
    check_exposure(settings, host)
    if args.engine == "ray":
        from .ray_serve import serve_forever

        return serve_forever(settings)
    from ..errors import require

    for module in ("starlette", "uvicorn"):
        require(module, "server")
    from ..integrations.serving import serve
    from .app import ModelServer, create_model_app

    s = settings.model_server
    # Loaded before serving: a bad model or codebook fails here with a clear message.
    server = ModelServer(settings)
    try:
        app = create_model_app(settings, server=server)
        ident = server.service.identity
        sys.stderr.write(
            f"alknet-firewall model server on http://{s.host}:{s.port} ({ident['name']}, "
            f"{ident['weights_digest'][:19]}, layers {ident['layers']}, "
            f"{s.workers} workers, batches <= {s.max_batch_tokens} tokens)\n"
        )
        sys.stderr.flush()
        # SIGTERM: new requests get 503 + Retry-After (clients see OverloadError), in-flight
        # ones finish within the grace period.
        return serve(app, host=s.host, port=s.port, log_level=args.log_level)
    finally:
        server.close()
