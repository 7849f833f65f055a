"""Pure ASGI middleware that screens OpenAI-style request bodies before the app sees them.

Size (~600 lines): the body converter, the middleware and its per-request responder are one
protocol (buffer, refuse, screen, replay byte for byte, cancel on disconnect); each part is
only correct together with the others, as in Starlette's own middleware modules.

::

    from alknet_firewall.integrations.asgi import FirewallMiddleware
    app.add_middleware(FirewallMiddleware, firewall=fw)     # Starlette / FastAPI
    app = FirewallMiddleware(app, firewall=fw)              # any ASGI app

On the configured paths, a ``POST`` with a JSON body is read whole, screened, and then either
replayed byte for byte to the app (with the verdict in ``scope["state"]`` and
``x-alknet-firewall-*`` response headers) or answered with an OpenAI-style error; a non-JSON
body there is refused (415) unless ``on_non_json="pass"``. Everything else (other paths and
methods, websockets, lifespan) passes straight through.
Responses are never buffered: streaming endpoints keep streaming.

No web framework is imported: the middleware speaks raw ASGI.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .. import telemetry
from ..errors import ConfigurationError, FirewallError, UnknownPolicyError
from ..request_content import extract_request
from . import openai_errors
from .bodies import ASGIApp, BodyLimits, Message, Receive, Scope, Send, header

if TYPE_CHECKING:  # pragma: no cover
    from ..firewall import Verdict

log = logging.getLogger(__name__)

PolicyResolver = Callable[[Scope], "str | Awaitable[str | None] | None"]

#: Paths screened by default: the OpenAI endpoints that carry prompts, with and without ``/v1``.
DEFAULT_PATHS: tuple[str, ...] = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/chat/completions",
    "/completions",
    "/responses",
)
#: ``scope["state"]`` key of the verdict (``request.state.alknet_firewall_verdict``).
STATE_VERDICT = "alknet_firewall_verdict"
#: ``scope["state"]`` key where a firewall is looked up when none is given (lifespan state).
STATE_FIREWALL = "alknet_firewall"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
#: A body over the limit is read on and discarded up to this many times the limit before the
#: 413 is sent, so that clients that send their whole body before reading (urllib, requests)
#: see the 413 instead of a connection reset.
DISCARD_FACTOR = 4


class Screener(Protocol):
    """What the middleware needs from a firewall (:class:`alknet_firewall.Firewall` has it)."""

    async def ascreen(self, data: Any, *, policy: str | None = None) -> Verdict: ...


# --------------------------------------------------------------------------------------------
# OpenAI request bodies -> what Firewall.ascreen takes (one extractor for every integration)
# --------------------------------------------------------------------------------------------
def messages_from_body(body: Any) -> list[Any]:
    """Chat messages to screen from an OpenAI-style request body: the messages of
    :func:`alknet_firewall.request_content.extract_request`, which reads every field that
    reaches the model as text (``docs/request-fields.md``). Kept for callers of this name."""
    return extract_request(body).messages


#: Deprecated name of :func:`messages_from_body` (it converts a body; it screens nothing).
screen_input = messages_from_body


# --------------------------------------------------------------------------------------------
# The middleware
# --------------------------------------------------------------------------------------------
class FirewallMiddleware:
    """Screens OpenAI-style JSON request bodies on configured paths.

    :param app: the ASGI app to protect.
    :param firewall: a :class:`~alknet_firewall.Firewall` (anything with ``ascreen``). ``None``:
        looked up per request in ``scope["state"]["alknet_firewall"]`` (the lifespan state, so
        an app can build its firewall at start-up); requests fail with 503 while it is missing.
    :param paths: exact paths screened (``root_path`` is ignored when matching).
    :param policy: a policy name, or a callable ``(scope) -> str | None`` (may be async),
        e.g. by path or API key. ``None`` from the callable falls back to ``policy_header``,
        then to the default policy.
    :param policy_header: request header naming the policy (e.g. ``x-alknet-firewall-policy``).
        Only trusted clients should be able to set it: a client could pick a lenient policy.
    :param block_status: status of a blocked request (4xx).
    :param max_body_bytes: larger bodies are refused with 413 without reading further.
    :param on_invalid_json: ``reject`` (400) or ``pass`` (to the app, unscreened).
    :param on_non_json: a non-JSON ``Content-Type`` on a screened path: ``reject`` (415, the
        default: apps and frameworks parse such a body as JSON anyway, so passing it would
        forward an attack unscreened) or ``pass`` (to the app, unscreened: only for an app
        that really serves other types there and screens them itself).
    :param discard_bytes: a refused body (too large, wrong type) is read and thrown away up to
        this many bytes in all before the error is sent (default ``4 * max_body_bytes``); a
        longer one is answered at that point and its connection closed.
    :param body_timeout_s: the whole body must arrive within this many seconds, else 408 and
        the connection is closed (a client trickling bytes holds nothing for long). ``None``:
        no limit.
    """

    def __init__(
        self,
        app: ASGIApp,
        firewall: Screener | None = None,
        *,
        paths: Iterable[str] = DEFAULT_PATHS,
        policy: str | PolicyResolver | None = None,
        policy_header: str | None = None,
        block_status: int = 400,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        on_invalid_json: Literal["reject", "pass"] = "reject",
        on_non_json: Literal["pass", "reject"] = "reject",
        discard_bytes: int | None = None,
        body_timeout_s: float | None = None,
    ) -> None:
        if not 400 <= block_status <= 499:
            raise ConfigurationError(f"block_status must be a 4xx status, not {block_status}")
        if max_body_bytes < 1:
            raise ConfigurationError("max_body_bytes must be positive")
        if on_invalid_json not in ("reject", "pass"):
            raise ConfigurationError("on_invalid_json must be 'reject' or 'pass'")
        if on_non_json not in ("reject", "pass"):
            raise ConfigurationError("on_non_json must be 'reject' or 'pass'")
        if discard_bytes is not None and discard_bytes < 0:
            raise ConfigurationError("discard_bytes must not be negative")
        if body_timeout_s is not None and body_timeout_s <= 0:
            raise ConfigurationError("body_timeout_s must be positive")
        self.app = app
        self.firewall = firewall
        self.paths = frozenset(paths)
        self.policy = policy
        self.policy_header = policy_header.lower().encode("latin-1") if policy_header else None
        self.block_status = block_status
        self.max_body_bytes = max_body_bytes
        self.on_invalid_json = on_invalid_json
        self.on_non_json = on_non_json
        self.discard_bytes = (
            DISCARD_FACTOR * max_body_bytes if discard_bytes is None else discard_bytes
        )
        self.body_timeout_s = body_timeout_s
        self.body_limits = BodyLimits(max_body_bytes, self.discard_bytes, body_timeout_s)

    def screens(self, scope: Scope) -> bool:
        """Whether this request is one the middleware screens (before looking at the body)."""
        if scope["type"] != "http" or scope.get("method") != "POST":
            return False
        path = scope.get("path", "")
        if path in self.paths:
            return True
        root = scope.get("root_path", "")
        return bool(root) and path.startswith(root) and path[len(root) :] in self.paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.screens(scope):
            await self.app(scope, receive, send)
            return
        await _ScreeningResponder(self)(scope, receive, send)


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class _ScreeningResponder:
    """Per-request state: the buffered body, the verdict, the wrapped send."""

    def __init__(self, mw: FirewallMiddleware) -> None:
        self.mw = mw
        self.verdict: Verdict | None = None
        self.send: Send = _unattached
        self.replayed = False
        self.receive: Receive = _unattached_receive
        self.body = b""
        #: A message received while screening that was not a disconnect (kept for the app).
        self.pending: Message | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        mw = self.mw
        content_type = header(scope, b"content-type")
        if content_type is not None and not _is_json(content_type):
            if mw.on_non_json == "reject":
                reply = openai_errors.unsupported_media_type(content_type)
                await mw.body_limits.refuse(scope, reply, receive, send)
            else:
                await mw.app(scope, receive, send)
            return
        body = await mw.body_limits.read(scope, receive, send)
        if body is None:
            return
        self.body = body
        self.receive = receive
        try:
            data = json.loads(body, object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError) as exc:
            # Without a Content-Type, a body that is not JSON is a non-JSON body.
            lenient = mw.on_non_json if content_type is None else mw.on_invalid_json
            if lenient == "pass":
                await mw.app(scope, self._replay, send)
                return
            await openai_errors.invalid_json(_json_error(exc)).send(send)
            return

        screened = await self._screen_while_connected(scope, data, receive)
        if screened is _GONE:
            return
        if screened is not None:
            await screened.send(send)
            return
        scope.setdefault("state", {})[STATE_VERDICT] = self.verdict
        self.send = send
        await mw.app(scope, self._replay, self._send_with_headers)

    async def _screen_while_connected(
        self, scope: Scope, data: Any, receive: Receive
    ) -> openai_errors.ErrorReply | object | None:
        """:meth:`_screen`, cancelled if the client disconnects meanwhile (``_GONE``).

        A client that gave up must not keep its texts in the screening queue (under overload,
        clients time out and retry) nor have its request forwarded after all. The body has been
        read whole, so the only message ``receive`` can still yield is ``http.disconnect``; any
        other is kept for the app.
        """
        screening = asyncio.ensure_future(self._screen(scope, data))
        listening = asyncio.ensure_future(receive())
        try:
            await asyncio.wait({screening, listening}, return_when=asyncio.FIRST_COMPLETED)
            message = listening.result() if listening.done() else None
            if message is not None and message["type"] == "http.disconnect":
                screening.cancel()  # Firewall.ascreen cancels its queued texts
                await asyncio.wait({screening})
                log.info("client disconnected during screening; request dropped")
                return _GONE
            self.pending = message
            return await screening
        finally:
            for task in (screening, listening):
                if not task.done():
                    task.cancel()

    async def _policy(self, scope: Scope) -> tuple[str | None, str]:
        pol = self.mw.policy
        if isinstance(pol, str):
            return pol, "option"
        if pol is not None:
            name = pol(scope)
            if inspect.isawaitable(name):
                name = await name
            if name is not None:
                return name, "resolver"
        if self.mw.policy_header is not None:
            name = header(scope, self.mw.policy_header)
            if name:
                return name.strip(), "header"
        return None, "default"

    async def _screen(self, scope: Scope, data: Any) -> openai_errors.ErrorReply | None:
        """Screen the parsed body; an error reply, or None to let the request through."""
        fw = self.mw.firewall
        if fw is None:
            fw = (scope.get("state") or {}).get(STATE_FIREWALL)
            if fw is None:
                log.error("no firewall: pass one or put it in the lifespan state")
                return openai_errors.firewall_not_configured()
        name, source = None, "default"
        try:
            content = extract_request(data)
            name, source = await self._policy(scope)
            with telemetry.continue_trace(scope.get("headers")):  # the caller's traceparent
                self.verdict = await fw.ascreen(content.messages, policy=name)
        except ConfigurationError as exc:
            if isinstance(exc, UnknownPolicyError) and source == "header":
                # The client chose the policy: its mistake, not the operator's.
                return openai_errors.unknown_policy(name or "")
            log.error("firewall configuration error: %s", exc)
            return openai_errors.from_exception(exc)
        except FirewallError as exc:
            return openai_errors.from_exception(exc)
        except Exception:
            # Unexpected: fail closed, never forward an unscreened request.
            log.exception("screening raised unexpectedly; request refused")
            return openai_errors.from_exception(RuntimeError("internal"))
        if self.verdict.blocked:
            log.info("blocked: %s", content.path_of(self.verdict.message_index) or "request")
            return openai_errors.blocked(self.verdict, self.mw.block_status)
        return None

    async def _replay(self) -> Message:
        """The buffered body, exactly as received, then the original receive (disconnect)."""
        if not self.replayed:
            self.replayed = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        if self.pending is not None:
            message, self.pending = self.pending, None
            return message
        return await self.receive()

    async def _send_with_headers(self, message: Message) -> None:
        if message["type"] == "http.response.start" and self.verdict is not None:
            extra = [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in self.verdict.headers().items()
            ]
            message = {**message, "headers": [*(message.get("headers") or ()), *extra]}
        await self.send(message)


#: What :meth:`_ScreeningResponder._screen_while_connected` returns for a client that left.
_GONE = object()


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a repeated key are refused: parsers disagree on which value wins, so
    the firewall could screen one ``messages`` and the app read the other."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {dup!r}")
    return d


def _json_error(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    return str(exc)


async def _unattached(message: Message) -> None:  # pragma: no cover - never called
    raise RuntimeError("send is not attached")


async def _unattached_receive() -> Message:  # pragma: no cover - never called
    raise RuntimeError("receive is not attached")


__all__: Sequence[str] = [
    "DEFAULT_PATHS",
    "STATE_FIREWALL",
    "STATE_VERDICT",
    "FirewallMiddleware",
    "Screener",
    "messages_from_body",
]
