"""The console as a Starlette app: one HTML page, its static files and a small JSON API.

Size (~460 lines): the routes, their auth (sessions, cookies) and the JSON payloads they
share; the page itself and the highlighting are separate files.

Routes (relative to where the app is mounted):

* ``GET  /``               the page (``static/index.html``);
* ``GET  /static/{file}``  its CSS and JavaScript (public: no data in them);
* ``POST /login``          form field ``key``: checked with ``authorize``, sets a session cookie;
* ``POST /logout``         ends the session;
* ``GET  /api/stats``      live figures (:func:`stats`);
* ``GET  /api/recent``     ``?limit=N`` newest verdicts, never their text unless ``log_text``;
* ``POST /api/screen``     ``{"text": "..."} | {"messages": [...]}, "policy"?`` → the verdict
  and the highlighted span, through ``await firewall.ascreen`` like any request (recorded with
  ``source: "console"``).

With an ``authorize`` callable every route but the static files needs either a header the
callable accepts (``Authorization: Bearer <key>`` for scripts) or the session cookie the login
form sets (browsers); otherwise 401 (the page answers with a key form).
"""

from __future__ import annotations

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

from ...errors import BadInputError, FirewallError
from ...recorder import WINDOWS
from .. import openai_errors
from ..asgi import STATE_FIREWALL
from .highlight import highlight

if TYPE_CHECKING:  # pragma: no cover
    from starlette.applications import Starlette
    from starlette.requests import Request

    from ...firewall import Firewall

__all__ = [
    "COOKIE",
    "MAX_RECENT",
    "MAX_SCREEN_BYTES",
    "MAX_SESSIONS",
    "SESSION_TTL_S",
    "Authorizer",
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
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    page = _static("index.html")
    login_page = _static("login.html")
    assets = {name: _static(name) for name in _STATIC_TYPES}
    sessions = _Sessions()

    def get_firewall(request: Request) -> Firewall | None:
        if firewall is not None:
            return firewall
        return (request.scope.get("state") or {}).get(STATE_FIREWALL)

    def base(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/") + "/"

    async def check(request: Request, credentials: Request | None = None) -> bool:
        if authorize is None:
            return True
        if credentials is None and sessions.valid(request.cookies.get(COOKIE)):
            return True
        ok = authorize(credentials or request)
        if inspect.isawaitable(ok):
            ok = await ok
        return bool(ok)

    def error(status: int, message: str, code: str, **headers: str) -> Response:
        body = openai_errors.error_body(
            message, type="server_error" if status >= 500 else "invalid_request_error", code=code
        )
        return JSONResponse(body, status, headers={**_SECURITY_HEADERS, **headers})

    def unauthorized() -> Response:
        return error(
            401,
            "This console needs a key: send 'Authorization: Bearer <key>' or log in on the page.",
            "invalid_api_key",
            **{"www-authenticate": 'Bearer realm="alknet-firewall console"'},
        )

    def html(template: str, request: Request, status: int = 200, **extra: str) -> Response:
        body = template.replace("%BASE%", _attr(base(request)))
        for k, v in extra.items():
            body = body.replace(f"%{k}%", v)
        return HTMLResponse(body, status, headers=_SECURITY_HEADERS)

    def same_origin(request: Request) -> bool:
        """Refuse POSTs another site's page makes (the session cookie is SameSite=Strict too):
        browsers say where a request comes from (Sec-Fetch-Site, else Origin); scripts don't."""
        site = request.headers.get("sec-fetch-site")
        if site is not None:
            return site in ("same-origin", "none")
        origin = request.headers.get("origin")
        if origin is None:
            return True
        return urlsplit(origin).netloc == request.headers.get("host", "")

    def firewall_or_503(request: Request) -> Firewall | Response:
        fw = get_firewall(request)
        if fw is None:
            reply = openai_errors.firewall_unavailable()
            return Response(reply.content(), reply.status, reply.headers, "application/json")
        return fw

    async def index(request: Request) -> Response:
        if not await check(request):
            return html(login_page, request, 401, MESSAGE="")
        return html(page, request)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return Response("not found", 404, media_type="text/plain")
        headers = {**_SECURITY_HEADERS, "cache-control": "no-cache"}
        return Response(assets[name], 200, headers=headers, media_type=_STATIC_TYPES[name])

    async def login(request: Request) -> Response:
        if authorize is None:
            return RedirectResponse(base(request), 303)
        if not same_origin(request):
            return error(403, "Cross-site login refused.", "forbidden")
        raw = await request.body()
        if len(raw) > 4096:
            return error(413, "Login form too large.", "request_too_large")
        key = (parse_qs(raw.decode("utf-8", "replace")).get("key") or [""])[0].strip()
        probe = None
        if key:
            scope = dict(request.scope)
            scope["headers"] = [
                (k, v) for k, v in request.scope["headers"] if k.lower() != b"authorization"
            ] + [(b"authorization", f"Bearer {key}".encode("latin-1", "replace"))]
            probe = Request(scope)
        if probe is None or not await check(request, probe):
            return html(login_page, request, 401, MESSAGE="That key was not accepted.")
        resp = RedirectResponse(base(request), 303, headers=_SECURITY_HEADERS)
        resp.set_cookie(
            COOKIE,
            sessions.new(),
            max_age=int(SESSION_TTL_S),
            path=base(request),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return resp

    async def logout(request: Request) -> Response:
        sessions.drop(request.cookies.get(COOKIE))
        resp = RedirectResponse(base(request), 303, headers=_SECURITY_HEADERS)
        resp.delete_cookie(COOKIE, path=base(request))
        return resp

    async def api_stats(request: Request) -> Response:
        if not await check(request):
            return unauthorized()
        fw = firewall_or_503(request)
        if isinstance(fw, Response):
            return fw
        return JSONResponse({**stats(fw), "auth": authorize is not None}, headers=_SECURITY_HEADERS)

    async def api_recent(request: Request) -> Response:
        if not await check(request):
            return unauthorized()
        fw = firewall_or_503(request)
        if isinstance(fw, Response):
            return fw
        try:
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            return error(400, "limit must be an integer.", "bad_input")
        limit = max(0, min(limit, MAX_RECENT))
        show = fw.recorder.keep_text and log_text is not False
        return JSONResponse(
            {"recent": recent(fw, limit, show_text=show), "log_text": show},
            headers=_SECURITY_HEADERS,
        )

    async def api_screen(request: Request) -> Response:
        if not await check(request):
            return unauthorized()
        if not same_origin(request):
            return error(403, "Cross-site request refused.", "forbidden")
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json":
            return error(415, "Send the body as application/json.", "unsupported_media_type")
        fw = firewall_or_503(request)
        if isinstance(fw, Response):
            return fw
        raw = await request.body()
        if len(raw) > MAX_SCREEN_BYTES:
            return error(413, f"Body above {MAX_SCREEN_BYTES} bytes.", "request_too_large")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return error(400, f"The body must be JSON: {exc}", "invalid_json")
        if not isinstance(body, dict):
            return error(400, "The body must be a JSON object.", "bad_input")
        has_text, has_messages = body.get("text") is not None, body.get("messages") is not None
        if has_text == has_messages:
            return error(400, "Send exactly one of 'text' or 'messages'.", "bad_input")
        data = body["text"] if has_text else body["messages"]
        if has_text and not isinstance(data, str):
            return error(400, "'text' must be a string.", "bad_input")
        policy = body.get("policy") or None
        known = fw.settings.policies
        if policy is not None and (not isinstance(policy, str) or policy not in known):
            return error(400, f"Unknown policy {policy!r}.", "unknown_policy")
        try:
            result = await screen(fw, data, policy)
        except BadInputError as exc:
            return error(openai_errors.status_for(exc), str(exc), exc.code)
        except FirewallError as exc:
            reply = openai_errors.from_exception(exc)
            return Response(reply.content(), reply.status, reply.headers, "application/json")
        return JSONResponse(result, headers=_SECURITY_HEADERS)

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/stats", api_stats, methods=["GET"]),
        Route("/api/recent", api_recent, methods=["GET"]),
        Route("/api/screen", api_screen, methods=["POST"]),
    ]
    return Starlette(routes=routes)


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
