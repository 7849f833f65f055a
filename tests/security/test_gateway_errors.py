"""Issue 19 item 7a: a fail-closed 503 tells the client a code and a generic message; the
failure's text (here the model server's URL) goes to the log only.

Real processes: ``model serve``, and ``serve`` with ``model.backend: remote`` pointing at it;
the model server is then killed, so screening fails with a ``ModelError`` naming its URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration_helpers import BENIGN, free_port
from tests.scaleout_helpers import ModelServerProcess
from tests.serve_helpers import Serve


@pytest.mark.slow
def test_fail_closed_body_carries_no_topology(echo: Any, tmp_path: Path) -> None:
    model = ModelServerProcess(free_port()).start()
    gateway = None
    try:
        gateway = Serve(
            tmp_path,
            {"upstream": echo.url},
            ALKNET_FIREWALL_MODEL__BACKEND="remote",
            ALKNET_FIREWALL_MODEL__REMOTE__URL=model.url,
            ALKNET_FIREWALL_MODEL__REMOTE__RETRIES="0",
        ).start()
        model.kill()
        before = len(echo.recorded)
        chat = {"model": "m", "messages": [{"role": "user", "content": BENIGN}]}
        r = httpx.post(gateway.url + "/v1/chat/completions", json=chat, timeout=120)
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["code"] == "model_error" and err["verdict"]["error"] == "model_error", err
        text = r.text + json.dumps(dict(r.headers))
        for secret in (model.url, f":{model.port}", "http://", "ConnectError", "unreachable"):
            assert secret not in text, f"{secret!r} reached the client: {r.text}"
        assert len(echo.recorded) == before
        assert f":{model.port}" in gateway.output(), "the detail must be in the log"
    finally:
        if gateway is not None and gateway.proc is not None:
            gateway.stop()
        model.stop()
