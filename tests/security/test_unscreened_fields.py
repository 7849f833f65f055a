"""Issue 19, item 3: no text field of a request reaches the LLM unscreened.

Every field of :func:`tests.test_request_content.field_cases` (Chat Completions, Completions,
Responses) carries the attack text in turn, through each integration with the real model and
the shipped codebook:

* (a) a real ``alknet-firewall serve`` process in front of an upstream that records every
  request: blocked with 400, nothing reaches the upstream;
* (b) the ASGI middleware on a real uvicorn server in front of an app that records bodies;
* (c) a real LiteLLM proxy with the guardrail (``proxy_config/guardrail.yaml``).

The same request with a benign text in that field goes through, so each block is the field's
doing. Operator fields (system, developer, instructions) and model-written ones (tool-call
arguments) are a documented policy switch, not screened by default (docs/request-fields.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from alknet_firewall.integrations.asgi import FirewallMiddleware
from tests.integration_helpers import (
    ATTACK,
    BENIGN,
    ServerThread,
    acquire_firewall,
    release_firewall,
)
from tests.integrations.test_gateway_hardening import Serve
from tests.litellm_helpers import REPO, Proxy
from tests.reliability_helpers import EchoApp, RawUpstream
from tests.test_request_content import FieldCase, field_cases

ATTACKS = field_cases(ATTACK)
BENIGNS = {c.id: c for c in field_cases(BENIGN)}
SCREENED = [c for c in ATTACKS if c.screened]
OPERATOR = [c for c in ATTACKS if not c.screened]
ids = [c.id for c in SCREENED]


def _blocked(r: httpx.Response) -> dict[str, Any]:
    """The verdict of a request blocked by the firewall (400, code content_filter)."""
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "content_filter", err
    assert err["verdict"]["action"] == "block"
    return dict(err["verdict"])


# --------------------------------------------------------------------------------------------
# (a) the gateway: a real `serve` process, an upstream recording every request
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    with RawUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def gateway(
    upstream: RawUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    srv = Serve(tmp_path_factory.mktemp("fields"), {"upstream": upstream.url + "/v1"}).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60, trust_env=False) as client:
            yield client
    finally:
        assert srv.stop() == 0, srv.output()


def _forwarded(upstream: RawUpstream, since: int) -> list[bytes]:
    return [r["body"] for r in upstream.recorded[since:]]


@pytest.mark.slow
def test_gateway_blocks_the_attack_as_a_plain_user_message(
    gateway: httpx.Client, upstream: RawUpstream
) -> None:
    before = len(upstream.recorded)
    assert gateway.post("/v1/chat/completions", json=BENIGNS["chat-user"].body).status_code == 200
    _blocked(gateway.post("/v1/chat/completions", json=ATTACKS[0].body))
    assert len(_forwarded(upstream, before)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("case", SCREENED, ids=ids)
def test_gateway_blocks_an_attack_in_every_field(
    gateway: httpx.Client, upstream: RawUpstream, case: FieldCase
) -> None:
    before = len(upstream.recorded)
    _blocked(gateway.post(case.endpoint, json=case.body))
    assert _forwarded(upstream, before) == [], f"{case.path} reached the upstream"
    benign = gateway.post(case.endpoint, json=BENIGNS[case.id].body)
    assert benign.status_code == 200, benign.text
    assert benign.headers["x-alknet-firewall-action"] != "block"
    assert len(_forwarded(upstream, before)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("case", OPERATOR, ids=[c.id for c in OPERATOR])
def test_gateway_forwards_operator_fields_by_default(
    gateway: httpx.Client, upstream: RawUpstream, case: FieldCase
) -> None:
    """The documented default (policy ``roles``): system, developer, instructions and
    model-written tool-call arguments are not screened unless their role is added."""
    before = len(upstream.recorded)
    r = gateway.post(case.endpoint, json=case.body)
    assert r.status_code == 200, r.text
    assert ATTACK in _forwarded(upstream, before)[0].decode()


# --------------------------------------------------------------------------------------------
# (b) the ASGI middleware on a real uvicorn server
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def middleware() -> Iterator[tuple[httpx.Client, EchoApp]]:
    fw = acquire_firewall()
    app = EchoApp()
    try:
        with (
            ServerThread(FirewallMiddleware(app, firewall=fw)) as srv,
            httpx.Client(base_url=srv.url, timeout=60, trust_env=False) as client,
        ):
            yield client, app
    finally:
        release_firewall()


@pytest.mark.slow
@pytest.mark.parametrize("case", SCREENED, ids=ids)
def test_middleware_blocks_an_attack_in_every_field(
    middleware: tuple[httpx.Client, EchoApp], case: FieldCase
) -> None:
    client, app = middleware
    before = len(app.seen)
    _blocked(client.post(case.endpoint, json=case.body))
    assert len(app.seen) == before, f"{case.path} reached the app"
    benign = client.post(case.endpoint, json=BENIGNS[case.id].body)
    assert benign.status_code == 200, benign.text
    assert json.loads(app.seen[-1]) == BENIGNS[case.id].body


# --------------------------------------------------------------------------------------------
# (c) the LiteLLM guardrail in a real proxy
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def litellm_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    pytest.importorskip("litellm")
    env = {"ALKNET_FIREWALL_POOL__WORKERS": "1", "ALKNET_FIREWALL_POOL__WARMUP": "false"}
    if os.environ.get("ALKNET_TEST_CODEBOOK"):
        env["ALKNET_FIREWALL_DETECTION__CODEBOOK"] = os.environ["ALKNET_TEST_CODEBOOK"]
    log = tmp_path_factory.mktemp("litellm-fields") / "proxy.log"
    with Proxy(REPO / "proxy_config/guardrail.yaml", log, env=env) as proxy:
        yield proxy


def _litellm_body(case: FieldCase) -> dict[str, Any]:
    return {**case.body, "model": "mock-gpt"}


@pytest.mark.slow
@pytest.mark.parametrize("case", SCREENED, ids=ids)
def test_litellm_guardrail_blocks_an_attack_in_every_field(
    litellm_proxy: Proxy, case: FieldCase
) -> None:
    with litellm_proxy.client() as client:
        r = client.post(case.endpoint, json=_litellm_body(case))
        # LiteLLM shapes the error per endpoint (/v1/completions flattens the verdict into the
        # message): the guardrail's 400 and its message are common to all.
        assert r.status_code == 400, (r.text, litellm_proxy.log_tail())
        assert "blocked by alknet-firewall" in r.json()["error"]["message"], r.text
        benign = client.post(case.endpoint, json=_litellm_body(BENIGNS[case.id]))
    # The benign twin is not blocked by the guardrail (the mock model may not serve every
    # endpoint and shape: only the guardrail's verdict is under test).
    assert benign.headers.get("x-alknet-firewall-action") in ("allow", "flag"), (
        benign.status_code,
        benign.text[:500],
        litellm_proxy.log_tail(),
    )
