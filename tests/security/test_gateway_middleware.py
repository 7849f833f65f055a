"""Issue 19 items 7b and 7c: the ASGI middleware's defaults and its example.

7c: the middleware's default ``on_non_json`` passed a ``text/plain`` attack unscreened to an
app that parsed the body anyway. 7b: ``examples/fastapi_middleware.py`` let every client pick
its policy with a header (``monitor``: the attack passed). Real uvicorn servers on loopback,
the real model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration_helpers import (
    ATTACK,
    BENIGN,
    ServerThread,
    child_env,
    codebook_path,
    free_port,
    shared_firewall,
)

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def firewall() -> Iterator[Any]:
    yield from shared_firewall()


@pytest.mark.slow
def test_text_plain_attack_is_not_passed_unscreened(firewall: Any) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from alknet_firewall.integrations.asgi import FirewallMiddleware

    seen: list[str] = []

    async def chat(request: Request) -> JSONResponse:
        body = json.loads(await request.body())  # parses whatever the content type says
        seen.append(body["messages"][0]["content"])
        return JSONResponse({"ok": True})

    app = FirewallMiddleware(
        Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]),
        firewall=firewall,
    )
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": ATTACK}]})
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        for ctype in ("text/plain", "text/plain;charset=UTF-8", None):
            headers = {"content-type": ctype} if ctype else {}
            body = raw if ctype else "not json " + raw
            r = client.post("/v1/chat/completions", content=body, headers=headers)
            assert r.status_code in (400, 415), (ctype, r.status_code, r.text)
        r = client.post("/v1/chat/completions", content=raw, headers={"content-type": "text/plain"})
        assert r.json()["error"]["code"] == "unsupported_media_type"
    assert seen == [], "an attack reached the app unscreened"


@pytest.mark.slow
def test_example_takes_the_policy_from_the_key_not_a_header(tmp_path: Path) -> None:
    port = free_port()
    env = child_env(
        ALKNET_FIREWALL_DETECTION__CODEBOOK=str(codebook_path()),
        ALKNET_FIREWALL_POOL__WORKERS="1",
        ALKNET_FIREWALL_POOL__WARMUP="false",
        ALKNET_FIREWALL_POLICIES='{"default": {}, "monitor": {"monitor": true}}',
        PYTHONPATH=f"{ROOT / 'src'}:{ROOT}",
    )
    log = tmp_path / "example.log"
    cmd = [sys.executable, "-m", "uvicorn", "examples.fastapi_middleware:app", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)

        def post(content: str, **headers: str) -> httpx.Response:
            body = {"model": "m", "messages": [{"role": "user", "content": content}]}
            return httpx.post(url, json=body, headers=headers, timeout=60)

        key = {"authorization": "Bearer demo-tenant-key-0123456789"}
        chosen = {**key, "x-alknet-firewall-policy": "monitor"}
        r = post(ATTACK, **chosen)
        assert r.status_code == 400, r.text  # the client's choice is ignored
        assert r.json()["error"]["verdict"]["policy"] == "default"
        assert post(BENIGN, **key).status_code == 200
        assert post(BENIGN).status_code == 401  # no key: no service
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
