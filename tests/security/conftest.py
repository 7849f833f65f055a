"""Shared fixtures of the security suite (issue 19): an upstream that records every request
on any path, and real ``alknet-firewall serve`` processes in front of it (one per session and
configuration: each loads the model)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration_helpers import ServerThread
from tests.serve_helpers import EchoUpstream, Serve

UPSTREAM_KEY = "sk-upstream-secret-0123456789"
CLIENT_KEY = "gw-client-key-0123456789abcd"
BODY_TIMEOUT_S = 2.0
#: Origin the open gateway lets browsers call it from (server.cors_origins).
APP_ORIGIN = "http://app.example"


@pytest.fixture(scope="session")
def echo() -> Iterator[EchoUpstream]:
    fake = EchoUpstream()
    with ServerThread(fake) as srv:
        fake.url = srv.url + "/v1"  # type: ignore[attr-defined]
        yield fake


def _serve(tmp: Any, server: dict[str, Any], **env: str) -> Iterator[Serve]:
    srv = Serve(tmp, server, **env).start()
    try:
        yield srv
    finally:
        code = srv.stop()
        out = srv.output()
        assert UPSTREAM_KEY not in out and CLIENT_KEY not in out, "a key reached the log"
        assert code == 0, out


@pytest.fixture(scope="session")
def keyed(echo: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """Shared upstream key, one client key, no admin keys, a 2 s body timeout; on loopback,
    so the Host allow-list is the loopback names."""
    server = {
        "upstream": echo.url,
        "upstream_api_key": UPSTREAM_KEY,
        "client_keys": [CLIENT_KEY],
        "body_timeout_s": BODY_TIMEOUT_S,
    }
    yield from _serve(tmp_path_factory.mktemp("keyed"), server)


@pytest.fixture(scope="session")
def open_gateway(echo: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """No keys at all (passthrough; the console is loopback-only), the test process as a
    trusted proxy (127.0.0.1/32) and one CORS origin."""
    server = {
        "upstream": echo.url,
        "trusted_proxies": ["127.0.0.1/32"],
        "cors_origins": [APP_ORIGIN],
        "body_timeout_s": BODY_TIMEOUT_S,
    }
    yield from _serve(tmp_path_factory.mktemp("open"), server)


def auth(key: str = CLIENT_KEY, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "content-type": "application/json", **extra}
