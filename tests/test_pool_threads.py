"""Per-batch thread counts: a lone request gets every core, concurrent ones one core each.

Decision logic only (no timing): which thread count a worker asks for, and that the pool
applies it on the worker thread before the batch runs.
"""

from __future__ import annotations

import threading

import pytest

from alknet_firewall.pool import BatchPool, batch_threads


@pytest.mark.parametrize(
    ("queue_depth", "others_busy", "threads", "burst", "want"),
    [
        (0, 0, 1, 2, 2),  # alone: every core
        (1, 0, 1, 2, 1),  # something queued behind it: stay on one core
        (0, 1, 1, 2, 1),  # another worker is busy: stay on one core
        (3, 1, 1, 2, 1),
        (0, 0, 1, None, 1),  # bursting off
        (0, 0, 2, 2, 2),  # burst not above the per-worker count: nothing changes
        (0, 0, 4, 2, 4),
        (0, 0, 1, 16, 16),
    ],
)
def test_batch_threads_decision(
    queue_depth: int, others_busy: int, threads: int, burst: int | None, want: int
) -> None:
    got = batch_threads(
        queue_depth=queue_depth, others_busy=others_busy, threads=threads, burst_threads=burst
    )
    assert got == want


@pytest.mark.parametrize(
    ("idle", "want"),
    [(2.0, 2), (1.8, 2), (1.6, 1), (1.4, 1), (0.0, 1), (7.6, 4), (3.2, 3)],
)
def test_a_burst_takes_only_the_cores_other_processes_leave_idle(idle: float, want: int) -> None:
    got = batch_threads(
        queue_depth=0, others_busy=0, threads=1, burst_threads=4 if idle > 2 else 2, idle_cores=idle
    )
    assert got == want


def _recording_pool(
    gate: threading.Event | None = None, workers: int = 2
) -> tuple[BatchPool[int, int], list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []  # (item, threads the worker had when it ran the item)
    current = threading.local()
    lock = threading.Lock()

    def set_threads(n: int) -> None:
        current.n = n

    def fn(items: list[int]) -> list[int]:
        if gate is not None:
            gate.wait(10)
        with lock:
            seen.extend((i, getattr(current, "n", 1)) for i in items)
        return items

    pool: BatchPool[int, int] = BatchPool(
        fn,
        workers=workers,
        max_batch_cost=1,
        max_wait_ms=0.0,
        threads=1,
        burst_threads=4,
        set_threads=set_threads,
    )
    return pool, seen


def test_a_lone_request_runs_with_burst_threads() -> None:
    pool, seen = _recording_pool()
    try:
        for i in range(3):  # one after the other: each is alone in the pool
            assert pool.submit(i).result(5) == i
    finally:
        pool.close()
    assert [n for _, n in seen] == [4, 4, 4]
    assert pool.stats().burst_batches == 3


def test_concurrent_requests_keep_one_thread_each() -> None:
    gate = threading.Event()
    pool, seen = _recording_pool(gate)
    try:
        futures = [pool.submit(i) for i in range(8)]  # queued while the first batch waits
        gate.set()
        assert sorted(f.result(5) for f in futures) == list(range(8))
    finally:
        pool.close()
    threads = dict(seen)
    # The first batch may have started alone; every batch after it saw a queue or a busy peer.
    assert sum(1 for n in threads.values() if n == 4) <= 1
    assert sum(1 for n in threads.values() if n == 1) >= 7
    # A worker that bursts goes back to one thread for its next batch under load.
    assert pool.stats().burst_batches <= 1


def test_without_set_threads_nothing_is_counted() -> None:
    pool: BatchPool[int, int] = BatchPool(lambda xs: xs, workers=1, burst_threads=4)
    try:
        assert pool.submit(1).result(5) == 1
    finally:
        pool.close()
    assert pool.stats().burst_batches == 0


def test_no_burst_while_other_processes_hold_the_cores() -> None:
    seen: list[int] = []
    pool: BatchPool[int, int] = BatchPool(
        lambda xs: xs,
        workers=1,
        threads=1,
        burst_threads=4,
        set_threads=seen.append,
        idle_cores=lambda: 0.4,  # another process keeps the machine busy
    )
    try:
        assert pool.submit(1).result(5) == 1
    finally:
        pool.close()
    assert seen == [] and pool.stats().burst_batches == 0


def test_a_worker_waits_for_company_only_when_no_peer_is_idle() -> None:
    from alknet_firewall.pool import gather_wait

    assert gather_wait(0.002, idle_peers=1) == 0.0  # the idle peer takes the next arrival
    assert gather_wait(0.002, idle_peers=0) == 0.002  # everyone busy: batch what arrives
