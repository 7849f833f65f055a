"""Hardening of ``alknet-firewall serve`` (issue 13), against the real command in a subprocess:
client keys, oversized bodies for every common client, slow clients, graceful shutdown,
keep-alive, ``/metrics`` placement. The upstream is a fake one in this process; everything is
on 127.0.0.1 and every wait is bounded."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from alknet_firewall.errors import ConfigurationError
from alknet_firewall.integrations.auth import KeySet, bearer_token, hash_key
from alknet_firewall.integrations.gateway import check_exposure
from tests.integration_helpers import BENIGN, COMPLETION, ServerThread, free_port
from tests.serve_helpers import Serve, trickle

UPSTREAM_KEY = "sk-upstream-0123456789abcdef"
KEY_RAW = "gw-client-key-raw-0123456789"  # configured as itself
KEY_HASHED = "gw-client-key-hashed-9876543210"  # configured as its sha256 digest only
LIMIT = 10 * 1024 * 1024  # the default server.max_body_bytes
BODY_TIMEOUT_S = 2.0


class Upstream:
    """Records every request; model ``slow`` answers after 3 s."""

    def __init__(self) -> None:
        self.recorded: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
            ]
        )

    async def chat(self, request: Request) -> Response:
        body = await request.body()
        self.recorded.append({"headers": dict(request.headers), "size": len(body)})
        if json.loads(body).get("model") == "slow":
            await asyncio.sleep(3)
        return JSONResponse(COMPLETION)

    async def models(self, request: Request) -> Response:
        self.recorded.append({"headers": dict(request.headers), "size": 0})
        return JSONResponse({"object": "list", "data": []})


@pytest.fixture(scope="module")
def upstream() -> Iterator[Any]:
    fake = Upstream()
    with ServerThread(fake.app) as srv:
        fake.url = srv.url + "/v1"  # type: ignore[attr-defined]
        yield fake


@pytest.fixture(scope="module")
def keyed(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """Shared upstream key, two client keys (one as a digest), a 2 s body timeout."""
    server = {
        "upstream": upstream.url,
        "upstream_api_key": UPSTREAM_KEY,
        "client_keys": [KEY_RAW, hash_key(KEY_HASHED)],
        "body_timeout_s": BODY_TIMEOUT_S,
    }
    srv = Serve(tmp_path_factory.mktemp("keyed"), server).start()
    try:
        yield srv
    finally:
        code = srv.stop()
        out = srv.output()
        for secret in (UPSTREAM_KEY, KEY_RAW, KEY_HASHED):
            assert secret not in out, "a key reached the server's output"
        assert code == 0, out


def _chat(content: str = BENIGN, model: str = "gpt-test") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}).encode()


def _auth(key: str = KEY_RAW) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "content-type": "application/json"}


# --------------------------------------------------------------------------------------------
# 1. Client keys
# --------------------------------------------------------------------------------------------
def test_keyset_compares_digests_and_never_shows_keys() -> None:
    keys = KeySet([KEY_RAW, hash_key(KEY_HASHED)])
    assert keys.matches(KEY_RAW) and keys.matches(KEY_HASHED)
    assert not keys.matches(hash_key(KEY_HASHED)) and not keys.matches(None)
    assert not keys.matches(KEY_RAW + "x") and not keys.matches("")
    assert KEY_RAW not in repr(keys) and hashlib.sha256(KEY_RAW.encode()).hexdigest() not in repr(
        keys
    )
    with pytest.raises(ConfigurationError) as err:
        KeySet(["short-key"])
    assert "short-key" not in str(err.value)
    with pytest.raises(ConfigurationError):
        KeySet(["sha256:abc"])
    assert bearer_token({"headers": [(b"authorization", b"Bearer  k1 ")]}) == "k1"
    assert bearer_token({"headers": [(b"authorization", b"Basic k1")]}) is None


def test_exposure_check() -> None:
    from alknet_firewall.config import ServerSettings

    relay = {"upstream_api_key": UPSTREAM_KEY, "host": "0.0.0.0"}
    with pytest.raises(ConfigurationError) as err:
        check_exposure(ServerSettings(**relay))
    assert "client_keys" in str(err.value) and UPSTREAM_KEY not in str(err.value)
    check_exposure(ServerSettings(**relay, allow_anonymous=True))
    check_exposure(ServerSettings(**relay, client_keys=(KEY_RAW,)))
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_exposure(ServerSettings(upstream_api_key=UPSTREAM_KEY, host=host))
    check_exposure(ServerSettings(host="0.0.0.0"))  # passthrough: the client's own key


def test_client_keys_need_an_upstream_key() -> None:
    """Passthrough forwards the client's Authorization: it cannot also carry a gateway key."""
    from alknet_firewall.config import load_settings
    from alknet_firewall.integrations.gateway import create_app
    from tests.integration_helpers import FakeFirewall

    up = {"upstream": "http://127.0.0.1:9/v1"}
    with pytest.raises(ConfigurationError, match="upstream_api_key"):
        create_app(load_settings(None, server={**up, "client_keys": [KEY_RAW]}), FakeFirewall())
    with pytest.raises(ConfigurationError, match="metrics_auth"):
        create_app(load_settings(None, server={**up, "metrics_auth": True}), FakeFirewall())
    create_app(load_settings(None, server=up), FakeFirewall())  # passthrough as before


@pytest.mark.slow
def test_serve_refuses_to_be_an_open_relay(run_cli: Any, tmp_path: Path) -> None:
    env = {
        "ALKNET_FIREWALL_SERVER__UPSTREAM_API_KEY": UPSTREAM_KEY,
        "ALKNET_FIREWALL_SERVER__UPSTREAM": "http://127.0.0.1:9/v1",
    }
    proc = run_cli("serve", "--host", "0.0.0.0", "--port", "1", env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "client_keys" in proc.stderr and "allow_anonymous" in proc.stderr
    assert UPSTREAM_KEY not in proc.stderr + proc.stdout
    missing = tmp_path / "no-such-keys"
    env["ALKNET_FIREWALL_SERVER__CLIENT_KEYS_FILE"] = str(missing)
    proc = run_cli("serve", "--host", "0.0.0.0", "--port", "1", env=env, timeout=60)
    assert proc.returncode == 2 and "client_keys_file" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_client_keys_required_and_never_forwarded(keyed: Serve, upstream: Any) -> None:
    url = keyed.url + "/v1/chat/completions"
    before = len(upstream.recorded)
    for headers in (
        {"content-type": "application/json"},
        _auth("gw-wrong-key-0123456789abc"),
        _auth(hash_key(KEY_HASHED)),  # the digest is not the key
        {"authorization": f"Basic {KEY_RAW}", "content-type": "application/json"},
        _auth(UPSTREAM_KEY),  # the upstream key is not a client key
    ):
        r = httpx.post(url, content=_chat(), headers=headers, timeout=30)
        assert r.status_code == 401, (headers, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert KEY_RAW not in r.text and UPSTREAM_KEY not in r.text
    assert httpx.get(keyed.url + "/v1/models", timeout=30).status_code == 401
    assert len(upstream.recorded) == before, "an unauthenticated request reached the upstream"

    for key in (KEY_RAW, KEY_HASHED):
        r = httpx.post(url, content=_chat(), headers=_auth(key), timeout=60)
        assert r.status_code == 200, r.text
        assert r.headers["x-alknet-firewall-action"] == "allow"
        sent = upstream.recorded[-1]["headers"]
        assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert key not in json.dumps(sent)
    assert httpx.get(keyed.url + "/v1/models", headers=_auth(), timeout=30).status_code == 200

    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key="gw-wrong-key-0123456789abc")
    with pytest.raises(openai.AuthenticationError) as exc:
        client.with_options(max_retries=0).models.list()
    assert exc.value.status_code == 401 and exc.value.code == "invalid_api_key"
    ok = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY_HASHED, max_retries=0)
    reply = ok.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": BENIGN}]
    )
    assert reply.choices[0].message.content == "Paris."

    # /metrics behind the same keys (metrics_auth defaults on with client keys); /healthz open.
    assert httpx.get(keyed.url + "/metrics", timeout=30).status_code == 401
    r = httpx.get(keyed.url + "/metrics", headers=_auth(), timeout=30)
    assert r.status_code == 200 and "alknet_firewall_verdicts_total" in r.text
    assert httpx.get(keyed.url + "/healthz", timeout=30).status_code == 200


# --------------------------------------------------------------------------------------------
# 2. Oversized bodies: the 413 reaches every common client
# --------------------------------------------------------------------------------------------
def _big(total: int) -> bytes:
    """A chat body of exactly ``total`` bytes."""
    head = b'{"model":"gpt-test","messages":[{"role":"user","content":"'
    tail = b'"}]}'
    return head + b"x" * (total - len(head) - len(tail)) + tail


def _is_413(status: int, body: bytes) -> bool:
    return status == 413 and json.loads(body)["error"]["code"] == "request_too_large"


@pytest.mark.slow
def test_oversized_bodies_get_413_in_every_client(
    keyed: Serve, upstream: Any, tmp_path: Path
) -> None:
    url = keyed.url + "/v1/chat/completions"
    before = len(upstream.recorded)
    body12 = _big(12 * 1024 * 1024)
    seen: dict[str, Any] = {}

    # urllib (sends 'Connection: close' and its whole body before reading): 12 MB and 4 x limit.
    for name, body in (("urllib 12MB", body12), ("urllib 4x", _big(4 * LIMIT))):
        req = urllib.request.Request(url, data=body, headers=_auth(), method="POST")
        try:
            urllib.request.urlopen(req, timeout=60)
            seen[name] = "no error"
        except urllib.error.HTTPError as e:
            seen[name] = _is_413(e.code, e.read())
        except OSError as e:  # the bug: ConnectionResetError / BrokenPipeError
            seen[name] = repr(e)

    import requests

    r = requests.post(url, data=body12, headers=_auth(), timeout=60)
    seen["requests"] = _is_413(r.status_code, r.content)
    # A chunked upload (no Content-Length): cut at the limit, the rest read and thrown away.
    chunks = (body12[i : i + 65536] for i in range(0, len(body12), 65536))
    r = requests.post(url, data=chunks, headers=_auth(), timeout=60)
    seen["requests chunked"] = _is_413(r.status_code, r.content)

    with httpx.Client(timeout=60) as client:
        r = client.post(url, content=body12, headers=_auth())
        seen["httpx"] = _is_413(r.status_code, r.content)
        seen["httpx next request"] = (
            client.post(url, content=_chat(), headers=_auth()).status_code == 200
        )

    oai = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY_RAW, max_retries=0, timeout=60)
    try:
        oai.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "x" * (12 * 1024 * 1024)}]
        )
        seen["openai"] = "no error"
    except openai.APIStatusError as e:
        seen["openai"] = e.status_code == 413 and e.code == "request_too_large"
    except openai.APIConnectionError as e:
        seen["openai"] = repr(e)

    curl = shutil.which("curl")
    assert curl, "curl is needed for this test (apt-get install curl)"
    path = tmp_path / "big.json"
    path.write_bytes(body12)
    for name, extra in (("curl", []), ("curl without Expect", ["-H", "Expect:"])):
        proc = subprocess.run(
            [
                *(curl, "-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}", *extra),
                *("-H", f"authorization: Bearer {KEY_RAW}", "-H", "content-type: application/json"),
                *("--data-binary", f"@{path}", url),
            ],
            capture_output=True,
            timeout=90,
        )
        out, _, code = proc.stdout.rpartition(b"\n")
        seen[name] = (proc.returncode == 0 and _is_413(int(code or 0), out)) or proc.stderr
    assert all(v is True for v in seen.values()), seen
    assert len(upstream.recorded) == before + 1  # only httpx's small follow-up went upstream


# --------------------------------------------------------------------------------------------
# 4. Slow clients: 408 at server.body_timeout_s
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_client_sending_a_byte_a_second_gets_408(keyed: Serve) -> None:
    body = _chat()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {KEY_RAW}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    # At most 15 bytes, 15 s; after the 408 the server closes the connection.
    reply = trickle(keyed.port, head, body[:15], drain=True)
    status, _, rest = reply.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 408"), reply
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
    assert b"connection: close" in rest.lower()


# --------------------------------------------------------------------------------------------
# 5. Keep-alive longer than httpx's 5 s idle pool timeout
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_idle_connection_outlives_httpx_pool_timeout(keyed: Serve) -> None:
    request = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=10) as sock:
        sock.sendall(request)
        assert _response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6)  # uvicorn's default keep-alive (5 s) would have closed it by now
        sock.sendall(request)
        assert _response(sock).startswith(b"HTTP/1.1 200")


def _response(sock: socket.socket) -> bytes:
    """One whole HTTP response with a Content-Length (b"" if the server closed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


# --------------------------------------------------------------------------------------------
# 5. Graceful shutdown; /metrics on its own port
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_finishes_in_flight_refuses_new_and_exits_0(upstream: Any, tmp_path: Path) -> None:
    metrics_port = free_port()
    server = {
        "upstream": upstream.url,
        "metrics_port": metrics_port,
        "shutdown_grace_s": 15,
        "limit_concurrency": 50,
    }
    srv = Serve(tmp_path, server).start()
    try:
        assert httpx.get(srv.url + "/metrics", timeout=30).status_code == 404
        r = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30)
        assert r.status_code == 200 and "alknet_firewall_queue_depth" in r.text

        before = len(upstream.recorded)
        result: dict[str, Any] = {}

        def in_flight() -> None:
            try:
                r = httpx.post(
                    srv.url + "/v1/chat/completions",
                    content=_chat(model="slow"),
                    headers={"content-type": "application/json"},
                    timeout=60,
                )
                result["status"], result["body"] = r.status_code, r.json()
            except Exception as exc:
                result["error"] = repr(exc)

        t = threading.Thread(target=in_flight)
        t.start()
        deadline = time.monotonic() + 60
        while len(upstream.recorded) == before:  # the request is at the (3 s) upstream
            assert time.monotonic() < deadline and t.is_alive(), result
            time.sleep(0.05)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        late = httpx.post(
            srv.url + "/v1/chat/completions",
            content=_chat(),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert late.status_code == 503, late.text
        assert late.json()["error"]["code"] == "shutting_down"
        assert late.headers["retry-after"] == "1"
        assert httpx.get(srv.url + "/healthz", timeout=30).status_code == 503
        t.join(30)
        assert result.get("status") == 200, result
        assert result["body"] == COMPLETION
        code = srv.proc.wait(30)
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop(signal.SIGKILL)
    assert code == 0, srv.output()
    assert len(upstream.recorded) == before + 1  # the late request never went upstream
