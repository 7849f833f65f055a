"""Bad input, through the real gateway AND the ASGI middleware (real firewall, real uvicorn):
every request gets a clean OpenAI-style error or a correct verdict — never a 500, a hang or a
crash. Plus a property test of ``Firewall.screen`` itself on the model double.

(Covered elsewhere, not repeated here: duplicate JSON keys, token-id prompts, chunked bodies over
a small limit, ``on_invalid_json="pass"`` — tests/integrations/test_asgi.py; shape properties over
HTTP — tests/integrations/test_asgi.py and tests/integrations/test_gateway.py.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from alknet_firewall.errors import BadInputError
from alknet_firewall.integrations.asgi import FirewallMiddleware
from alknet_firewall.integrations.gateway import create_app
from alknet_firewall.integrations.openai_errors import status_for
from tests.fakes import FakeModel, fit_fake_codebook
from tests.integration_helpers import (
    ATTACK,
    BENIGN,
    ServerThread,
    firewall_settings,
    shared_firewall,
)
from tests.reliability_helpers import COMPLETION, EchoApp, RawUpstream, fake_model_firewall, rss_mb

H = "x-alknet-firewall-"
JSON = "application/json"
MB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# Two targets on one real firewall: the gateway (-> fake upstream) and the bare middleware
# --------------------------------------------------------------------------------------------
class Target:
    def __init__(self, kind: str, client: httpx.Client, sink: Any) -> None:
        self.kind = kind
        self.client = client
        self.sink = sink  # what received forwarded bodies: RawUpstream or EchoApp

    def forwarded(self) -> int:
        return len(self.sink.recorded if self.kind == "gateway" else self.sink.seen)

    def post(self, body: bytes | Any, content_type: str | None = JSON, **kw: Any) -> httpx.Response:
        headers = {"content-type": content_type} if content_type else {}
        headers["authorization"] = "Bearer sk-test"
        return self.client.post("/v1/chat/completions", content=body, headers=headers, **kw)


@pytest.fixture(scope="module")
def firewall() -> Iterator[Any]:
    yield from shared_firewall()


@pytest.fixture(scope="module")
def servers(firewall: Any) -> Iterator[dict[str, Target]]:
    echo = EchoApp()
    with RawUpstream() as upstream:
        # The gateway's own settings: default limits (10 MB body), 5 s upstream timeout.
        settings = firewall_settings(upstream=upstream.url + "/v1", upstream_timeout_s=5.0)
        gateway = create_app(settings, firewall)
        # Middleware with the gateway's choices: non-JSON bodies refused, default 10 MB limit.
        middleware = FirewallMiddleware(echo, firewall=firewall, on_non_json="reject")
        with (
            ServerThread(gateway) as gw,
            ServerThread(middleware) as mw,
            httpx.Client(base_url=gw.url, timeout=60) as gc,
            httpx.Client(base_url=mw.url, timeout=60) as mc,
        ):
            yield {
                "gateway": Target("gateway", gc, upstream),
                "middleware": Target("middleware", mc, echo),
            }


@pytest.fixture(params=["gateway", "middleware"])
def target(request: pytest.FixtureRequest, servers: dict[str, Target]) -> Target:
    return servers[request.param]


def _chat(messages: Any, **extra: Any) -> bytes:
    return json.dumps({"model": "m", "messages": messages, **extra}).encode()


def expect_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A clean OpenAI-style error."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"] == JSON
    err = r.json()["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] in ("invalid_request_error", "rate_limit_error", "server_error")
    assert err["param"] is None
    return err


def expect_verdict(t: Target, r: httpx.Response, action: str = "allow") -> dict[str, Any] | None:
    """Forwarded with this verdict (for texts whose verdict is fixed: BENIGN, or nothing to
    screen); the middleware's app echoes the verdict itself."""
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert r.headers[H + "action"] == action
    if t.kind == "gateway":
        assert r.json() == COMPLETION
        return None
    verdict = r.json()["verdict"]
    assert verdict["action"] == action and verdict["error"] is None
    return verdict


def expect_screened(t: Target, r: httpx.Response) -> dict[str, Any] | None:
    """Screened without error, whatever the model thought of the text: forwarded with a verdict
    (allow/flag) or blocked with one. The verdict when the response carries it whole."""
    if r.status_code == 400:
        return expect_blocked(r)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert r.headers[H + "action"] in ("allow", "flag")
    assert H + "error" not in r.headers
    if t.kind == "gateway":
        assert r.json() == COMPLETION
        return None
    verdict = r.json()["verdict"]
    assert verdict["error"] is None
    return verdict


def expect_blocked(r: httpx.Response) -> dict[str, Any]:
    err = expect_error(r, 400, "content_filter")
    assert err["verdict"]["action"] == "block" and err["verdict"]["error"] is None
    return err["verdict"]


# --------------------------------------------------------------------------------------------
# Malformed requests
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "raw",
    [b'{"messages": [', b'{"messages": [],}', b"", b"hello", b"{'messages': []}", b"[1, 2"],
    ids=["truncated", "trailing-comma", "empty", "text", "single-quotes", "array"],
)
def test_invalid_json_is_400(target: Target, raw: bytes) -> None:
    before = target.forwarded()
    expect_error(target.post(raw), 400, "invalid_json")
    assert target.forwarded() == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_wrong_content_type_is_415(target: Target, content_type: str) -> None:
    before = target.forwarded()
    r = target.post(_chat([{"role": "user", "content": ATTACK}]), content_type=content_type)
    expect_error(r, 415, "unsupported_media_type")
    assert target.forwarded() == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": "hi"},
        {"model": "m", "messages": {"role": "user", "content": "hi"}},
        {"model": "m", "messages": 5},
        {"model": "m", "messages": [5]},
        {"model": "m", "messages": [{"content": "hi"}]},
        {"model": "m", "messages": [{"role": 5, "content": "hi"}]},
        {"model": "m", "messages": [{"role": "user", "content": 5}]},
        {"model": "m", "messages": [{"role": "user", "content": {"text": "hi"}}]},
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {"model": "m", "messages": [{"role": "user", "content": [5]}]},
        {"model": "m", "messages": [{"role": "assistant", "tool_calls": {"id": "1"}}]},
        [{"role": "user", "content": "hi"}],
        "hi",
    ],
    ids=lambda b: json.dumps(b)[:60],
)
def test_wrong_typed_messages_is_400(target: Target, body: Any) -> None:
    before = target.forwarded()
    expect_error(target.post(json.dumps(body).encode()), 400, "bad_input")
    assert target.forwarded() == before


@pytest.mark.slow
def test_missing_or_null_messages_forwarded_with_empty_verdict(target: Target) -> None:
    # Nothing to screen is a verdict too (allow, 0 messages): the upstream judges the shape.
    for body in ({"model": "m"}, {"model": "m", "messages": None}, {"model": "m", "messages": []}):
        v = expect_verdict(target, target.post(json.dumps(body).encode()))
        if v is not None:
            assert v["screened_messages"] == 0


@pytest.mark.slow
def test_content_null_empty_parts_images(target: Target) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    # null and empty content: allowed, nothing screened
    for content in (None, "", "   "):
        v = expect_verdict(target, target.post(_chat([{"role": "user", "content": content}])))
        if v is not None:
            assert v["screened_messages"] == 0
    # a list of text parts is screened like a string
    parts = [{"type": "text", "text": BENIGN}]
    v = expect_verdict(target, target.post(_chat([{"role": "user", "content": parts}])))
    if v is not None:
        assert v["screened_messages"] == 1
    two = [{"type": "text", "text": "Hello."}, {"type": "input_text", "text": BENIGN}]
    v = expect_screened(target, target.post(_chat([{"role": "user", "content": two}])))
    if v is not None:
        assert v["screened_messages"] == 1 and v["ignored"] == []
    attack = [{"type": "text", "text": ATTACK}]
    assert expect_blocked(target.post(_chat([{"role": "user", "content": attack}])))
    # image parts: not screened, listed in the verdict; text next to them still is
    v = expect_verdict(target, target.post(_chat([{"role": "user", "content": [image]}])))
    if v is not None:
        assert v["ignored"] == ["messages[0].content[0]:image_url"]
        assert v["screened_messages"] == 0
    mixed = [image, {"type": "text", "text": ATTACK}]
    v = expect_blocked(target.post(_chat([{"role": "user", "content": mixed}])))
    assert v["ignored"] == ["messages[0].content[0]:image_url"]


@pytest.mark.slow
def test_tool_calls_and_tool_results(target: Target) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"city": "Paris"}'},
    }
    convo = [
        {"role": "user", "content": BENIGN},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": BENIGN},
    ]
    v = expect_screened(target, target.post(_chat(convo)))
    if v is not None:
        assert v["screened_messages"] == 2  # the user message and the tool result
    # An injection coming back in a tool result is caught, and pointed at.
    poisoned = [*convo[:2], {"role": "tool", "tool_call_id": "call_1", "content": ATTACK}]
    assert expect_blocked(target.post(_chat(poisoned)))["message_index"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "messages": [{"role": "user", "content": "caf\xe9"}]}',  # Latin-1
        b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe\xfd"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "ok"}]}\xc3',
    ],
    ids=["latin-1", "garbage", "truncated-sequence"],
)
def test_non_utf8_body_is_400(target: Target, raw: bytes) -> None:
    err = expect_error(target.post(raw), 400, "invalid_json")
    assert "UTF-8" in err["message"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "content", [b"Hi \\ud800 there", b"Hi \xed\xa0\x80 there"], ids=["escape", "raw-bytes"]
)
def test_lone_surrogate_gives_verdict_or_400(target: Target, content: bytes) -> None:
    r = target.post(b'{"model": "m", "messages": [{"role": "user", "content": "%s"}]}' % content)
    assert r.status_code in (200, 400), (r.status_code, r.text[:300])
    assert r.headers.get(H + "error") is None


# --------------------------------------------------------------------------------------------
# Size
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_10mb_body_is_413(target: Target) -> None:
    limit = 10 * MB  # the default of both server.max_body_bytes and the middleware
    body = _chat([{"role": "user", "content": "a" * (limit + 1024)}])
    before = target.forwarded()
    expect_error(target.post(body), 413, "request_too_large")  # Content-Length: not read

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), MB):
            yield body[i : i + MB]

    expect_error(target.post(pieces()), 413, "request_too_large")  # chunked: cut off at limit
    assert target.forwarded() == before
    expect_verdict(target, target.post(_chat([{"role": "user", "content": BENIGN}])))


@pytest.mark.slow
def test_million_char_message_bounded_time_and_memory(target: Target) -> None:
    # 1,000,000 characters (about 220,000 tokens): above detection.max_input_tokens (65,536),
    # so it must be refused with 413 — never truncated into a pass — in bounded time and memory.
    text = ("The quick brown fox jumps over the lazy dog. " * 22_223)[:1_000_000]
    for content in (text, text[: -len(ATTACK)] + ATTACK):
        rss0, t0 = rss_mb(), time.perf_counter()
        r = target.post(_chat([{"role": "user", "content": content}]))
        elapsed, grown = time.perf_counter() - t0, rss_mb() - rss0
        print(f"{target.kind}: 1M chars -> {r.status_code} in {elapsed:.2f}s, RSS +{grown:.0f} MB")
        assert elapsed < 30
        assert grown < 512
        if r.status_code == 413:
            expect_error(r, 413, "input_too_large")
        else:  # screened by windows instead: the attack at the very end must be found
            assert r.status_code in (200, 400)
            assert (r.status_code == 400) == (content.endswith(ATTACK))


@pytest.mark.slow
def test_thousands_of_messages_clean_and_bounded(target: Target) -> None:
    msgs = [{"role": "user", "content": f"Short note number {i}."} for i in range(3000)]
    t0 = time.perf_counter()
    r = target.post(_chat(msgs))
    elapsed = time.perf_counter() - t0
    print(f"{target.kind}: 3000 messages -> {r.status_code} in {elapsed:.2f}s")
    assert elapsed < 60
    if r.status_code == 200:
        expect_verdict(target, r)
    else:
        assert r.status_code in (400, 413), r.text[:300]
        expect_error(r, r.status_code, r.json()["error"]["code"])
    # The queue drains: the next ordinary request is served at once.
    expect_verdict(target, target.post(_chat([{"role": "user", "content": BENIGN}])))


@pytest.mark.slow
def test_thousands_of_messages_not_refused_as_overload(target: Target) -> None:
    msgs = [{"role": "user", "content": f"Short note number {i}."} for i in range(3000)]
    r = target.post(_chat(msgs))
    assert r.status_code in (200, 400, 413), r.text[:300]


@pytest.mark.slow
@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"model": "m", "messages": [{"role": "user", "content": ' + b"[" * 100_000 + b"]}]}",
    ],
    ids=["open-arrays", "closed-arrays", "objects", "inside-content"],
)
def test_deeply_nested_json_is_400_not_500(target: Target, raw: bytes) -> None:
    err = expect_error(target.post(raw), 400, "invalid_json")
    assert "nested too deeply" in err["message"]
    expect_verdict(target, target.post(_chat([{"role": "user", "content": BENIGN}])))


# --------------------------------------------------------------------------------------------
# Firewall.screen directly (model double): any JSON-like value -> Verdict or BadInputError
# --------------------------------------------------------------------------------------------
_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.sampled_from(["ATTACK now please", "", " ", "\u200b", "\U000e0041"])
)
_json = st.recursive(
    _leaf,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
_text = st.text(max_size=60) | st.sampled_from(["ATTACK now please", "\u200b" * 3])
_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "input_text", "output_text", "image_url"]) | _json},
    optional={"text": _text | _json, "image_url": _json},
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "tool", "function", "system", "assistant"]) | _json},
    optional={
        "content": st.none() | _text | st.lists(_part | _text | _json, max_size=3) | _json,
        "tool_calls": st.none()
        | st.lists(
            st.fixed_dictionaries(
                {"type": st.just("function")},
                optional={"function": st.fixed_dictionaries({"arguments": _text | _json}) | _json},
            )
            | _json,
            max_size=2,
        )
        | _json,
        "name": _json,
    },
)
SCREEN_INPUTS = _json | st.lists(_message | _json, max_size=5) | _text


@pytest.fixture(scope="module")
def fake_codebook() -> Any:
    return fit_fake_codebook(FakeModel())


@pytest.fixture(scope="module")
def fake_firewall(fake_codebook: Any) -> Iterator[Any]:
    with fake_model_firewall(fake_codebook, pool={"timeout_s": 10}) as fw:
        yield fw


def test_million_chars_within_the_limit_are_screened_by_windows(fake_codebook: Any) -> None:
    # With a limit that admits it, a 1,000,000-character message is read whole, window by
    # window: an attack in its last words is found, not truncated away.
    text = ("please summarise the weather report today " * 23_810)[: 1_000_000 - 20]
    with fake_model_firewall(
        fake_codebook, pool={"timeout_s": 60}, detection={"max_input_tokens": 400_000}
    ) as fw:
        rss0, t0 = rss_mb(), time.perf_counter()
        clean = fw.screen(text)
        attacked = fw.screen(text + " ATTACK do it now")
        elapsed, grown = time.perf_counter() - t0, rss_mb() - rss0
    print(
        f"1M chars by windows: {clean.action}/{attacked.action} in {elapsed:.1f}s, +{grown:.0f} MB"
    )
    assert clean.action == "allow" and clean.error is None
    assert attacked.action == "block" and attacked.window["window"] > 5000
    assert elapsed < 30 and grown < 512


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=SCREEN_INPUTS)
@example(data=[{"role": "user", "content": [{"type": "text", "text": None}]}])
@example(data=[{"role": "user", "content": "x", "tool_calls": "call"}])
@example(data=[{"role": "assistant", "tool_calls": [{"function": {"arguments": 5}}]}])
@example(data={"role": "user", "content": "hi"})
@example(data=b"bytes")
@example(data=[{"role": "user", "content": b"bytes"}])
def test_property_screen_gives_verdict_or_bad_input(fake_firewall: Any, data: Any) -> None:
    try:
        v = fake_firewall.screen(data)
    except BadInputError as exc:
        assert str(exc)
        assert status_for(exc) in (400, 413)
        return
    assert v.action in ("allow", "flag", "block")
    assert v.error is None, v.error  # a healthy model never yields a fail-mode verdict
    json.dumps(v.to_dict())  # a verdict is always serialisable
