"""The gateway's front door: what every request must pass before any route sees it.

:class:`Edge` is raw ASGI middleware, the outermost layer of the gateway (issue 19). In order:

1. **client address**: ``X-Forwarded-For`` is believed only from ``server.trusted_proxies``
   (the client is its right-most untrusted address; a trusted proxy that sends none leaves the
   client unknown), so a same-host proxy does not make every client "loopback";
2. **Host allow-list** (DNS rebinding): ``server.allowed_hosts``, by default the loopback
   names when bound to loopback; other names get 421;
3. **raw path**: dot segments (``.``, ``..``), encoded dots, slashes and backslashes
   (``%2e``, ``%2f``, ``%5c``, ``\\``) are refused 400 in ``scope["raw_path"]`` and the
   decoded path alike, so no path can be resolved into another upstream route;
4. **cross-site browsers**: a request a browser marks as coming from another site
   (``Sec-Fetch-Site: cross-site | same-site``, or an ``Origin`` that is not the gateway's own)
   gets 403 unless its origin is one of ``server.cors_origins`` (a followed link, a top-level
   ``GET`` navigation, is not refused: the other site cannot read its answer);
5. **JSON routes** need a JSON ``Content-Type`` (415): a ``no-cors`` page can only send
   ``text/plain`` or no type at all;
6. **bodies on every other route**: the same size limit (413) and body timeout (408) as the
   screened routes, read before the route runs; a ``GET``/``HEAD``/``OPTIONS``/``DELETE`` body
   is read and dropped, never passed on (the screened routes are bounded by
   :class:`~alknet_firewall.integrations.asgi.FirewallMiddleware` itself).

Refusals are OpenAI-style errors (:mod:`openai_errors`), sent after the body is read and
thrown away (bounded), as everywhere in the gateway.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import ConfigurationError
from . import openai_errors
from .asgi import _is_json
from .bodies import ASGIApp, BodyLimits, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


#: Host names a loopback-bound gateway answers by default (any port).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
#: ``scope["state"]`` key of the client address :class:`Edge` resolved (``None``: unknown).
STATE_CLIENT = "alknet_firewall_client"
#: Methods whose body is never passed on.
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
#: Encoded ``.``, ``/``, ``\`` and ``%`` itself (double encoding), lower-cased.
_ENCODED = (b"%2e", b"%2f", b"%5c", b"%25")
_FORWARDING = (b"x-forwarded-for", b"forwarded", b"x-real-ip")


def is_loopback(host: str) -> bool:
    """Whether a bind address or host name is loopback (``localhost``, ``127.x``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(
    bind_host: str, configured: Iterable[str] | None
) -> frozenset[str] | None:
    """The Host names to accept: ``configured`` if given (``'*'``: all, ``None`` returned);
    else the loopback names (and the bind address) when bound to loopback; else all."""
    if configured is not None:
        names = frozenset(_host_name(h) for h in configured)
        return None if "*" in names else names
    if is_loopback(bind_host):
        return frozenset({*LOOPBACK_HOSTS, _host_name(bind_host)})
    return None


def _host_name(host: str) -> str:
    """``Host`` header value → its name, lower-case, without port or trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    if ":" in host and host.count(":") == 1:
        host = host.partition(":")[0]
    elif ":" in host:  # a bare IPv6 address as configured
        return f"[{host}]"
    return host.rstrip(".")


def parse_networks(entries: Iterable[str], source: str) -> tuple[Any, ...]:
    nets = []
    for n, entry in enumerate(entries):
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigurationError(
                f"{source}[{n}] = {entry!r} is not an IP address or CIDR (e.g. 10.0.0.0/8)"
            ) from None
    return tuple(nets)


def _in(addr: str, nets: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in nets)


def _headers(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers") or () if k.lower() == name]


def resolve_client(scope: Scope, trusted: tuple[Any, ...]) -> str | None:
    """The client's address: the peer, or behind trusted proxies the right-most untrusted
    ``X-Forwarded-For`` entry. ``None`` when unknown: a trusted proxy that says nothing, or an
    untrusted peer that claims to forward for someone else."""
    peer = (scope.get("client") or (None,))[0]
    forwarded = any(_headers(scope, h) for h in _FORWARDING)
    if peer is None:
        return None
    if not trusted or not _in(peer, trusted):
        # A forwarding header from an untrusted peer: some proxy we were not told about is in
        # front, so the peer is not the client (it may be a same-host proxy: not "loopback").
        return None if forwarded else peer
    chain = [a.strip() for v in _headers(scope, b"x-forwarded-for") for a in v.split(",")]
    for addr in reversed(chain):
        if not addr:
            continue
        if not _in(addr, trusted):
            return addr if _valid_ip(addr) else None
    return None


def _valid_ip(addr: str) -> bool:
    try:
        ipaddress.ip_address(addr.strip("[]"))
        return True
    except ValueError:
        return False


def client_address(scope: Scope) -> str | None:
    """The client address :class:`Edge` resolved, else the peer's (apps without the edge)."""
    state = scope.get("state") or {}
    if STATE_CLIENT in state:
        return state[STATE_CLIENT]
    return resolve_client(scope, ())


def bad_path(scope: Scope) -> bool:
    """Dot segments, encoded dots/slashes/backslashes/percents, or backslashes in the path."""
    raw = scope.get("raw_path") or scope.get("path", "").encode("latin-1", "replace")
    raw = raw.partition(b"?")[0]
    low = raw.lower()
    if b"\\" in raw or any(e in low for e in _ENCODED):
        return True
    for path in (raw.decode("latin-1"), scope.get("path", ""), unquote(raw.decode("latin-1"))):
        if "\\" in path or any(seg in (".", "..") for seg in path.split("/")):
            return True
    return False


def _same_origin(origin: str, scope: Scope) -> bool:
    host = next(iter(_headers(scope, b"host")), "")
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc.lower() == host.strip().lower()


class Edge:
    """ASGI middleware: the checks of the module doc, then the app.

    :param allowed_hosts: Host names accepted (lower-case, ``[::1]`` with brackets); ``None``:
        all (:func:`default_allowed_hosts` computes it from the settings).
    :param cors_origins: origins whose cross-site browser requests are let through.
    :param trusted_proxies: networks whose ``X-Forwarded-For`` is believed.
    :param json_paths: paths whose ``POST`` needs a JSON ``Content-Type`` and whose body the
        next layer bounds itself (the screened routes).
    :param json_only: more paths whose ``POST`` needs a JSON ``Content-Type`` (their body is
        bounded here).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: frozenset[str] | None,
        cors_origins: Iterable[str] = (),
        trusted_proxies: Iterable[str] = (),
        json_paths: Iterable[str] = (),
        json_only: Iterable[str] = (),
        max_body_bytes: int,
        discard_bytes: int,
        body_timeout_s: float | None,
    ) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.cors_origins = frozenset(o.rstrip("/").lower() for o in cors_origins)
        self.trusted = parse_networks(trusted_proxies, "server.trusted_proxies")
        self.json_paths = frozenset(json_paths)
        self.json_only = frozenset(json_only)
        self.max_body_bytes = max_body_bytes
        self.discard_bytes = discard_bytes
        self.body_timeout_s = body_timeout_s
        self.body_limits = BodyLimits(max_body_bytes, discard_bytes, body_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = resolve_client(scope, self.trusted)
        scope.setdefault("state", {})[STATE_CLIENT] = client
        reply = self.check(scope)
        if reply is not None:
            await self.body_limits.refuse(scope, reply, receive, send)
            return
        method = scope.get("method", "GET")
        path = scope.get("path", "")
        if method == "POST" and path in self.json_paths:
            await self.app(scope, receive, send)  # bounded by the screening middleware
            return
        await self._bounded(scope, receive, send, drop=method in _BODYLESS)

    def check(self, scope: Scope) -> openai_errors.ErrorReply | None:
        """The refusal for this request's head, or ``None``."""
        if self.allowed_hosts is not None:
            hosts = _headers(scope, b"host")
            if len(hosts) != 1 or _host_name(hosts[0]) not in self.allowed_hosts:
                log.warning("refused a request for host %r", hosts[:1])
                return openai_errors.misdirected_host()
        if bad_path(scope):
            return openai_errors.invalid_path()
        if self._cross_site(scope):
            return openai_errors.cross_site()
        path = scope.get("path", "")
        if scope.get("method") == "POST" and (path in self.json_paths or path in self.json_only):
            types = _headers(scope, b"content-type")
            if len(types) != 1 or not _is_json(types[0]):
                return openai_errors.unsupported_media_type(types[0] if types else "(none)")
        return None

    def _cross_site(self, scope: Scope) -> bool:
        origins = _headers(scope, b"origin")
        origin = origins[0].strip() if origins else None
        if origin is not None and origin.rstrip("/").lower() in self.cors_origins:
            return False
        site = next(iter(_headers(scope, b"sec-fetch-site")), None)
        if site is not None and site.strip().lower() in ("cross-site", "same-site"):
            # A link followed to the console page is a top-level GET: the other site cannot
            # read the answer, and the SameSite=Strict cookie is not sent with it.
            mode = next(iter(_headers(scope, b"sec-fetch-mode")), "").strip().lower()
            return not (mode == "navigate" and scope.get("method") in ("GET", "HEAD"))
        return origin is not None and not _same_origin(origin, scope)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, *, drop: bool) -> None:
        """Read the body within the limits, then run the app on it (or on no body)."""
        data = await self.body_limits.read(scope, receive, send)
        if data is None:
            return
        body = b"" if drop else data
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if drop and data:
            # A body on a GET: gone here, and the forwarded request has no Content-Length.
            scope["headers"] = [
                (k, v)
                for k, v in scope.get("headers") or ()
                if k.lower() not in (b"content-length", b"transfer-encoding")
            ]
        await self.app(scope, replay, send)


__all__ = [
    "LOOPBACK_HOSTS",
    "STATE_CLIENT",
    "Edge",
    "bad_path",
    "client_address",
    "default_allowed_hosts",
    "is_loopback",
    "resolve_client",
]
