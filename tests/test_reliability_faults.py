"""Faults through the real gateway (real uvicorn, real Firewall and pool on the model double,
misbehaving upstream on loopback): the model raising, hanging or slow mid-batch; the upstream
refusing, stalling or dropping a stream; the client going away. Every affected request gets its
fail-mode answer or a clean error, nothing leaks, and the next request is served.

(Covered elsewhere: upstream down -> 502, upstream slow before headers -> 504, client
disconnect closes the upstream stream — tests/integrations/test_gateway.py; pool-level faults —
tests/test_pool.py and tests/test_firewall.py.)
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from alknet_firewall.config import load_settings
from alknet_firewall.integrations.gateway import create_app
from tests.fakes import FakeModel, attack_text, benign_text, fit_fake_codebook
from tests.integration_helpers import ServerThread, free_port
from tests.reliability_helpers import (
    COMPLETION,
    LoopProbe,
    RawUpstream,
    fake_model_firewall,
    sse,
    wait_for,
)

H = "x-alknet-firewall-"
POLICY = "x-alknet-firewall-policy"
TIMEOUT_S = 1.5  # the firewall's screening timeout (pool.timeout_s); stalls detected after 5 s
_ids = itertools.count(500_000)


def text() -> str:
    """A benign text never screened before (the verdict cache must not answer for the model)."""
    return benign_text(next(_ids))


def chat(content: str, **extra: Any) -> bytes:
    return json.dumps(
        {"model": "gpt-test", "messages": [{"role": "user", "content": content}], **extra}
    ).encode()


class Gateway:
    def __init__(self, url: str, probe: LoopProbe, fw: Any, model: FakeModel, up: Any) -> None:
        self.url, self.probe, self.fw, self.model, self.upstream = url, probe, fw, model, up
        self.client = httpx.Client(base_url=url, timeout=20)

    def post(self, body: bytes, policy: str | None = None) -> httpx.Response:
        headers = {"content-type": "application/json", "authorization": "Bearer sk-test"}
        if policy:
            headers[POLICY] = policy
        return self.client.post("/v1/chat/completions", content=body, headers=headers)

    def healthy(self) -> float:
        """One ordinary request succeeds; its duration."""
        t0 = time.monotonic()
        r = self.post(chat(text()))
        assert r.status_code == 200, r.text
        assert r.headers[H + "action"] == "allow" and r.json() == COMPLETION
        assert self.client.get("/healthz").json()["status"] == "ok"
        return time.monotonic() - t0


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    model = FakeModel()
    codebook = fit_fake_codebook(model)
    fw = fake_model_firewall(codebook, model, pool={"timeout_s": TIMEOUT_S, "max_wait_ms": 30})
    try:
        with RawUpstream() as upstream:
            settings = load_settings(
                None, server={"upstream": upstream.url + "/v1", "upstream_timeout_s": 1.0}
            )
            probe = LoopProbe(create_app(settings, fw, policy_header=POLICY))
            with ServerThread(probe) as srv:
                g = Gateway(srv.url, probe, fw, model, upstream)
                try:
                    yield g
                finally:
                    g.client.close()
    finally:
        model.release.set()
        fw.close(timeout=5)


@pytest.fixture(autouse=True)
def _reset(gw: Gateway) -> Iterator[None]:
    m = gw.model
    m.fail, m.sleep_s = None, 0.0
    m.hang.clear()
    m.release.clear()
    yield
    m.fail, m.sleep_s = None, 0.0
    m.hang.clear()
    m.release.set()  # frees a worker still waiting in a hang


def _baseline(gw: Gateway) -> tuple[int, int]:
    gw.healthy()
    return gw.probe.settle(0, timeout=0.2), threading.active_count()


def _no_leaks(gw: Gateway, tasks: int, threads: int) -> None:
    assert gw.probe.settle(tasks) <= tasks, "tasks leaked in the server loop"
    assert wait_for(lambda: threading.active_count() <= threads, 5), "threads leaked"
    assert gw.fw.pool.queue_depth() == 0


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_model_raising_mid_batch_gets_fail_mode_then_recovers(gw: Gateway) -> None:
    tasks, threads = _baseline(gw)
    failed0 = gw.fw.pool.stats().failed_batches
    forwarded0 = len(gw.upstream.recorded)
    gw.model.fail = RuntimeError("CUDA error: device-side assert at /srv/models/secret.bin")
    jobs = [("open" if i % 2 else None, chat(text())) for i in range(6)]
    with ThreadPoolExecutor(6) as ex:  # sent together: they share micro-batches
        replies = list(ex.map(lambda j: gw.post(j[1], j[0]), jobs))
    for (policy, _), r in zip(jobs, replies, strict=True):
        if policy is None:  # fail closed: 503 with the verdict, retry later
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert r.headers[H + "action"] == "block"
            assert r.headers[H + "error"] == "internal_error"
            err = r.json()["error"]
            assert err["code"] == "internal_error" and err["type"] == "server_error"
            assert err["verdict"]["action"] == "block"
            assert "CUDA" not in r.text and "/srv/models" not in r.text  # internals not echoed
        else:  # fail open: forwarded, flagged
            assert r.status_code == 200 and r.json() == COMPLETION
            assert r.headers[H + "action"] == "flag"
            assert r.headers[H + "error"] == "internal_error"
    assert len(gw.upstream.recorded) == forwarded0 + 3  # only the fail-open ones
    assert gw.fw.pool.stats().failed_batches > failed0
    gw.model.fail = None
    assert gw.healthy() < 1.0
    r = gw.post(chat(attack_text(next(_ids))))  # detection works again, too
    assert r.status_code == 400 and r.json()["error"]["code"] == "content_filter"
    _no_leaks(gw, tasks, threads)


@pytest.mark.slow
def test_slow_model_within_and_beyond_the_timeout(gw: Gateway) -> None:
    tasks, threads = _baseline(gw)
    gw.model.sleep_s = 0.2  # slow but within the timeout: everyone served
    with ThreadPoolExecutor(4) as ex:
        replies = list(ex.map(lambda _: gw.post(chat(text())), range(4)))
    assert [r.status_code for r in replies] == [200] * 4
    gw.model.sleep_s = 3.0  # beyond it: the fail-mode verdict at the timeout, not after 3 s
    calls = len(gw.model.calls)
    t0 = time.monotonic()
    closed = gw.post(chat(text()))
    opened = gw.post(chat(text()), policy="open")
    elapsed = time.monotonic() - t0
    assert closed.status_code == 503 and closed.json()["error"]["code"] == "screen_timeout"
    assert closed.headers["retry-after"] == "1"
    assert opened.status_code == 200 and opened.headers[H + "action"] == "flag"
    assert opened.headers[H + "error"] == "screen_timeout"
    assert elapsed < 2 * TIMEOUT_S + 1.0
    gw.model.sleep_s = 0.0
    assert wait_for(lambda: len(gw.model.calls) > calls, 5)  # the slow batch finished
    assert wait_for(lambda: gw.fw.pool.queue_depth() == 0, 5)
    assert gw.healthy() < 1.0
    _no_leaks(gw, tasks, threads)


@pytest.mark.slow
def test_hung_model_fails_fast_and_stuck_worker_is_replaced(gw: Gateway) -> None:
    tasks, _ = _baseline(gw)
    replaced = gw.fw.pool.stats().replaced_workers
    gw.model.hang.set()
    t0 = time.monotonic()
    r = gw.post(chat(text()))  # the only worker hangs inside the model
    assert r.status_code == 503 and r.json()["error"]["code"] == "screen_timeout"
    assert time.monotonic() - t0 < TIMEOUT_S + 1.0
    r = gw.post(chat(text()), policy="open")  # queued behind it: fail open at the timeout
    assert r.status_code == 200 and r.headers[H + "action"] == "flag"
    gw.model.hang.clear()  # the stuck worker stays stuck (until release)
    # Past pool stall_after_s (max(2 * timeout, 5 s)), the next submission replaces the worker.
    time.sleep(max(0.0, t0 + 6.0 - time.monotonic()))
    assert gw.healthy() < TIMEOUT_S
    assert gw.fw.pool.stats().replaced_workers == replaced + 1
    gw.model.release.set()  # the stuck one finishes its batch and retires
    assert gw.healthy() < 1.0
    assert gw.probe.settle(tasks) <= tasks


# --------------------------------------------------------------------------------------------
# The upstream
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_upstream_refusing_connections_then_back(gw: Gateway) -> None:
    port = free_port()  # nothing listens there yet: connection refused
    settings = load_settings(
        None, server={"upstream": f"http://127.0.0.1:{port}/v1", "upstream_timeout_s": 1.0}
    )
    with ServerThread(create_app(settings, gw.fw)) as srv, httpx.Client(base_url=srv.url) as c:
        headers = {"content-type": "application/json"}
        for _ in range(3):
            r = c.post("/v1/chat/completions", content=chat(text()), headers=headers)
            assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
            assert r.headers[H + "action"] == "allow"  # screened, then the upstream failed
        with RawUpstream(port=port):  # the upstream comes back on the same address
            r = c.post("/v1/chat/completions", content=chat(text()), headers=headers)
            assert r.status_code == 200 and r.json() == COMPLETION


def _stream(gw: Gateway, model: str) -> tuple[list[bytes], BaseException | None, float]:
    """Stream a chat completion with raw httpx: (chunks received, error, seconds)."""
    body = chat(text(), stream=True)
    body = body.replace(b'"gpt-test"', json.dumps(model).encode())
    got: list[bytes] = []
    error: BaseException | None = None
    t0 = time.monotonic()
    headers = {"content-type": "application/json"}
    try:
        with gw.client.stream("POST", "/v1/chat/completions", content=body, headers=headers) as r:
            assert r.status_code == 200 and r.headers[H + "action"] == "allow"
            for chunk in r.iter_raw():
                got.append(chunk)
    except httpx.TransportError as exc:
        error = exc
    return got, error, time.monotonic() - t0


@pytest.mark.slow
def test_upstream_dropping_a_stream_halfway(gw: Gateway) -> None:
    tasks, threads = _baseline(gw)
    got, error, _ = _stream(gw, "drop")
    # The client gets the two events, then an aborted response — never a clean end that would
    # pass a truncated answer off as complete.
    assert b"".join(got) == sse(0) + sse(1)
    assert isinstance(error, httpx.RemoteProtocolError), error
    # The same through the official client: two chunks, then an exception.
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-test", max_retries=0, timeout=10)
    chunks = []
    with pytest.raises((httpx.TransportError, openai.APIError)):
        for c in client.chat.completions.create(
            model="drop", messages=[{"role": "user", "content": text()}], stream=True
        ):
            chunks.append(c.choices[0].delta.content)
    assert chunks == ["c0", "c1"]
    gw.healthy()
    _no_leaks(gw, tasks, threads)


@pytest.mark.slow
def test_upstream_stalling_mid_stream_is_cut_at_the_timeout(gw: Gateway) -> None:
    tasks, threads = _baseline(gw)
    got, error, elapsed = _stream(gw, "stall")  # one event, then silence for 5 s
    assert b"".join(got) == sse(0)
    assert isinstance(error, httpx.RemoteProtocolError), error
    assert elapsed < 4.0  # upstream_timeout_s (1 s) between chunks, not the 5 s stall
    gw.healthy()
    _no_leaks(gw, tasks, threads)


# --------------------------------------------------------------------------------------------
# The client going away
# --------------------------------------------------------------------------------------------
def _raw_request(port: int, body: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return s


@pytest.mark.slow
def test_client_disconnect_during_screening(gw: Gateway) -> None:
    tasks, threads = _baseline(gw)
    pool, model = gw.fw.pool, gw.model
    items, forwarded = pool.stats().items, len(gw.upstream.recorded)
    port = int(gw.url.rsplit(":", 1)[1])
    model.hang.set()  # screening holds until released
    first = _raw_request(port, chat(text()))  # taken by the worker...
    assert wait_for(lambda: pool.queue_depth() == 0, 5)
    time.sleep(0.1)
    queued = [_raw_request(port, chat(text())) for _ in range(2)]  # ...these two wait
    assert wait_for(lambda: pool.queue_depth() == 2, 5)
    for s in (first, *queued):
        s.close()  # every client gives up mid-screening
    # Their requests end at once: no task waits for the model, nothing is forwarded.
    assert gw.probe.settle(tasks, timeout=1.0) <= tasks
    model.hang.clear()
    model.release.set()
    # The worker finishes the batch it holds and skips the two abandoned texts.
    assert wait_for(lambda: pool.queue_depth() == 0 and pool.stats().items >= items + 1, 5)
    time.sleep(0.2)
    assert pool.stats().items == items + 1
    assert len(gw.upstream.recorded) == forwarded
    assert gw.healthy() < 1.0
    assert len(gw.upstream.recorded) == forwarded + 1
    _no_leaks(gw, tasks, threads)


@pytest.mark.slow
def test_client_disconnect_mid_stream(gw: Gateway) -> None:
    tasks, threads = _baseline(gw)
    body = chat(text(), stream=True).replace(b'"gpt-test"', b'"slowstream"')
    headers = {"content-type": "application/json"}
    with gw.client.stream("POST", "/v1/chat/completions", content=body, headers=headers) as r:
        assert r.status_code == 200
        next(r.iter_raw())
    # Leaving the block closed the connection: the gateway closes the upstream stream too.
    assert gw.upstream.stream_closed.wait(5)
    assert gw.upstream.slow_sent < 50
    gw.healthy()
    _no_leaks(gw, tasks, threads)
