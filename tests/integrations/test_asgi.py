"""FirewallMiddleware in front of a FastAPI app, over real uvicorn servers on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, WebSocket
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from alknet_firewall.errors import BadInputError
from alknet_firewall.integrations.asgi import FirewallMiddleware, messages_from_body
from tests.integration_helpers import (
    ATTACK,
    BENIGN,
    FakeFirewall,
    ServerThread,
    acquire_firewall,
    body_property_test,
    check_clean_outcome,
    release_firewall,
)

H = "x-alknet-firewall-"


@pytest.fixture(scope="session")
def firewall() -> Iterator[Any]:
    fw = acquire_firewall()
    yield fw
    release_firewall()


def make_app(firewall: Any, **options: Any) -> Any:
    """A FastAPI app: echo endpoints that record what they saw, a stream, a websocket."""
    app = FastAPI()
    app.state.seen = []
    app.state.produced = []

    def verdict_of(request: Request) -> Any:
        return getattr(request.state, "alknet_firewall_verdict", None)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.body()
        v = verdict_of(request)
        app.state.seen.append(body)
        return Response(
            body,
            media_type="application/octet-stream",
            headers={"x-test-verdict": v.action if v is not None else "none"},
        )

    @app.post("/v1/completions")
    async def stream(request: Request) -> StreamingResponse:
        await request.body()
        app.state.produced.clear()

        async def chunks() -> Any:
            for i in range(4):
                app.state.produced.append(time.monotonic())
                yield f"data: chunk{i}\n\n".encode()
                await asyncio.sleep(0.15)

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.post("/other")
    async def other(request: Request) -> Response:
        body = await request.body()
        app.state.seen.append(body)
        return Response(body, media_type="application/octet-stream")

    @app.get("/v1/chat/completions")
    async def get_chat() -> PlainTextResponse:
        return PlainTextResponse("get-ok")

    @app.websocket("/v1/chat/completions")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text("echo:" + text)
        await websocket.close()

    options.setdefault("policy_header", "x-alknet-firewall-policy")
    options.setdefault("block_status", 403)
    options.setdefault("max_body_bytes", 4096)
    app.add_middleware(FirewallMiddleware, firewall=firewall, **options)
    return app


@pytest.fixture(scope="module")
def served(firewall: Any) -> Iterator[tuple[Any, httpx.Client]]:
    app = make_app(firewall)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield app, client


def _post(client: httpx.Client, path: str, raw: bytes, **headers: str) -> httpx.Response:
    return client.post(path, content=raw, headers={"content-type": "application/json", **headers})


def _chat(text: str) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()


def _assert_openai_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == code
    assert err["param"] is None
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str)
    return err


# --------------------------------------------------------------------------------------------
# Real firewall
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_body_reaches_app_byte_for_byte_with_verdict(served: Any) -> None:
    app, client = served
    # Odd spacing, key order, unicode escapes, a float with a trailing zero, trailing spaces:
    # any re-serialisation would change these bytes.
    raw = (
        b'{  "z":1.50 ,"messages" :[ {"content":"What is the capital of France? '
        b'\\u00e9\\u4e2d\\/", "role" : "user"}],\n\t"model":"m", "a" : null }  '
    )
    r = _post(client, "/v1/chat/completions", raw)
    assert r.status_code == 200, r.text
    assert r.content == raw
    assert app.state.seen[-1] == raw
    assert r.headers["x-test-verdict"] == "allow"  # request.state.alknet_firewall_verdict
    assert r.headers[H + "action"] == "allow"
    for name in ("level", "score", "signals", "codebook", "policy"):
        assert r.headers[H + name]
    # Sent in pieces (chunked, no Content-Length): still the same bytes.
    pieces = [raw[i : i + 7] for i in range(0, len(raw), 7)]
    r = client.post(
        "/v1/chat/completions", content=iter(pieces), headers={"content-type": "application/json"}
    )
    assert r.status_code == 200 and r.content == raw


@pytest.mark.slow
def test_attack_is_rejected_with_configured_status_and_verdict(served: Any) -> None:
    app, client = served
    before = len(app.state.seen)
    r = _post(client, "/v1/chat/completions", _chat(ATTACK))
    err = _assert_openai_error(r, 403, "content_filter")
    assert err["verdict"]["action"] == "block"
    assert err["verdict"]["message_index"] == 0
    assert r.headers[H + "action"] == "block"
    assert r.headers[H + "level"] == err["verdict"]["level"]
    assert len(app.state.seen) == before  # the app never saw it


@pytest.mark.slow
def test_other_prompt_fields_are_screened(served: Any) -> None:
    _, client = served
    # completions: prompt as a list of strings
    raw = json.dumps({"model": "m", "prompt": [BENIGN, ATTACK]}).encode()
    err = _assert_openai_error(_post(client, "/v1/completions", raw), 403, "content_filter")
    assert err["verdict"]["message_index"] == 1
    # responses: input items with content parts (the app has no such route: 404 when allowed)
    raw = json.dumps(
        {
            "model": "m",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": ATTACK}]}],
        }
    ).encode()
    _assert_openai_error(_post(client, "/v1/responses", raw), 403, "content_filter")
    r = _post(client, "/v1/responses", json.dumps({"model": "m", "input": BENIGN}).encode())
    assert r.status_code == 404
    assert r.headers[H + "action"] == "allow"
    # a prompt smuggled into a chat request is screened too
    raw = json.dumps({"model": "m", "messages": [], "prompt": ATTACK}).encode()
    _assert_openai_error(_post(client, "/v1/chat/completions", raw), 403, "content_filter")


@pytest.mark.slow
def test_policy_header_selects_policy(served: Any) -> None:
    _, client = served
    policy = "x-alknet-firewall-policy"
    r = _post(client, "/v1/chat/completions", _chat(ATTACK), **{policy: "monitor"})
    assert r.status_code == 200, r.text
    assert r.headers["x-test-verdict"] == "flag"  # monitor downgrades block to flag
    assert r.headers[H + "policy"] == "monitor"
    r = _post(client, "/v1/chat/completions", _chat(BENIGN), **{policy: "nope"})
    _assert_openai_error(r, 400, "unknown_policy")


@pytest.mark.slow
def test_policy_callable(firewall: Any) -> None:
    def by_key(scope: Any) -> str | None:
        headers = dict(scope["headers"])
        return "monitor" if headers.get(b"authorization") == b"Bearer trusted" else None

    app = make_app(firewall, policy=by_key, policy_header=None)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        r = _post(client, "/v1/chat/completions", _chat(ATTACK), authorization="Bearer trusted")
        assert r.status_code == 200 and r.headers[H + "policy"] == "monitor"
        r = _post(client, "/v1/chat/completions", _chat(ATTACK), authorization="Bearer other")
        assert r.status_code == 403 and r.headers[H + "policy"] == "default"


@pytest.mark.slow
def test_streaming_response_still_streams(served: Any) -> None:
    app, client = served
    raw = json.dumps({"model": "m", "prompt": BENIGN, "stream": True}).encode()
    chunks: list[bytes] = []
    first_at = None
    headers = {"content-type": "application/json"}
    with client.stream("POST", "/v1/completions", content=raw, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers[H + "action"] == "allow"
        for chunk in r.iter_raw():
            if first_at is None:
                first_at = time.monotonic()
            chunks.append(chunk)
    assert b"".join(chunks) == b"".join(f"data: chunk{i}\n\n".encode() for i in range(4))
    assert len(chunks) >= 2
    # The first chunk arrived before the endpoint produced the last one.
    assert first_at is not None and first_at < app.state.produced[-1]


@pytest.mark.slow
def test_passthrough_untouched(served: Any) -> None:
    _, client = served
    # non-matching path: an attack goes through unscreened, no verdict headers
    raw = _chat(ATTACK)
    r = _post(client, "/other", raw)
    assert r.status_code == 200 and r.content == raw
    assert not any(k.startswith(H) for k in r.headers)
    # GET on a screened path
    r = client.get("/v1/chat/completions")
    assert r.text == "get-ok" and not any(k.startswith(H) for k in r.headers)
    # non-JSON body on a screened path: refused by default (issue 19), never passed unscreened
    r = client.post("/v1/chat/completions", content=raw, headers={"content-type": "text/plain"})
    _assert_openai_error(r, 415, "unsupported_media_type")
    # websocket on a screened path
    from websockets.sync.client import connect

    port = client.base_url.port
    with connect(f"ws://127.0.0.1:{port}/v1/chat/completions", open_timeout=10) as ws:
        ws.send(ATTACK)
        assert ws.recv(timeout=10) == "echo:" + ATTACK


@pytest.mark.slow
def test_oversize_body_is_413(served: Any) -> None:
    app, client = served
    before = len(app.state.seen)
    big = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 6000}]})
    # with Content-Length: refused before reading
    r = _post(client, "/v1/chat/completions", big.encode())
    _assert_openai_error(r, 413, "request_too_large")
    # chunked (no Content-Length): refused once the limit is crossed

    def gen() -> Iterator[bytes]:
        data = big.encode()
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    r = client.post(
        "/v1/chat/completions", content=gen(), headers={"content-type": "application/json"}
    )
    _assert_openai_error(r, 413, "request_too_large")
    assert len(app.state.seen) == before


@pytest.mark.slow
def test_invalid_json_and_bad_shapes_are_400(served: Any) -> None:
    _, client = served
    _assert_openai_error(
        _post(client, "/v1/chat/completions", b'{"messages": ['), 400, "invalid_json"
    )
    _assert_openai_error(_post(client, "/v1/chat/completions", b""), 400, "invalid_json")
    _assert_openai_error(_post(client, "/v1/chat/completions", b"\xff\xfe{"), 400, "invalid_json")
    deep = b"[" * 2000 + b"]" * 2000  # deeper than the parser's recursion limit
    err = _assert_openai_error(_post(client, "/v1/chat/completions", deep), 400, "invalid_json")
    assert "nested too deeply" in err["message"]
    # a repeated key: parsers disagree on which value wins, so it is refused
    dup = b'{"messages": [{"role": "user", "content": "hi"}], "messages": []}'
    err = _assert_openai_error(_post(client, "/v1/chat/completions", dup), 400, "invalid_json")
    assert "duplicate key" in err["message"]
    r = _post(client, "/v1/chat/completions", b'{"messages": 5}')
    _assert_openai_error(r, 400, "bad_input")
    r = _post(client, "/v1/chat/completions", b'{"messages": [{"role": "user", "content": 5}]}')
    _assert_openai_error(r, 400, "bad_input")
    r = _post(client, "/v1/completions", b'{"prompt": [1, 2, 3]}')
    assert "token-id" in _assert_openai_error(r, 400, "bad_input")["message"]


@pytest.mark.slow
def test_invalid_json_pass_option(firewall: Any) -> None:
    app = make_app(firewall, on_invalid_json="pass", max_body_bytes=1 << 20)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        r = _post(client, "/v1/chat/completions", b'{"messages": [')
        assert r.status_code == 200 and r.content == b'{"messages": ['
        deep = b"[" * 100_000 + b"]" * 100_000  # RecursionError in the parser: invalid too
        assert _post(client, "/v1/chat/completions", deep).content == deep


# --------------------------------------------------------------------------------------------
# Pure helpers and properties (no model)
# --------------------------------------------------------------------------------------------
def test_messages_from_body_shapes() -> None:
    assert messages_from_body({"prompt": "a"}) == [{"role": "user", "content": "a"}]
    items = messages_from_body(
        {
            "input": [
                "s",
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "t"}],
                },
                {"type": "function_call_output", "call_id": "c", "output": "o"},
                {"type": "function_call", "arguments": "{}"},
                {"type": "reasoning", "summary": []},
            ],
            "instructions": "sys",
        }
    )
    assert [m["role"] for m in items] == [
        "user",
        "user",
        "tool",
        "assistant",
        "item:reasoning",
        "system",
    ]
    for bad in (
        {"messages": {}},
        {"prompt": 3},
        {"input": [[1, 2]]},
        [],
        {"messages": [{"tool_calls": 5}]},
    ):
        with pytest.raises(BadInputError):
            messages_from_body(bad)


@pytest.fixture(scope="module")
def fake_served() -> Iterator[httpx.Client]:
    app = make_app(FakeFirewall(), max_body_bytes=1 << 20)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        yield client


@body_property_test
def test_property_any_body_gives_verdict_or_clean_4xx(fake_served: httpx.Client, body: Any) -> None:
    raw = json.dumps(body).encode()
    check_clean_outcome(_post(fake_served, "/v1/chat/completions", raw))
