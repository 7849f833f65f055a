"""The OpenAI-compatible gateway in front of a fake upstream, both real uvicorn servers on
loopback, driven by the official ``openai`` client."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from alknet_firewall.integrations.gateway import create_app
from tests.integration_helpers import (
    ATTACK,
    BENIGN,
    COMPLETION,
    RATE_LIMITED,
    FakeFirewall,
    ServerThread,
    body_property_test,
    check_clean_outcome,
    child_env,
    codebook_path,
    firewall_settings,
    free_port,
    shared_firewall,
    wait_healthy,
)
from tests.serve_helpers import piped_output

H = "x-alknet-firewall-"

TEXT_COMPLETION = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1700000000,
    "model": "gpt-test",
    "choices": [{"text": " Paris.", "index": 0, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
}
MODELS = {
    "object": "list",
    "data": [{"id": "gpt-test", "object": "model", "created": 1, "owned_by": "test"}],
}


def _chunk(i: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-2",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


CHUNKS = [
    _chunk(0, {"role": "assistant", "content": ""}),
    _chunk(1, {"content": "Pa"}),
    _chunk(2, {"content": "ris."}),
    _chunk(3, {}, "stop"),
]


class FakeUpstream:
    """A tiny OpenAI API: records every request, answers fixed completions and streams.

    ``model`` picks the behaviour: ``slow`` sleeps 3 s, ``error`` answers 429, ``endless``
    streams up to 100 chunks (0.1 s apart) and records when its stream is closed.
    """

    def __init__(self) -> None:
        self.recorded: list[dict[str, Any]] = []
        self.produced: list[float] = []
        self.stream_closed = threading.Event()
        self.endless_sent = 0
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model:path}", self.model, methods=["GET"]),
            ]
        )

    async def _record(self, request: Request) -> dict[str, Any]:
        body = await request.body()
        self.recorded.append(
            {"path": request.url.path, "headers": dict(request.headers), "body": body}
        )
        try:
            data = json.loads(body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    async def chat(self, request: Request) -> Response:
        data = await self._record(request)
        model = data.get("model")
        if model == "slow":
            await asyncio.sleep(3)
        if model == "error":
            return JSONResponse(RATE_LIMITED, status_code=429, headers={"x-upstream": "yes"})
        if model == "endless":
            return StreamingResponse(self._endless(), media_type="text/event-stream")
        if data.get("stream") is True:
            return StreamingResponse(self._stream(), media_type="text/event-stream")
        return JSONResponse(COMPLETION, headers={"x-upstream": "yes"})

    async def _stream(self) -> Any:
        self.produced.clear()
        for c in CHUNKS:
            self.produced.append(time.monotonic())
            yield f"data: {json.dumps(c)}\n\n".encode()
            await asyncio.sleep(0.1)
        yield b"data: [DONE]\n\n"

    async def _endless(self) -> Any:
        self.stream_closed.clear()
        self.endless_sent = 0
        try:
            for _ in range(100):
                yield f"data: {json.dumps(CHUNKS[1])}\n\n".encode()
                self.endless_sent += 1
                await asyncio.sleep(0.1)
        finally:
            self.stream_closed.set()

    async def completions(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse(TEXT_COMPLETION)

    async def models(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse(MODELS)

    async def model(self, request: Request) -> Response:
        await self._record(request)
        model = request.path_params["model"]
        return JSONResponse({"id": model, "object": "model", "created": 1, "owned_by": "test"})


@pytest.fixture(scope="session")
def firewall() -> Iterator[Any]:
    yield from shared_firewall()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    with ServerThread(fake.app) as srv:
        fake.url = srv.url  # type: ignore[attr-defined]
        yield fake


def _gateway_settings(upstream_url: str, **server: Any) -> Any:
    server.setdefault("upstream_timeout_s", 1.0)
    return firewall_settings(upstream=upstream_url, **server)


@pytest.fixture(scope="module")
def gateway(firewall: Any, upstream: FakeUpstream) -> Iterator[str]:
    app = create_app(_gateway_settings(upstream.url + "/v1"), firewall)  # type: ignore[attr-defined]
    with ServerThread(app) as srv:
        yield srv.url


def _client(base: str, **kw: Any) -> openai.OpenAI:
    kw.setdefault("api_key", "sk-x")
    return openai.OpenAI(base_url=base + "/v1", max_retries=0, timeout=20, **kw)


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


# --------------------------------------------------------------------------------------------
# Real firewall
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_chat_completion_same_as_upstream(gateway: str, upstream: Any) -> None:
    direct = _client(upstream.url).chat.completions.create(
        model="gpt-test", messages=_messages(BENIGN)
    )
    raw = _client(gateway).chat.completions.with_raw_response.create(
        model="gpt-test", messages=_messages(BENIGN)
    )
    assert raw.parse().model_dump() == direct.model_dump()
    assert raw.headers[H + "action"] == "allow"
    assert raw.headers["x-upstream"] == "yes"
    # The upstream got the very bytes the client sent (same client, same serialisation).
    assert upstream.recorded[-1]["body"] == upstream.recorded[-2]["body"]
    assert upstream.recorded[-1]["path"] == "/v1/chat/completions"


@pytest.mark.slow
def test_body_forwarded_byte_for_byte(gateway: str, upstream: Any) -> None:
    raw = (
        b'{ "messages":[{"role" :"user","content":"What is the capital of France? \\u00e9"}],'
        b'\n "model":"gpt-test" ,"temperature":0.50}  '
    )
    r = httpx.post(
        gateway + "/v1/chat/completions?x=1",
        content=raw,
        headers={"content-type": "application/json", "authorization": "Bearer sk-x"},
        timeout=20,
    )
    assert r.status_code == 200, r.text
    assert r.json() == COMPLETION
    assert upstream.recorded[-1]["body"] == raw


@pytest.mark.slow
def test_stream_same_chunks_as_upstream(gateway: str, upstream: Any) -> None:
    direct = [
        c.model_dump()
        for c in _client(upstream.url).chat.completions.create(
            model="gpt-test", messages=_messages(BENIGN), stream=True
        )
    ]
    via = [
        c.model_dump()
        for c in _client(gateway).chat.completions.create(
            model="gpt-test", messages=_messages(BENIGN), stream=True
        )
    ]
    assert via == direct
    assert [c["choices"][0]["delta"].get("content") for c in via] == ["", "Pa", "ris.", None]
    # Chunk by chunk: the first event arrives before the upstream produced the last one.
    body = json.dumps({"model": "gpt-test", "messages": _messages(BENIGN), "stream": True})
    headers = {"content-type": "application/json"}
    with httpx.stream(
        "POST", gateway + "/v1/chat/completions", content=body, headers=headers, timeout=20
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers[H + "action"] == "allow"
        first_at = None
        for _ in r.iter_raw():
            first_at = first_at or time.monotonic()
    assert first_at is not None and first_at < upstream.produced[-1]


@pytest.mark.slow
def test_completions_and_models(gateway: str, upstream: Any) -> None:
    c = _client(gateway)
    got = c.completions.create(model="gpt-test", prompt=BENIGN)
    assert (
        got.model_dump()
        == _client(upstream.url).completions.create(model="gpt-test", prompt=BENIGN).model_dump()
    )
    assert [m.id for m in c.models.list()] == ["gpt-test"]
    assert upstream.recorded[-1]["path"] == "/v1/models"
    assert c.models.retrieve("ft:gpt-test:org:x").id == "ft:gpt-test:org:x"


@pytest.mark.slow
def test_attack_blocked_before_upstream(gateway: str, upstream: Any) -> None:
    before = len(upstream.recorded)
    c = _client(gateway)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(model="gpt-test", messages=_messages(ATTACK), stream=stream)
        err = info.value
        assert err.status_code == 400
        assert err.code == "content_filter"
        assert isinstance(err.body, dict) and err.body["verdict"]["action"] == "block"
        assert err.body["verdict"]["message_index"] == 1
        assert err.response.headers[H + "action"] == "block"
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="gpt-test", prompt=ATTACK)
    assert len(upstream.recorded) == before


@pytest.mark.slow
def test_authorization_passthrough_and_replacement(
    firewall: Any, gateway: str, upstream: Any
) -> None:
    _client(gateway, api_key="sk-client").chat.completions.create(
        model="gpt-test", messages=_messages(BENIGN)
    )
    assert upstream.recorded[-1]["headers"]["authorization"] == "Bearer sk-client"
    settings = _gateway_settings(upstream.url + "/v1", upstream_api_key="sk-upstream")
    with ServerThread(create_app(settings, firewall)) as srv:
        _client(srv.url, api_key="sk-client").chat.completions.create(
            model="gpt-test", messages=_messages(BENIGN)
        )
    headers = upstream.recorded[-1]["headers"]
    assert headers["authorization"] == "Bearer sk-upstream"
    assert headers["host"] == upstream.url.removeprefix("http://")


@pytest.mark.slow
def test_upstream_http_error_comes_back_as_is(gateway: str, upstream: Any) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        _client(gateway).chat.completions.create(model="error", messages=_messages(BENIGN))
    assert info.value.status_code == 429
    assert info.value.response.json() == RATE_LIMITED
    assert info.value.response.headers["x-upstream"] == "yes"
    assert info.value.response.headers[H + "action"] == "allow"


@pytest.mark.slow
def test_upstream_down_is_502(firewall: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with ServerThread(create_app(_gateway_settings(dead), firewall)) as srv:
        with pytest.raises(openai.InternalServerError) as info:
            _client(srv.url).chat.completions.create(model="m", messages=_messages(BENIGN))
        assert info.value.status_code == 502
        assert info.value.code == "upstream_unreachable"
        assert info.value.response.headers[H + "action"] == "allow"
        with pytest.raises(openai.InternalServerError):
            _client(srv.url).models.list()


@pytest.mark.slow
def test_upstream_slow_is_504(gateway: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        _client(gateway).chat.completions.create(model="slow", messages=_messages(BENIGN))
    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"
    assert time.monotonic() - t0 < 2.9  # the timeout (1 s), not the upstream's 3 s


@pytest.mark.slow
def test_client_disconnect_closes_upstream_stream(gateway: str, upstream: Any) -> None:
    body = json.dumps({"model": "endless", "messages": _messages(BENIGN), "stream": True})
    headers = {"content-type": "application/json"}
    with httpx.stream(
        "POST", gateway + "/v1/chat/completions", content=body, headers=headers, timeout=20
    ) as r:
        assert r.status_code == 200
        next(r.iter_raw())
    assert upstream.stream_closed.wait(10), "the upstream stream was not closed"
    assert upstream.endless_sent < 100


@pytest.mark.slow
def test_healthz_metrics_and_non_json(firewall: Any, gateway: str) -> None:
    h = httpx.get(gateway + "/healthz", timeout=10)
    assert h.status_code == 200
    body = h.json()
    model = body.pop("model")
    assert body == {"status": "ok", "codebook": firewall.codebook.id, "queue_depth": 0}
    # What runs the model (ADR 0005): the resolved dtype, never "auto".
    assert model["dtype"] == firewall.model.describe()["dtype"] != "auto"
    m = httpx.get(gateway + "/metrics", timeout=10)
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert "alknet_firewall_verdicts_total" in m.text
    assert "alknet_firewall_upstream_requests_total" in m.text
    # The upstream might parse any body as JSON: the gateway never forwards one unscreened.
    r = httpx.post(
        gateway + "/v1/chat/completions",
        content=json.dumps({"messages": _messages(ATTACK)}),
        headers={"content-type": "text/plain"},
        timeout=10,
    )
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    # No Content-Type (a no-cors page's Blob): refused too, JSON or not (issue 19).
    for content in (b'{"messages": [],}', json.dumps({"messages": _messages(ATTACK)}).encode()):
        r = httpx.post(gateway + "/v1/chat/completions", content=content, timeout=10)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


@pytest.mark.slow
def test_serve_cli_subprocess(upstream: Any) -> None:
    port = free_port()
    exe = Path(sys.executable).with_name("alknet-firewall")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "alknet_firewall.cli"]
    env = child_env(ALKNET_FIREWALL_POOL__WORKERS="1", ALKNET_FIREWALL_POOL__WARMUP="false")
    proc = subprocess.Popen(
        [
            *cmd,
            "serve",
            "--upstream",
            upstream.url + "/v1",
            "--port",
            str(port),
            "--codebook",
            str(codebook_path()),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base + "/healthz", lambda: piped_output(proc), timeout=120)
        raw = _client(base).chat.completions.with_raw_response.create(
            model="gpt-test", messages=_messages(BENIGN)
        )
        assert (
            raw.parse().model_dump() == openai.types.chat.ChatCompletion(**COMPLETION).model_dump()
        )
        assert raw.headers[H + "action"] == "allow"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out = proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    assert proc.returncode == 0, out
    assert f"gateway on http://127.0.0.1:{port}/v1" in out


def test_cli_import_stays_light(run_py: Any) -> None:
    proc = run_py(
        """
        import sys
        import alknet_firewall.cli as cli
        cli.build_parser()
        heavy = ("torch", "transformers", "starlette", "httpx", "uvicorn", "fastapi")
        print(sorted(m for m in heavy if m in sys.modules))
        """,
        timeout=60,
    )
    assert proc.stdout.strip() == "[]"


def test_serve_needs_an_upstream(run_cli: Any) -> None:
    proc = run_cli("serve", "--port", "1", timeout=60)
    assert proc.returncode == 2
    assert "--upstream" in proc.stderr


# --------------------------------------------------------------------------------------------
# Property: any body gives a verdict or a clean 4xx (fake firewall, real servers)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_gateway(upstream: FakeUpstream) -> Iterator[httpx.Client]:
    app = create_app(_gateway_settings(upstream.url + "/v1"), FakeFirewall())  # type: ignore[attr-defined]
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        yield client


@body_property_test
def test_property_gateway_any_body(fake_gateway: httpx.Client, body: Any) -> None:
    r = fake_gateway.post(
        "/v1/chat/completions",
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    check_clean_outcome(r)
    if r.status_code == 200:
        assert r.json() == COMPLETION


@pytest.mark.slow
def test_openai_gateway_example_runs() -> None:
    example = Path(__file__).parents[2] / "examples" / "openai_gateway.py"
    proc = subprocess.run(
        [sys.executable, str(example), "--codebook", str(codebook_path())],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "answer: 'Paris.'" in out
    assert "chunks: ['Pa', 'ris', '.']" in out
    assert "blocked: HTTP 400 code=content_filter" in out
    assert out.count("  [upstream] got a request") == 2  # the attack never reached it
