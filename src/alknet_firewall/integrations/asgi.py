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
``x-alknet-firewall-*`` response headers) or answered with an OpenAI-style error. Everything
else (other paths and methods, non-JSON bodies, websockets, lifespan) passes straight through.
Responses are never buffered: streaming endpoints keep streaming.

No web framework is imported: the middleware speaks raw ASGI.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..errors import BadInputError, ConfigurationError, FirewallError, UnknownPolicyError
from . import openai_errors

if TYPE_CHECKING:  # pragma: no cover
    from ..firewall import Verdict

log = logging.getLogger("alknet_firewall.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
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
# OpenAI request bodies -> what Firewall.ascreen takes
# --------------------------------------------------------------------------------------------
def messages_from_body(body: Any) -> list[Any]:
    """Chat messages to screen from an OpenAI-style request body.

    Every field that carries prompt text is collected, in this order, so a field cannot be
    smuggled past the firewall on the "wrong" endpoint:

    * ``messages`` (chat completions): the messages as they are;
    * ``prompt`` (completions): a string or a list of strings, one user message each;
    * ``input`` (responses; also embeddings and moderations): a string, or a list of strings
      and items: messages (``role`` + ``content`` string or parts), ``function_call_output``
      (screened as a ``tool`` message), ``function_call`` (its arguments, as an assistant tool
      call); other items keep their place in the list but are not screened;
    * ``instructions`` (responses): one ``system`` message, screened only if the policy's
      roles include ``system``.

    ``Verdict.message_index`` indexes the concatenation. Raises :class:`BadInputError` for
    shapes that cannot be screened (token-id prompts, non-list ``messages``...).
    """
    if not isinstance(body, Mapping):
        raise BadInputError(f"the request body must be a JSON object, not {_json_type(body)}")
    out: list[Any] = []
    if "messages" in body and body["messages"] is not None:
        msgs = body["messages"]
        if not isinstance(msgs, list):
            raise BadInputError(f"'messages' must be an array, not {_json_type(msgs)}")
        for i, m in enumerate(msgs):
            calls = m.get("tool_calls") if isinstance(m, Mapping) else None
            if calls is not None and not isinstance(calls, list):
                raise BadInputError(f"messages[{i}].tool_calls must be an array")
        out.extend(msgs)
    if "prompt" in body and body["prompt"] is not None:
        out.extend(_prompt_messages(body["prompt"]))
    if "input" in body and body["input"] is not None:
        out.extend(_input_messages(body["input"]))
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        out.append({"role": "system", "content": instructions})
    return out


#: Deprecated name of :func:`messages_from_body` (it converts a body; it screens nothing).
screen_input = messages_from_body


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object" if isinstance(v, Mapping) else type(v).__name__


def _prompt_messages(prompt: Any) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        if all(isinstance(p, str) for p in prompt):
            return [{"role": "user", "content": p} for p in prompt]
        if all(isinstance(p, (int, list)) and not isinstance(p, bool) for p in prompt):
            raise BadInputError("token-id prompts cannot be screened; send the prompt as text")
    raise BadInputError("'prompt' must be a string or an array of strings")


def _input_messages(inp: Any) -> list[dict[str, Any]]:
    if isinstance(inp, str):
        return [{"role": "user", "content": inp}]
    if not isinstance(inp, list):
        raise BadInputError(f"'input' must be a string or an array, not {_json_type(inp)}")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(inp):
        if isinstance(item, str):
            out.append({"role": "user", "content": item})
        elif isinstance(item, Mapping):
            out.append(_input_item(item, i))
        elif (isinstance(item, int) and not isinstance(item, bool)) or (
            isinstance(item, list) and all(isinstance(t, int) for t in item)
        ):
            raise BadInputError("token-id inputs cannot be screened; send the input as text")
        else:
            raise BadInputError(f"input[{i}] must be a string or an object")
    return out


def _input_item(item: Mapping[str, Any], i: int) -> dict[str, Any]:
    kind = item.get("type")
    if "role" in item and kind in (None, "message"):
        return {"role": item["role"], "content": item.get("content")}
    if kind == "function_call_output":
        output = item.get("output")
        if output is not None and not isinstance(output, (str, list)):
            raise BadInputError(f"input[{i}].output must be a string or an array of parts")
        return {"role": "tool", "content": output}
    if kind == "function_call":
        args = item.get("arguments")
        if args is not None and not isinstance(args, str):
            raise BadInputError(f"input[{i}].arguments must be a string")
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"type": "function", "function": {"arguments": args}}],
        }
    # reasoning, item_reference, web search calls...: nothing a client writes; keep the index.
    return {"role": f"item:{kind}", "content": None}


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
    :param on_non_json: a non-JSON ``Content-Type`` on a screened path: ``pass`` (to the app,
        unscreened) or ``reject`` (415) for apps that would parse it as JSON anyway.
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
        on_non_json: Literal["pass", "reject"] = "pass",
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


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k.lower() == name:
            return v.decode("latin-1")
    return None


@dataclass(frozen=True)
class Body:
    """What :func:`receive_body` got: the body (``ok``) or why not."""

    outcome: Literal["ok", "too_large", "timeout", "gone"]
    data: bytes = b""
    #: Every byte the client sent was read (so the connection can be kept).
    complete: bool = True


async def receive_body(
    receive: Receive,
    *,
    max_bytes: int,
    discard_bytes: int = 0,
    timeout_s: float | None = None,
) -> Body:
    """Read a request body of at most ``max_bytes``.

    A larger body is read on and thrown away until it ends or ``discard_bytes`` bytes in all
    were read (``too_large``, ``complete`` telling which). The whole read, discarding
    included, must end within ``timeout_s`` seconds (``timeout``). ``gone``: the client
    disconnected.
    """

    async def read() -> Body:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return Body("gone", complete=False)
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > max_bytes:
                chunks.clear()
                if not more:
                    return Body("too_large")
                if size > discard_bytes:
                    return Body("too_large", complete=False)
                continue
            chunks.append(chunk)
            if not more:
                return Body("ok", b"".join(chunks))

    if timeout_s is None:
        return await read()
    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        return Body("timeout", complete=False)


async def refuse(
    reply: openai_errors.ErrorReply,
    receive: Receive,
    send: Send,
    *,
    discard_bytes: int,
    timeout_s: float | None = None,
) -> None:
    """Send ``reply`` to a request whose body is not wanted, after reading and throwing the
    body away (up to ``discard_bytes``, within ``timeout_s``): a client still sending when the
    server answers and closes would see a connection reset instead of the reply. When the body
    could not be read whole, the connection is closed after the reply."""
    got = await receive_body(receive, max_bytes=0, discard_bytes=discard_bytes, timeout_s=timeout_s)
    if got.outcome == "gone":
        return
    await (reply if got.complete else reply.closing()).send(send)


def _expects_continue(scope: Scope) -> bool:
    """The client waits for ``100 Continue`` before sending its body (curl does for large
    ones): it can be answered at once, without inviting the body."""
    return (_header(scope, b"expect") or "").strip().lower() == "100-continue"


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
        content_type = _header(scope, b"content-type")
        if content_type is not None and not _is_json(content_type):
            if mw.on_non_json == "reject":
                reply = openai_errors.unsupported_media_type(content_type)
                await self._refuse(scope, reply, receive, send)
            else:
                await mw.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > mw.max_body_bytes:
            await self._refuse(
                scope, openai_errors.body_too_large(mw.max_body_bytes), receive, send, int(length)
            )
            return
        got = await receive_body(
            receive,
            max_bytes=mw.max_body_bytes,
            discard_bytes=mw.discard_bytes,
            timeout_s=mw.body_timeout_s,
        )
        if got.outcome != "ok":
            reply = None
            if got.outcome == "too_large":
                reply = openai_errors.body_too_large(mw.max_body_bytes)
            elif got.outcome == "timeout":
                log.info("request body not received within %.1fs; 408", mw.body_timeout_s)
                reply = openai_errors.request_timeout(mw.body_timeout_s or 0.0)
            if reply is not None:  # not "gone"
                await (reply if got.complete else reply.closing()).send(send)
            return
        body = got.data
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

    async def _refuse(
        self,
        scope: Scope,
        reply: openai_errors.ErrorReply,
        receive: Receive,
        send: Send,
        declared: int | None = None,
    ) -> None:
        """Refuse before reading: discard the body first unless the client waits for
        ``100 Continue`` or announced more than the discard bound (then answer and close)."""
        length = _header(scope, b"content-length")
        if declared is None and length is not None and length.strip().isdigit():
            declared = int(length)
        if _expects_continue(scope) or (declared is not None and declared > self.mw.discard_bytes):
            await reply.closing().send(send)
            return
        await refuse(
            reply,
            receive,
            send,
            discard_bytes=self.mw.discard_bytes,
            timeout_s=self.mw.body_timeout_s,
        )

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
            name = _header(scope, self.mw.policy_header)
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
            messages = messages_from_body(data)
            name, source = await self._policy(scope)
            self.verdict = await fw.ascreen(messages, policy=name)
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
    "Body",
    "FirewallMiddleware",
    "Screener",
    "messages_from_body",
    "receive_body",
    "refuse",
]
