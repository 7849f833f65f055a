"""Helpers for the reliability tests (bad input, faults, overload, security).

* :class:`RawUpstream`: a tiny OpenAI-like HTTP/1.1 server on loopback, written on raw asyncio
  streams so that it can misbehave exactly (drop a stream halfway, stall, refuse);
* :class:`LoopProbe`: an ASGI wrapper that remembers the server's event loop, to count its
  tasks (leak checks);
* :func:`fake_model_firewall`: a real :class:`Firewall` on the deterministic ``FakeModel``;
* :class:`EchoApp`: a raw ASGI app that answers with the verdict the middleware attached.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from alknet_firewall.config import load_settings
from tests.fakes import FakeModel
from tests.integration_helpers import COMPLETION, RATE_LIMITED


def sse(i: int) -> bytes:
    """One server-sent event carrying a chat-completion chunk."""
    chunk = {
        "id": "chatcmpl-2",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": [{"index": 0, "delta": {"content": f"c{i}"}, "finish_reason": None}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class RawUpstream:
    """An OpenAI-like upstream on ``127.0.0.1`` (asyncio streams, own thread).

    The JSON body's ``model`` picks the behaviour:

    * anything else: ``200`` with :data:`COMPLETION` (keep-alive);
    * ``stream``: 4 events and ``[DONE]``, chunked;
    * ``drop``: headers and 2 events, then the connection is reset (no final chunk);
    * ``stall``: headers and 1 event, then silence for up to 5 s;
    * ``slowstream``: up to 50 events 0.1 s apart; :attr:`stream_closed` is set when it ends;
    * ``error``: ``429`` with :data:`RATE_LIMITED`.

    Every request is recorded (method, path, lower-cased headers, body bytes).
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.recorded: list[dict[str, Any]] = []
        self.stream_closed = threading.Event()
        self.slow_sent = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RawUpstream:
        self._thread.start()

        async def serve() -> asyncio.base_events.Server:
            return await asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024)

        self._server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

        if self._server is not None:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> RawUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        keep = True
        try:
            while keep:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", "0"))
                body = await reader.readexactly(n) if n else b""
                self.recorded.append(
                    {"method": method, "path": path, "headers": headers, "body": body}
                )
                try:
                    model = json.loads(body).get("model") if body else None
                except (ValueError, AttributeError):
                    model = None
                keep = await self._respond(model, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _respond(self, model: Any, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection stays open."""
        if model in ("stream", "drop", "stall", "slowstream"):
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            if model == "stream":
                for i in range(4):
                    writer.write(_chunked(sse(i)))
                writer.write(_chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                await writer.drain()
                return True
            if model == "drop":
                writer.write(_chunked(sse(0)) + _chunked(sse(1)))
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.transport.abort()  # connection reset halfway through the stream
                return False
            if model == "stall":
                writer.write(_chunked(sse(0)))
                await writer.drain()
                await asyncio.sleep(5)
                return False
            self.stream_closed.clear()
            self.slow_sent = 0
            try:
                for i in range(50):
                    writer.write(_chunked(sse(i)))
                    await writer.drain()
                    self.slow_sent += 1
                    await asyncio.sleep(0.1)
                    if writer.is_closing():
                        break
            finally:
                self.stream_closed.set()
            return False
        if model == "error":
            status, body = b"429 Too Many Requests", json.dumps(RATE_LIMITED).encode()
        else:
            status, body = b"200 OK", json.dumps(COMPLETION).encode()
        writer.write(
            b"HTTP/1.1 "
            + status
            + b"\r\ncontent-type: application/json\r\nx-upstream: yes\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        return True


class LoopProbe:
    """ASGI wrapper that remembers the server's event loop (set by the lifespan startup)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)

    def tasks(self) -> int:
        """Tasks alive in the server's loop (not counting the one that counts)."""
        assert self.loop is not None, "the server has not started"

        async def count() -> int:
            return len(asyncio.all_tasks()) - 1

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(5)

    def settle(self, baseline: int, timeout: float = 5.0) -> int:
        """Wait until the task count falls back to ``baseline``; the last count seen."""
        deadline = time.monotonic() + timeout
        n = self.tasks()
        while n > baseline and time.monotonic() < deadline:
            time.sleep(0.05)
            n = self.tasks()
        return n


class ResponseTimer:
    """ASGI wrapper: seconds from the request reaching the app to its response headers, by
    status (what the gateway itself spends, without the client's or the kernel's queues)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seconds: dict[int, list[float]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                elapsed = time.perf_counter() - t0
                self.seconds.setdefault(message["status"], []).append(elapsed)
            await send(message)

        await self.app(scope, receive, timed_send)


class EchoApp:
    """Raw ASGI app behind the middleware: reads the body, answers the verdict it was given."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.seen.append(body)
        verdict = (scope.get("state") or {}).get("alknet_firewall_verdict")
        out = json.dumps(
            {"verdict": verdict.to_dict() if verdict is not None else None, "bytes": len(body)}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": out})


def fake_model_firewall(codebook: Any, model: FakeModel | None = None, **overrides: Any) -> Any:
    """A real Firewall on ``FakeModel``: policies ``default`` (fails closed) and ``open``."""
    from alknet_firewall.firewall import Firewall

    pool = {"workers": 1, "warmup": True, "timeout_s": 1.5, **overrides.pop("pool", {})}
    settings = load_settings(
        None,
        pool=pool,
        policies={"default": {}, "open": {"fail_mode": "open"}},
        **overrides,
    )
    return Firewall(settings, model=model or FakeModel(), codebook=codebook)


def rss_mb() -> float:
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def wait_for(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True
