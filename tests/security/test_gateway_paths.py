"""Issue 19 item 1 (HIGH): no request path reaches an upstream route outside the allow-list.

Before the fix, ``GET /v1/models/../files`` (``curl --path-as-is``) reached the upstream as
``GET /v1/files`` with the shared upstream key, and ``/v1/models/../chat/completions`` with an
attack in its body reached it unscreened. Every target here is sent byte for byte on a raw
socket to a real ``serve`` process; the upstream records every path it receives."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration_helpers import ATTACK
from tests.security.conftest import CLIENT_KEY, UPSTREAM_KEY
from tests.serve_helpers import Serve, raw_http

#: Request targets that must never reach the upstream (method GET unless stated).
ATTACKS = [
    "/v1/models/../files?purpose=x",
    "/v1/models/%2e%2e/files/file-abc/content",
    "/v1/models/%2E%2E/files",
    "/v1/models/..%2f..%2fadmin",
    "/v1/models/x%2F..%2F..%2Fadmin",
    "/v1/models/..%5cadmin",
    "/v1/models/..\\..\\admin",
    "/v1/models/.",
    "/v1/models/..",
    "/v1/./models",
    "/v1/models/%252e%252e/files",
    "/v1/models/ft:x/../../files",
    "/v1/files",
    "/v1/batches",
    "/admin",
]
ALLOWED = {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models"}


def _allowed(path: str) -> bool:
    if path in ALLOWED:
        return True
    rest = path.removeprefix("/v1/models/")
    return rest != path and "/" not in rest and rest not in ("", ".", "..") and "%2" not in rest


def _headers() -> dict[str, str]:
    return {"authorization": f"Bearer {CLIENT_KEY}"}


@pytest.mark.slow
@pytest.mark.parametrize("target", ATTACKS)
def test_traversal_never_reaches_the_upstream(keyed: Serve, echo: Any, target: str) -> None:
    before = len(echo.recorded)
    status, body = raw_http(keyed.port, target, headers=_headers())
    assert status in (400, 404), (target, status, body)
    assert len(echo.recorded) == before, f"{target} reached the upstream as {echo.paths()[-1]}"
    if status == 400:
        assert json.loads(body)["error"]["code"] == "invalid_path"


@pytest.mark.slow
def test_traversal_into_a_screened_route_with_an_attack(keyed: Serve, echo: Any) -> None:
    """The attack of the issue: a GET whose path resolves to /chat/completions upstream."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": ATTACK}]})
    before = len(echo.recorded)
    for target in ("/v1/models/../chat/completions", "/v1/models/%2e%2e/chat/completions"):
        status, _ = raw_http(
            keyed.port,
            target,
            headers={**_headers(), "content-type": "application/json"},
            body=body.encode(),
        )
        assert status == 400, (target, status)
    assert len(echo.recorded) == before


@pytest.mark.slow
def test_model_ids_are_one_escaped_segment(keyed: Serve, echo: Any) -> None:
    status, _ = raw_http(keyed.port, "/v1/models/ft:gpt-test:org:x", headers=_headers())
    assert status == 200
    sent = echo.recorded[-1]
    assert sent["path"] == "/v1/models/ft%3Agpt-test%3Aorg%3Ax", sent["path"]
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    # The upstream key went to allowed routes only, across the whole session so far.
    for r in echo.recorded:
        if r["headers"].get("authorization") == f"Bearer {UPSTREAM_KEY}":
            assert _allowed(r["path"].partition("?")[0]), r["path"]
