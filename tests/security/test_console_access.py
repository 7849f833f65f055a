"""Issue 19 item 4: the console's digest was a dictionary oracle, opened by any client key.

A victim sends "My account PIN is 4821, please reset it."; ``api/recent`` shows its digest;
before the fix a client key opened the console and ``api/screen`` returned the digest of a
guess, equal to the victim's when the guess was right."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.security.conftest import CLIENT_KEY
from tests.serve_helpers import Serve

VICTIM = "My account PIN is 4821, please reset it."
#: The open gateway trusts the test process as a proxy: this is "a loopback client".
LOCAL = {"x-forwarded-for": "::1"}


@pytest.mark.slow
def test_a_client_key_never_opens_the_console(keyed: Serve) -> None:
    key = {"authorization": f"Bearer {CLIENT_KEY}"}
    for path in ("/console/", "/console/api/stats", "/console/api/recent"):
        r = httpx.get(keyed.url + path, headers=key, timeout=30)
        assert r.status_code == 401, (path, r.status_code)
    r = httpx.post(
        keyed.url + "/console/api/screen",
        json={"text": VICTIM},
        headers={**key, "sec-fetch-site": "same-origin"},
        timeout=30,
    )
    assert r.status_code == 401
    r = httpx.post(
        keyed.url + "/console/login",
        content=f"key={CLIENT_KEY}".encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert r.status_code == 401 and "set-cookie" not in r.headers


@pytest.mark.slow
def test_try_box_digest_is_not_comparable_with_traffic(open_gateway: Serve) -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": VICTIM}]}
    r = httpx.post(open_gateway.url + "/v1/chat/completions", json=chat, timeout=60)
    assert r.status_code in (200, 400), r.text  # (the codebook finds it injection-like)
    api = open_gateway.url + "/console/api/"
    recent = httpx.get(api + "recent?limit=20", headers=LOCAL, timeout=30).json()["recent"]
    victim = next(rec for rec in recent if rec["source"] == "traffic")
    assert victim["digest"], victim

    headers = {**LOCAL, "content-type": "application/json", "sec-fetch-site": "same-origin"}
    for guess in ("My account PIN is 1234, please reset it.", VICTIM):
        r = httpx.post(api + "screen", content=json.dumps({"text": guess}), headers=headers)
        assert r.status_code == 200, r.text
        assert victim["digest"] not in r.text, "the try box returned a comparable digest"
        assert r.json()["record"]["digest"] is None
    recent = httpx.get(api + "recent?limit=20", headers=LOCAL, timeout=30).json()["recent"]
    tried = [rec for rec in recent if rec["source"] == "console"]
    assert len(tried) >= 2 and all(rec["digest"] is None for rec in tried), tried
    assert sum(rec.get("digest") == victim["digest"] for rec in recent) == 1

    # The console's own JSON API needs a JSON Content-Type too (a form post is refused).
    r = httpx.post(
        api + "screen",
        content=json.dumps({"text": VICTIM}),
        headers={**LOCAL, "content-type": "text/plain"},
        timeout=30,
    )
    assert r.status_code == 415


def test_docs_no_longer_claim_the_digest_reveals_nothing() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "console.md").read_text()
    assert "not a dictionary oracle" not in doc
    assert "holders of a client key" not in doc
