"""Load: many concurrent clients against the real gateway (real firewall and model, real uvicorn,
fake upstream on loopback), with a small screening queue so that overload really happens.

Every response must be 200, 400 (a blocked attack) or an overload answer (429/503) carrying
``Retry-After``; memory stays bounded; p50/p99 are printed and written to ``reports/load.json``.

``ALKNET_LOAD_SECONDS`` (default 10) and ``ALKNET_LOAD_CLIENTS`` (default 200) scale it, e.g.
``ALKNET_LOAD_SECONDS=60 pytest tests/test_load.py -m load -s`` for the full minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from alknet_firewall.integrations.gateway import create_app
from tests.integration_helpers import ATTACK, ServerThread, firewall_settings
from tests.reliability_helpers import RawUpstream, ResponseTimer, rss_mb

SECONDS = float(os.environ.get("ALKNET_LOAD_SECONDS", "10"))
CLIENTS = int(os.environ.get("ALKNET_LOAD_CLIENTS", "200"))
#: Safety net: never more requests than this, whatever the clients do.
MAX_REQUESTS = int(max(2_000, CLIENTS * SECONDS * 20))
QUEUE_SIZE = 32
#: Memory the test process may grow by under load (RSS, MB).
RSS_BUDGET_MB = 600
REPORT = Path(__file__).resolve().parents[1] / "reports" / "load.json"

BENIGN = [
    "What is the capital of France?",
    "Summarise this email: the meeting moved to Thursday at 3 pm in room 4.",
    "Translate 'good morning' into Spanish and Italian.",
    "Write a haiku about autumn leaves.",
    "How do I reverse a list in Python?",
    "List three healthy breakfast ideas.",
]


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, Any, ResponseTimer]]:
    from alknet_firewall.firewall import Firewall

    settings = firewall_settings()
    settings = settings.merged(pool={"queue_size": QUEUE_SIZE, "warmup": True, "workers": 1})
    with Firewall(settings) as fw, RawUpstream() as upstream:
        server = firewall_settings(upstream=upstream.url + "/v1", upstream_timeout_s=30.0)
        timer = ResponseTimer(create_app(server, fw))
        with ServerThread(timer) as srv:
            yield srv.url, fw, timer


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _drive(url: str) -> dict[str, Any]:
    #: (status, seconds, Retry-After, error code, was an attack)
    results: list[tuple[int, float, str | None, str | None, bool]] = []
    errors: list[str] = []
    rss: list[float] = []
    sent = 0
    stop = time.monotonic() + SECONDS

    health: list[float] = []

    async def sample() -> None:
        """RSS, and how long the gateway takes to answer /healthz (no model) under load."""
        async with httpx.AsyncClient(base_url=url, timeout=60) as probe:
            while time.monotonic() < stop:
                rss.append(rss_mb())
                t0 = time.perf_counter()
                assert (await probe.get("/healthz")).status_code == 200
                health.append(time.perf_counter() - t0)
                await asyncio.sleep(0.25)

    # Idle connections expire on the client before uvicorn's 5 s keep-alive closes them: with
    # equal timeouts, a request sent on a connection the server is closing gets a reset
    # (ReadError) — the well-known keep-alive race, not a gateway failure.
    limits = httpx.Limits(
        max_connections=CLIENTS, max_keepalive_connections=CLIENTS, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one_client(c: int) -> None:
            nonlocal sent
            rng = random.Random(c)
            while time.monotonic() < stop and sent < MAX_REQUESTS:
                sent += 1
                n = sent
                attack = n % 10 == 0
                text = ATTACK if attack else f"{rng.choice(BENIGN)} (ticket {n})"
                body = json.dumps(
                    {"model": "gpt-test", "messages": [{"role": "user", "content": text}]}
                )
                t0 = time.perf_counter()
                try:
                    r = await client.post(
                        "/v1/chat/completions",
                        content=body,
                        headers={"content-type": "application/json"},
                    )
                except httpx.HTTPError as exc:
                    errors.append(
                        f"{type(exc).__name__}: {exc!r} after {time.perf_counter() - t0:.2f}s"
                    )
                    await asyncio.sleep(0.1)
                    continue
                latency = time.perf_counter() - t0
                code = r.json().get("error", {}).get("code") if r.status_code != 200 else None
                results.append((r.status_code, latency, r.headers.get("retry-after"), code, attack))
                if r.status_code in (429, 503):  # back off as told, with jitter, like clients do
                    await asyncio.sleep(float(r.headers.get("retry-after") or 1) * rng.random())

        t0 = time.monotonic()
        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(one_client(c) for c in range(CLIENTS)))
        await sampler
        wall = time.monotonic() - t0
    return {"results": results, "errors": errors, "rss": rss, "health": health, "wall": wall}


@pytest.mark.load
@pytest.mark.slow
def test_load_concurrent_clients(gateway: tuple[str, Any, ResponseTimer]) -> None:
    url, fw, timer = gateway
    # Warm: the first requests pay for lazy initialisation, not the measurement.
    for text in BENIGN:
        body = {"model": "gpt-test", "messages": [{"role": "user", "content": text}]}
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
    rss0 = rss_mb()
    timer.seconds.clear()
    run = asyncio.run(_drive(url))
    results = run["results"]
    statuses = Counter(r[0] for r in results)
    latencies = [r[1] for r in results]
    served = [r[1] for r in results if r[0] in (200, 400)]
    refused = [r[1] for r in results if r[0] in (429, 503)]
    benign_blocked = sum(1 for r in results if r[0] == 400 and not r[4])
    in_gateway = {
        "served": [x for s in (200, 400) for x in timer.seconds.get(s, [])],
        "refused": [x for s in (429, 503) for x in timer.seconds.get(s, [])],
    }
    rss_peak = max([rss0, *run["rss"]])
    stats = fw.pool.stats()
    report = {
        "clients": CLIENTS,
        "seconds": SECONDS,
        "queue_size": QUEUE_SIZE,
        "workers": fw.settings.pool.workers,
        "wall_s": round(run["wall"], 2),
        "requests": len(results),
        "transport_errors": len(run["errors"]),
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "benign_blocked": benign_blocked,
        "throughput_rps": round(len(results) / run["wall"], 1),
        "screened_rps": round(len(served) / run["wall"], 1),
        # Client-observed: includes the client's own event loop (200 coroutines sharing the
        # test process, hence the GIL, with the server and the model worker).
        "latency_ms": {
            "all": {"p50": _pct(latencies, 0.5) * 1e3, "p99": _pct(latencies, 0.99) * 1e3},
            "served": {"p50": _pct(served, 0.5) * 1e3, "p99": _pct(served, 0.99) * 1e3},
            "refused": {"p50": _pct(refused, 0.5) * 1e3, "p99": _pct(refused, 0.99) * 1e3},
            "served_mean": (statistics.fmean(served) * 1e3) if served else 0.0,
        },
        # In the gateway: from the request reaching the app to the response headers.
        "gateway_latency_ms": {
            k: {"p50": round(_pct(v, 0.5) * 1e3, 1), "p99": round(_pct(v, 0.99) * 1e3, 1)}
            for k, v in in_gateway.items()
        },
        "healthz_ms": {
            "p50": round(_pct(run["health"], 0.5) * 1e3, 1),
            "max": round(max(run["health"], default=0.0) * 1e3, 1),
        },
        "rss_mb": {"start": round(rss0), "peak": round(rss_peak), "growth": round(rss_peak - rss0)},
        "pool": {
            "batches": stats.batches,
            "mean_batch_size": round(stats.mean_batch_size, 2),
            "rejected": stats.rejected,
            "replaced_workers": stats.replaced_workers,
        },
    }
    for key in ("all", "served", "refused"):
        report["latency_ms"][key] = {k: round(v, 1) for k, v in report["latency_ms"][key].items()}
    report["latency_ms"]["served_mean"] = round(report["latency_ms"]["served_mean"], 1)
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print("\nload:", json.dumps(report))

    assert not run["errors"], run["errors"][:5]
    assert set(statuses) <= {200, 400, 429, 503}, statuses
    for status, _, retry_after, code, attack in results:
        if status in (429, 503):
            assert retry_after is not None and int(retry_after) >= 1
        if status == 400:
            assert code == "content_filter"
        if status == 429:
            assert code == "overloaded"
        if attack and status not in (429, 503):
            assert status == 400  # load never lets an attack through
    assert served and any(r[4] and r[0] == 400 for r in results)  # served and blocked, both
    # Overload is answered at once by the gateway, not after queueing.
    assert _pct(in_gateway["refused"], 0.99) < 2.0, report["gateway_latency_ms"]
    assert rss_peak - rss0 < RSS_BUDGET_MB, report["rss_mb"]
    # Afterwards: the queue drains and the next request is served at once.
    t0 = time.monotonic()
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": BENIGN[0]}]}
    assert httpx.post(url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
    assert time.monotonic() - t0 < 5
    assert fw.pool.queue_depth() == 0 and stats.replaced_workers == 0
