"""The worker-thread pool: micro-batching, back-pressure, failures, stalls, shutdown."""

from __future__ import annotations

import threading
import time
from concurrent.futures import wait

import pytest

from alknet_firewall.errors import FirewallClosedError, OverloadError
from alknet_firewall.pool import BatchPool


def test_concurrent_submissions_are_batched_and_fanned_out() -> None:
    seen: list[int] = []

    def fn(items: list[int]) -> list[int]:
        seen.append(len(items))
        time.sleep(0.01)
        return [x * 2 for x in items]

    pool = BatchPool(fn, workers=2, max_batch_cost=8, max_wait_ms=5, queue_size=1000)
    futures = [pool.submit(i) for i in range(400)]
    assert [f.result(10) for f in futures] == [i * 2 for i in range(400)]
    stats = pool.stats()
    assert stats.items == 400 and stats.mean_batch_size > 1.5
    assert max(seen) <= 8
    pool.close()


def test_full_queue_refuses_at_once() -> None:
    gate = threading.Event()
    pool = BatchPool(lambda xs: (gate.wait(5), xs)[1], workers=1, max_batch_cost=1, queue_size=3)
    futures = [pool.submit(0)]
    time.sleep(0.05)  # the worker holds the first item
    futures += [pool.submit(i) for i in range(3)]
    t0 = time.perf_counter()
    with pytest.raises(OverloadError) as err:
        pool.submit(99)
    assert time.perf_counter() - t0 < 0.1
    assert err.value.retry_after > 0
    assert pool.stats().rejected == 1
    gate.set()
    wait(futures, timeout=5)
    assert all(f.result() == 0 or f.result() in range(3) for f in futures)
    pool.close()


def test_batch_failure_reaches_every_caller_and_pool_recovers() -> None:
    calls = {"n": 0}

    def fn(items: list[str]) -> list[str]:
        calls["n"] += 1
        if "boom" in items:
            raise RuntimeError("model exploded")
        return items

    pool = BatchPool(fn, workers=1, max_batch_cost=4, max_wait_ms=20)
    bad = [pool.submit("boom"), pool.submit("x")]
    for f in bad:
        with pytest.raises(RuntimeError, match="exploded"):
            f.result(5)
    assert pool.submit("later").result(5) == "later"
    assert pool.stats().failed_batches == 1
    pool.close()


def test_per_item_exceptions_go_to_their_own_caller() -> None:
    pool = BatchPool(lambda xs: [ValueError(x) if x < 0 else x for x in xs], workers=1)
    ok, bad = pool.submit(1), pool.submit(-1)
    assert ok.result(5) == 1
    with pytest.raises(ValueError):
        bad.result(5)
    pool.close()


def test_stuck_worker_is_replaced() -> None:
    release = threading.Event()

    def fn(items: list[str]) -> list[str]:
        if "hang" in items:
            release.wait(10)
        return items

    pool = BatchPool(fn, workers=1, max_batch_cost=1, stall_after_s=0.2)
    stuck = pool.submit("hang")
    time.sleep(0.4)
    later = pool.submit("after")  # notices the stall, spawns a replacement
    assert later.result(5) == "after"
    assert pool.stats().replaced_workers == 1
    release.set()
    assert stuck.result(5) == "hang"
    pool.close()


def test_close_finishes_queued_work_then_refuses() -> None:
    pool = BatchPool(lambda xs: (time.sleep(0.01), xs)[1], workers=2, max_batch_cost=2)
    futures = [pool.submit(i) for i in range(50)]
    pool.close(timeout=10)
    assert [f.result(0) for f in futures] == list(range(50))
    with pytest.raises(FirewallClosedError):
        pool.submit(1)
    pool.close()  # idempotent


def test_close_never_hangs_on_a_stuck_worker() -> None:
    release = threading.Event()
    pool = BatchPool(lambda xs: (release.wait(10), xs)[1], workers=1, max_batch_cost=1)
    first = pool.submit(1)
    time.sleep(0.05)
    queued = [pool.submit(i) for i in range(5)]
    t0 = time.perf_counter()
    pool.close(timeout=0.3)
    assert time.perf_counter() - t0 < 2
    for f in queued:
        with pytest.raises(FirewallClosedError):
            f.result(1)
    release.set()
    assert first.result(5) == 1
