"""The console as a Starlette app: one HTML page, its static files and a small JSON API.

Size (~540 lines): the :class:`Console` (its routes, authentication once per request by
Starlette's ``AuthenticationMiddleware`` with sessions and cookies, guarded endpoints) and the
JSON payloads they share; the page itself and the highlighting are separate files.

Routes (relative to where the app is mounted):

* ``GET  /``               the page (``static/index.html``);
* ``GET  /static/{file}``  its CSS and JavaScript (public: no data in them);
* ``POST /login``          form field ``key``: checked with ``authorize``, sets a session cookie;
* ``POST /logout``         ends the session;
* ``GET  /api/stats``      live figures (:func:`stats`);
* ``GET  /api/recent``     ``?limit=N`` newest verdicts, never their text unless ``log_text``;
* ``POST /api/screen``     ``{"text": "..."} | {"messages": [...]}, "policy"?`` → the verdict
  and the highlighted span, through ``await firewall.ascreen_recorded`` like any request
  (recorded with ``source: "console"``).

With an ``authorize`` callable every route but the static files and login/logout needs the
:data:`ADMIN` scope: a header the callable accepts (``Authorization: Bearer <key>`` for
scripts) or the session cookie the login form sets (browsers); otherwise 401 (the page answers
with a key form).
"""

from __future__ import annotations

import functools
import inspect
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from ...errors import FirewallError, UnknownPolicyError
from ...recorder import WINDOWS
from .. import openai_errors
from ..asgi import STATE_FIREWALL
from .highlight import highlight

if TYPE_CHECKING:  # pragma: no cover
    from starlette.applications import Starlette
    from starlette.authentication import AuthCredentials, BaseUser
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import Response

    from ...firewall import Firewall

__all__ = [
    "ADMIN",
    "COOKIE",
    "MAX_RECENT",
    "MAX_SCREEN_BYTES",
    "MAX_SESSIONS",
    "SESSION_TTL_S",
    "Authorizer",
    "Console",
    "console_app",
    "gateway_authorizer",
    "gateway_console",
    "recent",
    "screen",
    "stats",
]


#: ``authorize(request) -> bool`` (may be async): does this request carry an accepted key?
Authorizer = Callable[["Request"], "bool | Awaitable[bool]"]

COOKIE = "alknet_console"
SESSION_TTL_S = 8 * 3600.0
MAX_SESSIONS = 1024
MAX_SCREEN_BYTES = 1024 * 1024
MAX_RECENT = 1000

_STATIC_TYPES = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def _static(name: str) -> str:
    return (resources.files(__package__) / "static" / name).read_text(encoding="utf-8")


class _Sessions:
    """Browser sessions after a successful login: random tokens in memory, bounded, expiring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: OrderedDict[str, float] = OrderedDict()

    def new(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + SESSION_TTL_S
            while len(self._tokens) > MAX_SESSIONS:
                self._tokens.popitem(last=False)
        return token

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        with self._lock:
            expiry = self._tokens.get(token)
            if expiry is None:
                return False
            if expiry < time.monotonic():
                del self._tokens[token]
                return False
            return True

    def drop(self, token: str | None) -> None:
        with self._lock:
            self._tokens.pop(token or "", None)


# --------------------------------------------------------------------------------------------
# What the API returns
# --------------------------------------------------------------------------------------------
def stats(fw: Firewall) -> dict[str, Any]:
    """Everything the live view shows (JSON-ready): :meth:`Firewall.status`, the recorder's
    windows and each policy's settings."""
    status = fw.status()
    snapshot = status.to_dict()
    return {
        "time": time.time(),
        "uptime_s": status.uptime_s,
        "windows": {name: fw.recorder.window(s) for name, s in WINDOWS.items()},
        "total": snapshot["counts"],
        "queue_depth": status.pool.queue_depth,
        "pool": snapshot["pool"],
        "model": snapshot["model"],
        "codebook": {"id": status.codebook_id, "signals": list(status.signals)},
        "default_policy": status.default_policy,
        "policies": {name: _policy(fw, name) for name in status.policies},
        "recent_capacity": status.recent_capacity,
        "log_text": status.log_text,
    }


def _policy(fw: Firewall, name: str) -> dict[str, Any]:
    pol = fw.settings.policy(name)
    return {
        "thresholds": fw.thresholds(pol),
        "signals": list(pol.signals),
        "actions": dict(pol.actions),
        "monitor": pol.monitor,
        "fail_mode": pol.fail_mode,
    }


def recent(fw: Firewall, limit: int, *, show_text: bool) -> list[dict[str, Any]]:
    """The newest records. Records of the try box (``source: console``) carry no digest: a
    digest of a text the operator chose, comparable with traffic digests, would let anyone
    with the console confirm a guess of a short message (a PIN) someone else sent."""
    out = []
    for r in fw.recorder.recent(limit):
        d = r.to_dict()
        if not show_text:
            d.pop("text", None)
        if d.get("source") == "console":
            d["digest"] = None
        out.append(d)
    return out


def _original_text(data: Any, message_index: int | None, roles: Any) -> str | None:
    from ...messages import extract_texts

    if isinstance(data, str):
        return data
    texts, _ = extract_texts(data, roles)
    return next((t for i, t in texts if i == message_index), None)


async def screen(fw: Firewall, data: Any, policy: str | None) -> dict[str, Any]:
    """Screen like a real request; the verdict, its record and the highlighted span."""
    from ...normalize import normalize

    done = await fw.ascreen_recorded(data, policy=policy, source="console")
    verdict, text = done.verdict, done.text
    hl = None
    if text is not None:
        roles = fw.settings.policy(policy or fw.settings.default_policy).roles
        original = _original_text(data, verdict.message_index, roles)
        seam = original is not None and text not in (original, normalize(original))
        hl = highlight(fw.model, text, verdict.window)
        hl = {
            "text": text,  # the text the model read (returned to the caller only, never stored)
            "message_index": verdict.message_index,
            "changed": original is None or text != original,
            "seam": seam,
            "span": hl,
        }
    record = done.record.to_dict()
    record["digest"] = None  # never comparable with traffic digests (see recent())
    return {"verdict": verdict.to_dict(), "record": record, "highlight": hl}


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------
#: The scope a request needs for everything but the static files (``request.auth.scopes``).
ADMIN = "admin"


class _KeyBackend:
    """Authentication, once per request (Starlette's ``AuthenticationBackend`` protocol): the
    :data:`ADMIN` scope for a live session cookie or credentials ``authorize`` accepts (for
    everyone without ``authorize``), none otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser]:
        from starlette.authentication import AuthCredentials, SimpleUser, UnauthenticatedUser
        from starlette.requests import Request

        console = self.console
        if console.sessions.valid(conn.cookies.get(COOKIE)) or await console.accepts(
            Request(conn.scope)
        ):
            return AuthCredentials([ADMIN]), SimpleUser("operator")
        return AuthCredentials(), UnauthenticatedUser()


Endpoint = Callable[["Console", "Request"], Awaitable["Response"]]


def _requires_admin(*, page: bool = False) -> Callable[[Endpoint], Endpoint]:
    """As Starlette's ``requires(ADMIN)``, answering 401: the key form for the page, an
    OpenAI-style error for the API."""

    def decorator(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(self: Console, request: Request) -> Response:
            if ADMIN in request.auth.scopes:
                return await endpoint(self, request)
            if page:
                return self.html(self.login_page, request, 401, MESSAGE="")
            return _reply(_UNAUTHORIZED)

        return guarded

    return decorator


_UNAUTHORIZED = openai_errors.unauthorized(
    "This console needs a key: send 'Authorization: Bearer <key>' or log in on the page.",
    realm="alknet-firewall console",
)


def _reply(reply: openai_errors.ErrorReply) -> Response:
    """An OpenAI-style error (:mod:`..openai_errors`) with the console's security headers."""
    from starlette.responses import Response

    headers = {**_SECURITY_HEADERS, **reply.headers}
    return Response(reply.content(), reply.status, headers, "application/json")


def _invalid(message: str, code: str, status: int = 400) -> Response:
    return _reply(openai_errors.reply(message, code, status))


class Console:
    """The operator console: the firewall it shows, who may see it, and its endpoints.

    :func:`console_app` builds its Starlette app; the arguments are that function's.
    """

    def __init__(
        self,
        firewall: Firewall | None = None,
        *,
        authorize: Authorizer | None = None,
        log_text: bool | None = None,
    ) -> None:
        self.firewall = firewall
        self.authorize = authorize
        self.log_text = log_text
        self.sessions = _Sessions()
        self.page = _static("index.html")
        self.login_page = _static("login.html")
        self.assets = {name: _static(name) for name in _STATIC_TYPES}

    def app(self) -> Starlette:
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.middleware.authentication import AuthenticationMiddleware
        from starlette.routing import Route

        routes = [
            Route("/", self.index, methods=["GET"]),
            Route("/static/{name}", self.static, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/api/stats", self.api_stats, methods=["GET"]),
            Route("/api/recent", self.api_recent, methods=["GET"]),
            Route("/api/screen", self.api_screen, methods=["POST"]),
        ]
        auth = Middleware(AuthenticationMiddleware, backend=_KeyBackend(self))  # type: ignore[arg-type]
        return Starlette(routes=routes, middleware=[auth])

    # -- helpers -------------------------------------------------------------------------------
    async def accepts(self, request: Request) -> bool:
        """Whether ``authorize`` accepts the request's credentials (True without one)."""
        if self.authorize is None:
            return True
        ok = self.authorize(request)
        if inspect.isawaitable(ok):
            ok = await ok
        return bool(ok)

    def firewall_for(self, request: Request) -> Firewall | None:
        if self.firewall is not None:
            return self.firewall
        return (request.scope.get("state") or {}).get(STATE_FIREWALL)

    def html(self, template: str, request: Request, status: int = 200, **extra: str) -> Response:
        from starlette.responses import HTMLResponse

        body = template.replace("%BASE%", _attr(_base(request)))
        for k, v in extra.items():
            body = body.replace(f"%{k}%", v)
        return HTMLResponse(body, status, headers=_SECURITY_HEADERS)

    # -- endpoints -----------------------------------------------------------------------------
    @_requires_admin(page=True)
    async def index(self, request: Request) -> Response:
        return self.html(self.page, request)

    async def static(self, request: Request) -> Response:
        from starlette.responses import Response

        name = request.path_params["name"]
        if name not in self.assets:
            return Response("not found", 404, media_type="text/plain")
        headers = {**_SECURITY_HEADERS, "cache-control": "no-cache"}
        return Response(self.assets[name], 200, headers=headers, media_type=_STATIC_TYPES[name])

    async def login(self, request: Request) -> Response:
        from starlette.requests import Request
        from starlette.responses import RedirectResponse

        if self.authorize is None:
            return RedirectResponse(_base(request), 303)
        if not _same_origin(request):
            return _invalid("Cross-site login refused.", "forbidden", 403)
        raw = await request.body()
        if len(raw) > 4096:
            return _invalid("Login form too large.", "request_too_large", 413)
        key = (parse_qs(raw.decode("utf-8", "replace")).get("key") or [""])[0].strip()
        accepted = False
        if key:
            scope = dict(request.scope)
            scope["headers"] = [
                (k, v) for k, v in request.scope["headers"] if k.lower() != b"authorization"
            ] + [(b"authorization", f"Bearer {key}".encode("latin-1", "replace"))]
            accepted = await self.accepts(Request(scope))
        if not accepted:
            return self.html(self.login_page, request, 401, MESSAGE="That key was not accepted.")
        resp = RedirectResponse(_base(request), 303, headers=_SECURITY_HEADERS)
        resp.set_cookie(
            COOKIE,
            self.sessions.new(),
            max_age=int(SESSION_TTL_S),
            path=_base(request),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return resp

    async def logout(self, request: Request) -> Response:
        from starlette.responses import RedirectResponse

        self.sessions.drop(request.cookies.get(COOKIE))
        resp = RedirectResponse(_base(request), 303, headers=_SECURITY_HEADERS)
        resp.delete_cookie(COOKIE, path=_base(request))
        return resp

    @_requires_admin()
    async def api_stats(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        fw = self.firewall_for(request)
        if fw is None:
            return _reply(openai_errors.firewall_unavailable())
        body = {**stats(fw), "auth": self.authorize is not None}
        return JSONResponse(body, headers=_SECURITY_HEADERS)

    @_requires_admin()
    async def api_recent(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        fw = self.firewall_for(request)
        if fw is None:
            return _reply(openai_errors.firewall_unavailable())
        try:
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            return _invalid("limit must be an integer.", "bad_input")
        limit = max(0, min(limit, MAX_RECENT))
        show = fw.recorder.keep_text and self.log_text is not False
        return JSONResponse(
            {"recent": recent(fw, limit, show_text=show), "log_text": show},
            headers=_SECURITY_HEADERS,
        )

    @_requires_admin()
    async def api_screen(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        if not _same_origin(request):
            return _invalid("Cross-site request refused.", "forbidden", 403)
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json":
            return _invalid("Send the body as application/json.", "unsupported_media_type", 415)
        fw = self.firewall_for(request)
        if fw is None:
            return _reply(openai_errors.firewall_unavailable())
        raw = await request.body()
        if len(raw) > MAX_SCREEN_BYTES:
            return _invalid(f"Body above {MAX_SCREEN_BYTES} bytes.", "request_too_large", 413)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return _invalid(f"The body must be JSON: {exc}", "invalid_json")
        if not isinstance(body, dict):
            return _invalid("The body must be a JSON object.", "bad_input")
        has_text, has_messages = body.get("text") is not None, body.get("messages") is not None
        if has_text == has_messages:
            return _invalid("Send exactly one of 'text' or 'messages'.", "bad_input")
        data = body["text"] if has_text else body["messages"]
        if has_text and not isinstance(data, str):
            return _invalid("'text' must be a string.", "bad_input")
        policy = body.get("policy") or None
        if policy is not None and not isinstance(policy, str):
            return _invalid("'policy' must be a string.", "unknown_policy")
        try:
            result = await screen(fw, data, policy)
        except UnknownPolicyError as exc:
            if policy is None:  # the configured default: the operator's mistake
                return _reply(openai_errors.from_exception(exc))
            return _reply(openai_errors.unknown_policy(policy))
        except FirewallError as exc:
            return _reply(openai_errors.from_exception(exc))
        return JSONResponse(result, headers=_SECURITY_HEADERS)


def console_app(
    firewall: Firewall | None = None,
    *,
    authorize: Authorizer | None = None,
    log_text: bool | None = None,
) -> Starlette:
    """The operator console as an ASGI app: ``app.mount("/firewall", console_app(fw))``.

    :param firewall: the firewall to show. ``None``: looked up per request in
        ``scope["state"]["alknet_firewall"]`` (lifespan state, as the gateway does).
    :param authorize: ``authorize(request) -> bool`` (sync or async): accepts a request's key
        (e.g. its ``Authorization`` header). ``None``: no key needed — mount it only where
        whoever reaches it may see it.
    :param log_text: show message text in the recent list. ``None`` follows the firewall's
        ``log_text`` (texts are only kept when it is on); ``False`` hides them even then.
    """
    return Console(firewall, authorize=authorize, log_text=log_text).app()


def _base(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") + "/"


def _same_origin(request: Request) -> bool:
    """Refuse POSTs another site's page makes (the session cookie is SameSite=Strict too):
    browsers say where a request comes from (Sec-Fetch-Site, else Origin); scripts don't."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def gateway_authorizer(server: Any) -> Authorizer:
    """The gateway's rule: a key of ``server.admin_keys``. A client key never opens the
    console (a client could read others' verdicts and try texts against them). With no keys
    configured at all, loopback clients only (the address :mod:`..edge` resolved, so that a
    same-host proxy does not make everyone loopback); with client keys but no admin keys, no
    one."""
    from ..auth import admin_keys, client_keys

    keys = admin_keys(server)
    if keys:
        return lambda request: keys.allows(request.scope)
    if client_keys(server):
        return _nobody
    return _loopback_only


def _nobody(request: Request) -> bool:
    return False


def _loopback_only(request: Request) -> bool:
    from ..edge import client_address, is_loopback

    host = client_address(request.scope)
    return host is not None and host != "localhost" and is_loopback(host)


def gateway_console(server: Any, firewall: Firewall | None = None) -> Starlette:
    """The console as the gateway mounts it at ``/console`` (:func:`gateway_authorizer`)."""
    return console_app(firewall, authorize=gateway_authorizer(server))


def _attr(value: str) -> str:
    """Escape for an HTML attribute value."""
    return (
        value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    )
