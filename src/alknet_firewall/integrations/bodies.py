"""Request bodies in raw ASGI: read one within limits, or refuse one without inviting it.

Every part that reads a body (the screening middleware, the edge, key checks, the model
server) uses these, so a body that is too large (413), too slow (408) or unwanted gets the
same answer everywhere, and a client still sending never sees a connection reset instead of
it. Also the ASGI type aliases the integrations share.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from . import openai_errors

__all__ = [
    "ASGIApp",
    "Body",
    "BodyLimits",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "header",
    "receive_body",
    "refuse",
    "send_body_failure",
]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header ``name`` (lower case), or None."""
    for k, v in scope.get("headers") or ():
        if k.lower() == name:
            return str(v.decode("latin-1"))
    return None


def _declared_length(scope: Scope) -> int | None:
    length = header(scope, b"content-length")
    return int(length) if length is not None and length.strip().isdigit() else None


def _expects_continue(scope: Scope) -> bool:
    """The client waits for ``100 Continue`` before sending its body (curl does for large
    ones): it can be answered at once, without inviting the body."""
    return (header(scope, b"expect") or "").strip().lower() == "100-continue"


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


async def send_body_failure(
    got: Body, send: Send, *, max_bytes: int, timeout_s: float | None
) -> None:
    """Answer a body :func:`receive_body` did not get: 413 when too large, 408 when too slow
    (closing the connection when unread bytes remain); nothing when the client left."""
    if got.outcome == "too_large":
        reply = openai_errors.body_too_large(max_bytes)
    elif got.outcome == "timeout":
        log.info("request body not received within %.1fs; 408", timeout_s or 0.0)
        reply = openai_errors.request_timeout(timeout_s or 0.0)
    else:  # the client left
        return
    await (reply if got.complete else reply.closing()).send(send)


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


@dataclass(frozen=True)
class BodyLimits:
    """How much of a request body is read (``max_bytes``), how much of an unwanted or
    oversized one is read away before answering (``discard_bytes``), and how long the whole
    body may take (``timeout_s``)."""

    max_bytes: int
    discard_bytes: int
    timeout_s: float | None = None

    async def refuse(
        self, scope: Scope, reply: openai_errors.ErrorReply, receive: Receive, send: Send
    ) -> None:
        """Answer ``reply`` before reading: at once, closing the connection, when the client
        waits for ``100 Continue`` or announced more than ``discard_bytes``; else after
        reading the body away (:func:`refuse`)."""
        declared = _declared_length(scope)
        if _expects_continue(scope) or (declared is not None and declared > self.discard_bytes):
            await reply.closing().send(send)
            return
        await refuse(
            reply, receive, send, discard_bytes=self.discard_bytes, timeout_s=self.timeout_s
        )

    async def read(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body; None once the client was answered (413 for a declared or actual
        size over ``max_bytes``, 408 when too slow) or left."""
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self.refuse(scope, openai_errors.body_too_large(self.max_bytes), receive, send)
            return None
        got = await receive_body(
            receive,
            max_bytes=self.max_bytes,
            discard_bytes=self.discard_bytes,
            timeout_s=self.timeout_s,
        )
        if got.outcome != "ok":
            await send_body_failure(got, send, max_bytes=self.max_bytes, timeout_s=self.timeout_s)
            return None
        return got.data
