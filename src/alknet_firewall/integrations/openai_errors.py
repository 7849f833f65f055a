"""OpenAI-style error bodies and HTTP statuses, shared by every HTTP integration.

The body has the shape OpenAI clients parse (``openai.APIStatusError.body``)::

    {"error": {"message": "...", "type": "...", "code": "...", "param": null,
               "verdict": {...}}}        # "verdict" only when the firewall produced one

Statuses:

=====================================  ======  ===========================================
what                                   status  code
=====================================  ======  ===========================================
verdict ``block``                      400*    ``content_filter`` (*``block_status``)
fail-closed verdict (screening error)  503     the verdict's ``error_code``
:class:`BadInputError`                 400     ``bad_input``
:class:`InputTooLargeError`, big body  413     ``input_too_large`` / ``request_too_large``
:class:`OverloadError`                 429     ``overloaded`` (with ``Retry-After``)
:class:`FirewallClosedError`           503     ``firewall_closed``
invalid JSON body                      400     ``invalid_json``
missing or unknown client key          401     ``invalid_api_key``
cross-site browser request             403     ``cross_site_request``
``Host`` not in ``allowed_hosts``      421     ``misdirected_request``
dot segments, encoded ``/`` in path    400     ``invalid_path``
not ``application/json`` on a JSON API 415     ``unsupported_media_type``
body not received in time              408     ``request_timeout``
server shutting down                   503     ``shutting_down``
upstream unreachable / refused         502     ``upstream_unreachable``
upstream timeout                       504     ``upstream_timeout``
=====================================  ======  ===========================================

Nothing here imports a web framework: an :class:`ErrorReply` is sent over raw ASGI
(:meth:`ErrorReply.send`) or turned into any framework's response from ``status``,
:meth:`ErrorReply.content` and ``headers``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .. import errors

if TYPE_CHECKING:  # pragma: no cover
    from ..firewall import Verdict

__all__ = [
    "BLOCKED_CODE",
    "INVALID_REQUEST",
    "PERMANENT_CODES",
    "RATE_LIMIT",
    "SERVER_ERROR",
    "STATUSES",
    "ASGISend",
    "ErrorReply",
    "blocked",
    "body_too_large",
    "cross_site",
    "error_body",
    "firewall_not_configured",
    "firewall_unavailable",
    "from_exception",
    "invalid_json",
    "invalid_path",
    "misdirected_host",
    "reply",
    "request_timeout",
    "shutting_down",
    "status_for",
    "unauthorized",
    "unknown_policy",
    "unsupported_media_type",
    "upstream_timeout",
    "upstream_unreachable",
]


log = logging.getLogger(__name__)

ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: ``type`` field by status class, as OpenAI uses them.
INVALID_REQUEST = "invalid_request_error"
RATE_LIMIT = "rate_limit_error"
SERVER_ERROR = "server_error"
#: ``code`` of a blocked request (the code Azure OpenAI's content filter uses).
BLOCKED_CODE = "content_filter"


@dataclass(frozen=True)
class ErrorReply:
    """One OpenAI-style error response: status, JSON body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def code(self) -> str | None:
        return self.body["error"].get("code")

    def content(self) -> bytes:
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def raw_headers(self, content: bytes) -> list[tuple[bytes, bytes]]:
        raw = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode("ascii")),
        ]
        raw.extend(
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()
        )
        return raw

    def closing(self) -> ErrorReply:
        """This reply with ``Connection: close``: the server ends the connection after it (a
        body that was not read whole, a slow client)."""
        return replace(self, headers={**self.headers, "connection": "close"})

    async def send(self, send: ASGISend) -> None:
        """Send this error as a complete ASGI HTTP response."""
        content = self.content()
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": self.raw_headers(content),
            }
        )
        await send({"type": "http.response.body", "body": content, "more_body": False})


def error_body(
    message: str,
    *,
    type: str,
    code: str | None,
    param: str | None = None,
    verdict: Verdict | None = None,
) -> dict[str, Any]:
    """``{"error": {...}}`` as OpenAI returns it, with the verdict when there is one."""
    err: dict[str, Any] = {"message": message, "type": type, "code": code, "param": param}
    if verdict is not None:
        err["verdict"] = verdict.to_dict()
    return {"error": err}


#: Verdict error codes that retrying cannot fix (an installation or configuration problem) and
#: what each means: their 503 says so and carries no Retry-After (the details stay in the log).
PERMANENT_CODES: dict[str, str] = {
    "model_not_found": "the firewall's activation model is not installed",
    "dependency_missing": "a package the firewall needs (torch or onnxruntime) is not installed",
    "codebook_error": "the firewall's codebook cannot be read",
    "codebook_mismatch": "the firewall's codebook does not match its model",
    "configuration_error": "the firewall's settings are invalid",
}


def _type_for(status: int) -> str:
    if status == 429:
        return RATE_LIMIT
    return SERVER_ERROR if status >= 500 else INVALID_REQUEST


def _verdict_headers(verdict: Verdict | None) -> dict[str, str]:
    return dict(verdict.headers()) if verdict is not None else {}


def blocked(verdict: Verdict, status: int = 400) -> ErrorReply:
    """The reply to a request whose verdict is ``block``.

    A fail-closed verdict (screening failed, ``verdict.error_code`` set) is not the client's
    fault: it answers 503 with the verdict's error code, and ``Retry-After`` unless retrying
    cannot help (:data:`PERMANENT_CODES`: the message says what is wrong). The error's
    text (model server URLs, paths, library internals) is logged, never sent: the client's
    verdict carries the code in its ``error`` field.
    """
    if verdict.error_code:
        log.warning(
            "screening failed (%s), policy %r fails closed: %s",
            verdict.error_code,
            verdict.policy,
            verdict.error,
        )
        what = PERMANENT_CODES.get(verdict.error_code)
        msg = (
            f"Request not forwarded: screening failed ({verdict.error_code}) and the "
            f"policy {verdict.policy!r} fails closed. "
            + (
                f"Retrying cannot help: {what}; the firewall's operator must fix this (the "
                "server's log says how)."
                if what
                else "Retry later."
            )
        )
        body = error_body(msg, type=SERVER_ERROR, code=verdict.error_code, verdict=verdict)
        body["error"]["verdict"]["error"] = verdict.error_code
        if what:
            return ErrorReply(503, body, _verdict_headers(verdict))
        return ErrorReply(503, body, {"retry-after": "1", **_verdict_headers(verdict)})
    where = f" in message {verdict.message_index}" if verdict.message_index is not None else ""
    msg = (
        f"Request blocked by alknet-firewall: {verdict.level} {verdict.signal or 'risk'} "
        f"score {verdict.score:.2f}{where} (policy {verdict.policy!r})."
    )
    body = error_body(msg, type=_type_for(status), code=BLOCKED_CODE, verdict=verdict)
    return ErrorReply(status, body, _verdict_headers(verdict))


#: HTTP status of the errors screening raises, the most specific class first; any other: 500.
STATUSES: tuple[tuple[type[errors.FirewallError], int], ...] = (
    (errors.InputTooLargeError, 413),
    (errors.BadInputError, 400),
    (errors.OverloadError, 429),
    (errors.FirewallClosedError, 503),
    (errors.ScreenTimeoutError, 503),
)


def status_for(exc: BaseException) -> int:
    """HTTP status for an error raised while screening (:data:`STATUSES`)."""
    return next((status for cls, status in STATUSES if isinstance(exc, cls)), 500)


def from_exception(exc: BaseException, *, verdict: Verdict | None = None) -> ErrorReply:
    """The reply to an exception raised while screening (any :class:`FirewallError`)."""
    status = status_for(exc)
    code = exc.code if isinstance(exc, errors.FirewallError) else "internal_error"
    headers = _verdict_headers(verdict)
    if isinstance(exc, errors.OverloadError):
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
    elif status == 503:
        headers["retry-after"] = "1"
    if isinstance(exc, errors.OverloadError):  # a remote backend's text would name its URL
        message = (
            f"The firewall is overloaded ({code}); the request was not forwarded. Retry "
            f"after {headers['retry-after']} s."
        )
    elif isinstance(exc, errors.FirewallError) and status < 500:
        message = str(exc)  # the client's own input: what to change
    else:  # a server-side failure: its text (URLs, paths, internals) goes to the log only
        log.warning("screening failed (%s): %s: %s", code, type(exc).__name__, exc)
        message = (
            f"The firewall could not screen this request ({code}); it was not forwarded. "
            "Retry later."
        )
    return ErrorReply(status, error_body(message, type=_type_for(status), code=code), headers)


def reply(message: str, code: str, status: int = 400, *, retry: bool = False) -> ErrorReply:
    """An error with no verdict: its ``type`` follows from ``status``; ``retry``: the client
    may retry after a second (``Retry-After: 1``)."""
    headers = {"retry-after": "1"} if retry else {}
    return ErrorReply(status, error_body(message, type=_type_for(status), code=code), headers)


def invalid_json(detail: str) -> ErrorReply:
    return reply(
        f"We could not parse the JSON body of your request ({detail}). The OpenAI API "
        "expects a JSON object.",
        "invalid_json",
    )


def body_too_large(limit: int) -> ErrorReply:
    return reply(
        f"The request body is larger than the firewall's limit of {limit} bytes.",
        "request_too_large",
        413,
    )


def unsupported_media_type(content_type: str) -> ErrorReply:
    return reply(
        f"Unsupported Content-Type {content_type!r}; send the request as application/json.",
        "unsupported_media_type",
        415,
    )


def unknown_policy(name: str) -> ErrorReply:
    return reply(f"Unknown firewall policy {name!r}.", "unknown_policy")


def firewall_unavailable() -> ErrorReply:
    return reply(
        "The firewall is not ready; the request was not forwarded. Retry later.",
        "firewall_unavailable",
        503,
        retry=True,
    )


def firewall_not_configured() -> ErrorReply:
    """500: the middleware has no firewall to screen with (a set-up mistake; no retry helps)."""
    return reply(
        "The firewall is not configured; the request was not forwarded. The application must "
        "pass FirewallMiddleware(firewall=Firewall.from_config()) or put the firewall in its "
        "lifespan state under 'alknet_firewall'.",
        "firewall_not_configured",
        500,
    )


def upstream_unreachable(detail: str) -> ErrorReply:
    return reply(f"The upstream API could not be reached ({detail}).", "upstream_unreachable", 502)


def upstream_timeout(timeout_s: float) -> ErrorReply:
    return reply(
        f"The upstream API did not answer within {timeout_s:g} s.", "upstream_timeout", 504
    )


_NEED_KEY = (
    "Missing or invalid API key for this gateway: send 'Authorization: Bearer <key>' with a key "
    "the gateway's operator gave you."
)


def unauthorized(message: str = _NEED_KEY, realm: str = "alknet-firewall") -> ErrorReply:
    """401 as OpenAI answers a missing or wrong key (the key itself is never echoed)."""
    body = error_body(message, type=INVALID_REQUEST, code="invalid_api_key")
    return ErrorReply(401, body, {"www-authenticate": f'Bearer realm="{realm}"'})


def request_timeout(timeout_s: float) -> ErrorReply:
    return reply(
        f"The request body was not received within {timeout_s:g} s.", "request_timeout", 408
    )


def shutting_down() -> ErrorReply:
    return reply(
        "The gateway is shutting down; the request was not forwarded. Retry on another "
        "instance or later.",
        "shutting_down",
        503,
        retry=True,
    )


def misdirected_host() -> ErrorReply:
    """421: the ``Host`` header names a host this gateway does not serve (DNS rebinding)."""
    return reply(
        "This gateway does not serve that Host name; use one in its server.allowed_hosts.",
        "misdirected_request",
        421,
    )


def invalid_path() -> ErrorReply:
    return reply(
        "The request path has dot segments or encoded '.', '/', '\\' or '%'; send a plain "
        "API path such as /v1/models/MODEL_ID.",
        "invalid_path",
    )


def cross_site() -> ErrorReply:
    return reply(
        "Cross-site browser request refused: the gateway's operator must list this page's "
        "origin in server.cors_origins.",
        "cross_site_request",
        403,
    )
