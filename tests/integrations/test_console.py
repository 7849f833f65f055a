"""The operator console: JSON API and page (fake model), the highlight on the real tokenizer,
and the page in a real headless Chromium against a real gateway process (slow)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from alknet_firewall.config import load_settings
from alknet_firewall.firewall import Firewall
from alknet_firewall.integrations.console import char_span, console_app, highlight
from tests.fakes import FakeModel, fit_fake_codebook

KEY = "console-admin-key-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
SECRET = "my secret words please summarise the report"


class WordModel(FakeModel):
    """The fake model (a token per word) with character offsets, like a fast tokenizer's."""

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]


@pytest.fixture(scope="module")
def codebook() -> Any:
    return fit_fake_codebook(FakeModel())


def _firewall(codebook: Any, **settings: Any) -> Firewall:
    s = load_settings(
        None,
        pool={"workers": 1, "warmup": False},
        policies={"default": {}, "monitor": {"monitor": True}},
        **settings,
    )
    return Firewall(s, model=WordModel(), codebook=codebook)


@pytest.fixture(scope="module")
def fw(codebook: Any) -> Iterator[Firewall]:
    f = _firewall(codebook)
    yield f
    f.close()


def _authorize(request: Any) -> bool:
    return request.headers.get("authorization") == f"Bearer {KEY}"


@pytest.fixture()
def client(fw: Firewall) -> Iterator[TestClient]:
    with TestClient(console_app(fw, authorize=_authorize)) as c:
        yield c


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------
def test_without_a_key_page_and_api_answer_401(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 401
    assert 'name="key"' in page.text and 'type="password"' in page.text
    for method, path in (("GET", "/api/stats"), ("GET", "/api/recent"), ("POST", "/api/screen")):
        r = client.request(method, path, json={"text": "hi"})
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"].startswith("Bearer")
    wrong = {"authorization": "Bearer wrong-key-0123456789"}
    assert client.get("/", headers=wrong).status_code == 401
    # Static files carry no data: the login page needs its stylesheet.
    assert client.get("/static/console.css").status_code == 200


def test_bearer_key_and_login_cookie(client: TestClient) -> None:
    r = client.get("/", headers=AUTH)
    assert r.status_code == 200 and 'id="try-form"' in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    bad = client.post("/login", data={"key": "not-the-key-0123456789"}, follow_redirects=False)
    assert bad.status_code == 401 and "not accepted" in bad.text
    assert "alknet_console" not in client.cookies
    ok = client.post("/login", data={"key": KEY}, follow_redirects=False)
    assert ok.status_code == 303
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and KEY not in cookie
    assert client.get("/").status_code == 200
    assert client.get("/api/stats").status_code == 200
    # Another site cannot use the browser's session to screen (nor to log in).
    cross = {"origin": "http://evil.example"}
    assert client.post("/api/screen", json={"text": "hi"}, headers=cross).status_code == 403
    client.post("/logout")
    assert client.get("/api/stats").status_code == 401


# --------------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------------
def test_screen_is_recorded_as_console_without_text(client: TestClient, fw: Firewall) -> None:
    before = client.get("/api/stats", headers=AUTH).json()["windows"]["5m"]["verdicts"]
    words = ["please", "summarise", "the", "report"] * 10 + ["ATTACK", "now"] + ["weather"] * 30
    text = " ".join(words)
    r = client.post("/api/screen", json={"text": text, "policy": "default"}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    v = body["verdict"]
    assert v["action"] == "block" and v["signal"] == "injection"
    hl = body["highlight"]
    assert hl["text"] == text and hl["changed"] is False and hl["seam"] is False
    span = hl["span"]
    # The driving window's words, mapped to characters: it holds the attack word.
    a, n = v["window"]["token_start"], v["window"]["n_tokens"]
    assert text[span["start"] : span["end"]] == " ".join(words[a : a + n])
    assert "ATTACK" in text[span["start"] : span["end"]]
    assert body["record"]["source"] == "console" and "text" not in body["record"]
    recent = client.get("/api/recent?limit=5", headers=AUTH).json()
    assert recent["log_text"] is False
    assert recent["recent"][0]["source"] == "console"
    assert recent["recent"][0]["digest"] == body["record"]["digest"]
    assert "ATTACK" not in str(recent)
    after = client.get("/api/stats", headers=AUTH).json()["windows"]["5m"]
    assert after["verdicts"] == before + 1 and after["by_action"].get("block", 0) >= 1
    # The same code path as traffic: the Prometheus counter moved too.
    assert client.get("/api/stats", headers=AUTH).json()["total"]["verdicts"] >= after["verdicts"]


def test_screen_messages_and_bad_requests(client: TestClient) -> None:
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "please summarise the report"},
        {"role": "tool", "content": "ATTACK now the weather"},
    ]
    r = client.post("/api/screen", json={"messages": msgs}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verdict"]["action"] == "block"
    hl = body["highlight"]
    assert "ATTACK" in hl["text"][hl["span"]["start"] : hl["span"]["end"]]
    for payload, code in (
        ({"text": "a", "messages": msgs}, "bad_input"),
        ({}, "bad_input"),
        ({"text": 5}, "bad_input"),
        ({"text": "a", "policy": "nope"}, "unknown_policy"),
        ({"messages": [{"content": "no role"}]}, "bad_input"),
    ):
        r = client.post("/api/screen", json=payload, headers=AUTH)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (payload, r.text)
    r = client.post("/api/screen", content=b"{not json", headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_stats_shape(client: TestClient, fw: Firewall) -> None:
    s = client.get("/api/stats", headers=AUTH).json()
    assert set(s["windows"]) == {"5m", "1h"}
    for w in s["windows"].values():
        assert {"verdicts", "by_action", "by_signal", "errors", "latency_ms", "batches"} <= set(w)
    assert s["codebook"]["id"] == fw.codebook.id
    assert set(s["policies"]) == {"default", "monitor"}
    assert s["policies"]["monitor"]["monitor"] is True
    assert s["policies"]["default"]["thresholds"] == fw.thresholds(fw.settings.policy("default"))
    assert s["model"]["name"] == "fake/model" and s["model"]["backend"] == "local"
    assert s["auth"] is True and s["log_text"] is False
    assert isinstance(s["queue_depth"], int) and s["pool"]["workers"] == 1


def test_log_text_shows_text_only_when_on(codebook: Any) -> None:
    f = _firewall(codebook, log_text=True)
    try:
        with TestClient(console_app(f)) as c:
            assert c.post("/api/screen", json={"text": SECRET}).status_code == 200
            assert c.get("/api/recent").json()["recent"][0]["text"] == SECRET
        # log_text=False on the console hides what the firewall keeps.
        with TestClient(console_app(f, log_text=False)) as c:
            assert SECRET not in c.get("/api/recent").text
    finally:
        f.close()


def test_no_firewall_yet_is_503() -> None:
    with TestClient(console_app(None)) as c:
        assert c.get("/api/stats").status_code == 503
        assert c.get("/").status_code == 200


def test_char_span() -> None:
    offs = [(0, 5), (5, 11), (11, 12), (12, 12)]
    assert char_span(offs, 1, 2) == (5, 12)
    assert char_span(offs, 0, 99) == (0, 12)
    assert char_span(offs, 9, 1) is None and char_span(offs, 0, 0) is None
    # Byte-level tokens of one character share its offsets.
    assert char_span([(0, 1), (0, 1), (1, 2)], 1, 1) == (0, 1)
    assert highlight(FakeModel(), "no offsets here", {"token_start": 0, "n_tokens": 1}) is None
