"""OpenAI-compatible screening gateway: screen first, then forward to the upstream API.

Size (~590 lines): the :class:`Gateway` (settings checks, routes, middleware order, lifespan,
upstream forwarding with streaming, health/metrics) and the ``serve`` command; auth, error
bodies, the edge and serving live in their own modules.

``alknet-firewall serve --upstream https://api.openai.com/v1`` runs :func:`create_app` on
uvicorn (``127.0.0.1:8080`` by default). Point any OpenAI client at ``http://HOST:PORT/v1``.

* ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/responses``: screened by
  :class:`~alknet_firewall.integrations.asgi.FirewallMiddleware`, then forwarded byte for byte
  (``stream: true`` comes back as server-sent events, chunk by chunk, unbuffered);
* ``GET /v1/models`` (and ``/v1/models/{id}``, the id one escaped path segment): forwarded;
  nothing else reaches the upstream (an allow-list of routes; dot segments and encoded
  slashes are refused by :mod:`~alknet_firewall.integrations.edge` before any route runs);
* ``GET /healthz``: ``{"status", "codebook", "queue_depth", "model"}`` (model: backend, dtype
  and why, device);
* ``GET /console/``: the operator console and its JSON API (``docs/console.md``);
* ``GET /metrics``: Prometheus text format (behind the client keys, or on its own port).

Three modes (``docs/integrations/gateway.md``): *passthrough* (no ``upstream_api_key``: the
client's ``Authorization`` goes upstream), *shared key* (``upstream_api_key`` and
``client_keys``: clients authenticate with a gateway key, which is never forwarded; the upstream
key replaces it) and *anonymous shared key* (loopback only unless ``allow_anonymous``).
Upstream HTTP errors come back as they are (status, headers, body); an unreachable upstream is
a 502 and a timeout a 504, as OpenAI-style errors.

Importing this module loads no web framework (the CLI imports it to register ``serve``);
starlette, httpx and uvicorn load in :func:`create_app` and :func:`cmd_serve`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from ..errors import ConfigurationError
from . import openai_errors
from .asgi import STATE_FIREWALL, FirewallMiddleware, PolicyResolver
from .auth import RequireKey, client_keys
from .edge import Edge, default_allowed_hosts, is_loopback

if TYPE_CHECKING:  # pragma: no cover
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from ..config import Settings
    from ..firewall import Firewall, FirewallStatus

__all__ = [
    "SCREENED",
    "STATE_HTTP",
    "Gateway",
    "UpstreamResponse",
    "add_serve_command",
    "check_exposure",
    "check_upstream",
    "cmd_serve",
    "create_app",
]


log = logging.getLogger(__name__)

#: Lifespan-state key of the shared ``httpx.AsyncClient``.
STATE_HTTP = "alknet_firewall_http"
#: Screened endpoints, relative to ``/v1``.
SCREENED = ("/chat/completions", "/completions", "/responses")

#: Hop-by-hop headers (RFC 9110 §7.6.1) and those the proxy sets itself.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_DROP_REQUEST = _HOP | {"host", "content-length", "expect", "accept-encoding"}
#: ``date`` and ``server`` are added by uvicorn; forwarding them would duplicate them.
_DROP_RESPONSE = _HOP | {"date", "server"}


def check_upstream(url: str | None) -> str:
    """The upstream base URL without a trailing slash; :class:`ConfigurationError` if unusable."""
    if not url:
        raise ConfigurationError(
            "no upstream: pass --upstream BASE_URL (e.g. https://api.openai.com/v1) or set "
            "server.upstream"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"upstream {url!r} must be an http(s) URL with a host, e.g. https://api.openai.com/v1"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(f"upstream {url!r} must not carry a query or fragment")
    return url.rstrip("/")


# --------------------------------------------------------------------------------------------
# Gateway metrics (process-wide, created on first use)
# --------------------------------------------------------------------------------------------
_METRICS_LOCK = threading.Lock()
_METRICS: tuple[Any, Any] | None = None


def _metrics() -> tuple[Any, Any]:
    global _METRICS
    with _METRICS_LOCK:
        if _METRICS is None:
            from prometheus_client import Counter, Histogram

            _METRICS = (
                Counter(
                    "alknet_firewall_upstream_requests_total",
                    "Requests forwarded upstream, by outcome (status class, unreachable, timeout)",
                    ["outcome"],
                ),
                Histogram(
                    "alknet_firewall_upstream_seconds",
                    "Time until the upstream's response headers",
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                ),
            )
        return _METRICS


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------
class Gateway:
    """The gateway: its settings, the firewall and HTTP client it serves with, its endpoints.

    :func:`create_app` builds its Starlette app (:meth:`app`); the arguments are that
    function's. Settings are checked here, so a bad configuration fails before serving.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        firewall: Firewall | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        policy: str | PolicyResolver | None = None,
        policy_header: str | None = None,
    ) -> None:
        from ..config import coerce_settings

        self.settings = coerce_settings(settings)
        server = self.server = self.settings.server
        self.upstream = check_upstream(server.upstream)
        self.firewall = firewall
        self.http_client = http_client
        self.policy = policy
        self.policy_header = policy_header
        drop = set(_DROP_REQUEST)
        if policy_header:
            drop.add(policy_header.lower())
        if server.upstream_api_key:
            drop.add("authorization")
        self.drop_request = frozenset(drop)
        self.keys = client_keys(server)
        if self.keys and not server.upstream_api_key:
            raise ConfigurationError(
                "server.client_keys need server.upstream_api_key: without it the gateway passes "
                "the client's own Authorization upstream (passthrough mode), so it cannot also "
                "be a gateway key"
            )
        auth = server.metrics_auth
        self.metrics_auth = bool(self.keys) if auth is None else auth
        if self.metrics_auth and not self.keys:
            raise ConfigurationError("server.metrics_auth needs server.client_keys")
        if server.upstream_api_key and not self.keys:
            log.warning(
                "no server.client_keys: whoever reaches the gateway spends server.upstream_api_key"
            )
        self.requests_total, self.upstream_seconds = _metrics()

    # -- the app -------------------------------------------------------------------------------
    def app(self) -> Starlette:
        from starlette.applications import Starlette

        return Starlette(routes=self.routes(), middleware=self.middleware(), lifespan=self.lifespan)

    def routes(self) -> list[Any]:
        from starlette.routing import Mount, Route

        from .console import gateway_console

        forward = self.forward
        routes = [
            Route("/v1" + s, functools.partial(forward, s), methods=["POST"]) for s in SCREENED
        ]
        routes += [
            Route("/v1/models", functools.partial(forward, "/models"), methods=["GET"]),
            Route("/v1/models/{model}", self.model, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
        ]
        if self.server.metrics_port is None:  # otherwise on its own listener (cmd_serve)
            routes.append(Route("/metrics", self.metrics, methods=["GET"]))
        # Operator console (docs/console.md): admin keys; with no keys at all, loopback only.
        routes.append(Mount("/console", app=gateway_console(self.server, self.firewall)))
        return routes

    def middleware(self) -> list[Any]:
        """Outermost first: the edge (hosts, origins, paths, bodies), CORS, client keys (before
        any body is read or screened), then screening."""
        from starlette.middleware import Middleware

        server = self.server
        screened = ["/v1" + s for s in SCREENED]
        hosts = default_allowed_hosts(server.host, server.allowed_hosts)
        if hosts is None and server.allowed_hosts is None:
            log.warning(
                "bound to %s with no server.allowed_hosts: every Host name is answered; list "
                "the gateway's own names there (DNS rebinding)",
                server.host,
            )
        discard = server.discard_body_bytes
        middleware = [
            Middleware(
                Edge,  # type: ignore[arg-type]
                allowed_hosts=hosts,
                cors_origins=server.cors_origins,
                trusted_proxies=server.trusted_proxies,
                json_paths=screened,
                json_only=["/console/api/screen"],
                max_body_bytes=server.max_body_bytes,
                discard_bytes=4 * server.max_body_bytes if discard is None else discard,
                body_timeout_s=server.body_timeout_s,
            )
        ]
        if server.cors_origins:
            from starlette.middleware.cors import CORSMiddleware

            middleware.append(
                Middleware(
                    CORSMiddleware,  # type: ignore[arg-type]
                    allow_origins=list(server.cors_origins),
                    allow_methods=["GET", "POST"],
                    allow_headers=["authorization", "content-type"],
                    expose_headers=["x-alknet-firewall-action", "x-alknet-firewall-level"],
                )
            )
        if self.keys:
            middleware.append(
                Middleware(
                    RequireKey,  # type: ignore[arg-type]
                    keys=self.keys,
                    protect=self.needs_key,
                    body_timeout_s=server.body_timeout_s,
                    # An unauthenticated client may cost what an authenticated one may send.
                    discard_bytes=server.max_body_bytes,
                )
            )
        middleware.append(
            Middleware(
                FirewallMiddleware,  # type: ignore[arg-type]
                firewall=self.firewall,  # None: the lifespan's, from scope["state"]
                paths=screened,
                policy=self.policy,
                policy_header=self.policy_header,
                block_status=server.block_status,
                max_body_bytes=server.max_body_bytes,
                on_invalid_json="reject",
                # The upstream may parse any body as JSON: never forward one unscreened.
                on_non_json="reject",
                discard_bytes=server.discard_body_bytes,
                body_timeout_s=server.body_timeout_s,
            )
        )
        return middleware

    def needs_key(self, scope: Any) -> bool:
        """Which requests need a client key: the API, and ``/metrics`` with ``metrics_auth``.
        (The console checks its own admin keys.)"""
        path = scope.get("path", "")
        return path.startswith("/v1/") or (self.metrics_auth and path == "/metrics")

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[dict[str, Any]]:
        """Builds what was not passed in (firewall, HTTP client) and closes it on shutdown."""
        import anyio
        import httpx

        fw = self.firewall
        if fw is None:
            from ..firewall import Firewall

            fw = await anyio.to_thread.run_sync(Firewall, self.settings)
        client = self.http_client or httpx.AsyncClient(
            timeout=httpx.Timeout(self.server.upstream_timeout_s),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            follow_redirects=False,
        )
        try:
            yield {STATE_FIREWALL: fw, STATE_HTTP: client}
        finally:
            with anyio.CancelScope(shield=True):
                if self.http_client is None:
                    await client.aclose()
                if self.firewall is None:
                    await anyio.to_thread.run_sync(fw.close)

    # -- endpoints -----------------------------------------------------------------------------
    async def model(self, request: Request) -> Response | UpstreamResponse:
        """``/v1/models/{id}``: the decoded id as ONE escaped segment (never '/', '.', '..')."""
        model = request.path_params["model"]
        if model in ("", ".", "..") or "/" in model:
            return _error(openai_errors.invalid_path())
        return await self.forward("/models/" + quote(model, safe=""), request)

    async def forward(self, path: str, request: Request) -> Response | UpstreamResponse:
        """Send the request to the upstream's ``path``; its response comes back streamed."""
        import httpx

        client: httpx.AsyncClient = request.scope["state"][STATE_HTTP]
        api_key, timeout_s = self.server.upstream_api_key, self.server.upstream_timeout_s
        url = self.upstream + path
        query = request.scope.get("query_string", b"")
        if query:
            url += "?" + query.decode("latin-1")
        headers = [
            (k, v) for k, v in request.headers.raw if k.decode("latin-1") not in self.drop_request
        ]
        # Raw bytes go back as they come: ask only for what the client accepts.
        encoding = request.headers.get("accept-encoding", "identity")
        headers.append((b"accept-encoding", encoding.encode("latin-1")))
        if api_key:
            headers.append((b"authorization", f"Bearer {api_key}".encode("latin-1")))
        # Only the screened POSTs carry a body; a GET's was dropped at the edge.
        body = await request.body() if request.method == "POST" else b""
        req = client.build_request(
            request.method, url, headers=headers, content=body if body else None
        )
        t0 = time.perf_counter()
        try:
            resp = await client.send(req, stream=True)
        except httpx.TimeoutException:
            log.warning("upstream timeout after %.1fs: %s %s", timeout_s, request.method, path)
            self.requests_total.labels(outcome="timeout").inc()
            return _error(openai_errors.upstream_timeout(timeout_s))
        except httpx.HTTPError as exc:
            log.warning("upstream unreachable (%s): %s", type(exc).__name__, exc)
            self.requests_total.labels(outcome="unreachable").inc()
            return _error(openai_errors.upstream_unreachable(type(exc).__name__))
        self.upstream_seconds.observe(time.perf_counter() - t0)
        self.requests_total.labels(outcome=f"{resp.status_code // 100}xx").inc()
        return UpstreamResponse(resp)

    async def healthz(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        return JSONResponse(*health(self._firewall(request).status()))

    async def metrics(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.responses import Response

        from .. import metrics as fw_metrics

        status = self._firewall(request).status()
        fw_metrics.get().queue_depth.set(status.pool.queue_depth)
        return Response(generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})

    @staticmethod
    def _firewall(request: Request) -> Firewall:
        fw: Firewall = request.scope["state"][STATE_FIREWALL]
        return fw


def create_app(
    settings: Settings | None = None,
    firewall: Firewall | None = None,
    *,
    http_client: httpx.AsyncClient | None = None,
    policy: str | PolicyResolver | None = None,
    policy_header: str | None = None,
) -> Starlette:
    """The gateway as a Starlette app (:class:`Gateway`).

    :param settings: uses ``settings.server`` (upstream, key, timeout, body limit, block status)
        and, when ``firewall`` is None, builds the firewall from them at start-up.
    :param firewall: a firewall to share; not closed by the app. Otherwise the lifespan builds
        one and closes it on shutdown.
    :param http_client: an ``httpx.AsyncClient`` to share; otherwise one is built and closed.
    :param policy, policy_header: per-request policy choice, as in
        :class:`~alknet_firewall.integrations.asgi.FirewallMiddleware`.
    """
    gateway = Gateway(
        settings, firewall, http_client=http_client, policy=policy, policy_header=policy_header
    )
    return gateway.app()


def _error(reply: openai_errors.ErrorReply) -> Response:
    from starlette.responses import Response

    return Response(reply.content(), reply.status, reply.headers, "application/json")


class UpstreamResponse:
    """The upstream's response as an ASGI response, streamed as raw bytes; the upstream stream
    is closed when the response ends for any reason (finished, client disconnected, server
    shutting down)."""

    def __init__(self, upstream: httpx.Response) -> None:
        self.upstream = upstream

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import anyio
        from starlette.responses import StreamingResponse

        resp = self.upstream
        out = StreamingResponse(self._raw(), status_code=resp.status_code)
        out.raw_headers = [
            (k.lower(), v) for k, v in resp.headers.raw if k.lower().decode() not in _DROP_RESPONSE
        ]
        try:
            await out(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await resp.aclose()

    async def _raw(self) -> AsyncIterator[bytes]:
        import httpx

        try:
            async for chunk in self.upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            # Headers are out; the only honest signal left is an aborted response.
            log.warning("upstream failed mid-response (%s): %s", type(exc).__name__, exc)
            raise


# --------------------------------------------------------------------------------------------
# ``alknet-firewall serve``
# --------------------------------------------------------------------------------------------
def add_serve_command(sub: Any) -> None:
    """Register ``serve`` on the CLI's sub-parsers (imports nothing heavy)."""
    from .serving import add_server_arguments

    p = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible screening gateway",
        description="Screen OpenAI API requests, then forward them to --upstream.",
    )
    p.add_argument(
        "--upstream",
        default=None,
        help="upstream base URL as the openai client takes it, e.g. https://api.openai.com/v1 "
        "(default: server.upstream)",
    )
    add_server_arguments(
        p, section="server", codebook_help="codebook file (default: configured)", log_level="info"
    )
    p.set_defaults(func=cmd_serve)


def _serve_settings(args: argparse.Namespace) -> Settings:
    from pathlib import Path

    from ..config import load_settings

    given = vars(args)  # --config is absent unless given after 'serve' (SUPPRESS)
    settings = load_settings(given.get("config"))
    server = {k: given[k] for k in ("upstream", "host", "port") if given.get(k) is not None}
    update: dict[str, Any] = {"server": server}
    if given.get("codebook"):
        update["detection"] = {"codebook": Path(given["codebook"])}
    settings = settings.merged(**update)
    check_upstream(settings.server.upstream)
    check_exposure(settings.server)
    return settings


def check_exposure(server: Any) -> None:
    """Refuse an open relay: an upstream key, no client keys, a non-loopback host."""
    if not server.upstream_api_key or server.allow_anonymous or is_loopback(server.host):
        return
    if client_keys(server):
        return
    raise ConfigurationError(
        f"refusing to serve on {server.host}: server.upstream_api_key is set and no "
        "server.client_keys are configured, so anyone who reaches the gateway would spend that "
        "key. Set server.client_keys (or server.client_keys_file), bind 127.0.0.1, or set "
        "server.allow_anonymous: true if another layer authenticates clients"
    )


def _mode(server: Any) -> str:
    if not server.upstream_api_key:
        return "passthrough: clients' own keys go upstream"
    n = len(client_keys(server))
    return f"{n} client key(s)" if n else "anonymous: no client keys"


def _start_metrics(server: Any, fw: Firewall) -> Any:
    """``/metrics`` on its own listener (``server.metrics_port``): a prometheus_client thread."""
    from prometheus_client import start_http_server

    from .. import metrics as fw_metrics

    _metrics()  # register the gateway's own metrics
    fw_metrics.get().queue_depth.set_function(fw.pool.queue_depth)
    started = start_http_server(server.metrics_port, addr=server.metrics_host)
    return started[0] if isinstance(started, tuple) else None


def cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import require

    for module in ("starlette", "uvicorn", "httpx"):
        require(module, "server")
    from ..firewall import Firewall
    from .serving import serve

    settings = _serve_settings(args)
    s = settings.server
    # Built before serving so that a bad model or codebook fails here, with a clear message.
    with Firewall(settings) as fw:
        app = create_app(settings, fw)
        metrics_server = _start_metrics(s, fw) if s.metrics_port is not None else None
        where = f", metrics on {s.metrics_host}:{s.metrics_port}" if metrics_server else ""
        sys.stderr.write(
            f"alknet-firewall gateway on http://{s.host}:{s.port}/v1 -> {s.upstream} "
            f"(codebook {fw.codebook.id}, policy {settings.default_policy!r}, "
            f"{_mode(s)}{where})\n"
        )
        sys.stderr.flush()
        try:
            code = serve(
                app,
                host=s.host,
                port=s.port,
                log_level=args.log_level,
                keepalive_s=s.keepalive_s,
                limit_concurrency=s.limit_concurrency,
                grace_s=s.shutdown_grace_s,
            )
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
    return code


def health(status: FirewallStatus) -> tuple[dict[str, Any], int]:
    """``/healthz``: its body and status (503 once the firewall is closed). ``model``: what runs
    it (backend, dtype and why, device)."""
    model = asdict(status.model)
    body = {
        "status": "closed" if status.closed else "ok",
        "codebook": status.codebook_id,
        "queue_depth": status.pool.queue_depth,
        "model": {k: model[k] for k in _HEALTH_MODEL if model[k] is not None},
    }
    return body, 503 if status.closed else 200


_HEALTH_MODEL = ("backend", "dtype", "dtype_reason", "device")
