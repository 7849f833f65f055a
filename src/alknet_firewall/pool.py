"""Async-friendly worker-thread pool with a bounded queue and micro-batching.

Callers (sync or async) submit items and get a :class:`concurrent.futures.Future` at once. Worker
threads take the oldest item, gather more for at most ``max_wait_ms`` or until the batch is
full, run the batch function once, and fan the results back out. The queue is bounded: when it
is full a submission fails at once with :class:`~alknet_firewall.errors.OverloadError`. Model
calls therefore never run on an event loop, and overload never piles up.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import FirewallClosedError, OverloadError

__all__ = [
    "BatchPool",
    "PoolStats",
    "batch_threads",
]


log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()


@dataclass
class _Job(Generic[T, R]):
    item: T
    cost: int
    future: Future[R]
    enqueued: float = field(default_factory=time.perf_counter)
    #: Called (on the worker thread) when a worker starts running the job.
    on_start: Callable[[], None] | None = None


@dataclass
class PoolStats:
    """Counters since start (read with :meth:`BatchPool.stats`)."""

    batches: int = 0
    items: int = 0
    cost: int = 0
    rejected: int = 0
    failed_batches: int = 0
    replaced_workers: int = 0
    max_batch_items: int = 0
    #: Batches run with ``burst_threads`` (a lone request given every core).
    burst_batches: int = 0

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


def batch_threads(
    *,
    queue_depth: int,
    others_busy: int,
    threads: int,
    burst_threads: int | None,
    idle_cores: float | None = None,
) -> int:
    """Intra-op threads for the batch a worker is about to run.

    A lone request — nothing queued behind it and every other worker idle — may use every core
    (``burst_threads``), or as many as other processes leave idle (``idle_cores``; a core
    counts when three quarters of it are free); as soon as there is other work each worker
    keeps to ``threads`` (one core each by default), which maximises throughput under load.
    """
    if not burst_threads or burst_threads <= threads or queue_depth or others_busy:
        return threads
    if idle_cores is not None:
        burst_threads = min(burst_threads, int(idle_cores + 0.25))
    return max(threads, burst_threads)


def gather_wait(max_wait_s: float, idle_peers: int) -> float:
    """How long a worker that took an item waits for more to batch with it: not at all while
    another worker is idle (that one takes the next arrival at once, so waiting only delays
    this request), else up to ``max_wait_s``. Items already queued are batched either way."""
    return 0.0 if idle_peers > 0 else max_wait_s


class BatchPool(Generic[T, R]):
    """Runs ``fn(list_of_items) -> list_of_results`` on worker threads in micro-batches."""

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        workers: int = 2,
        max_batch_cost: int = 8,
        max_wait_ms: float = 2.0,
        queue_size: int = 256,
        cost: Callable[[T], int] | None = None,
        worker_init: Callable[[], None] | None = None,
        stall_after_s: float | None = None,
        name: str = "alknet-pool",
        on_batch: Callable[[int, int, float], None] | None = None,
        threads: int = 1,
        burst_threads: int | None = None,
        set_threads: Callable[[int], None] | None = None,
        idle_cores: Callable[[], float] | None = None,
    ) -> None:
        self._fn = fn
        #: Per-batch thread count: ``set_threads(n)`` runs on the worker thread before a batch
        #: whenever :func:`batch_threads` asks for another count than the worker has.
        self._threads_each = max(1, threads)
        self._burst = burst_threads
        self._set_threads = set_threads
        self._idle_cores = idle_cores
        self._workers_wanted = workers
        self._max_cost = max(1, max_batch_cost)
        self._max_wait = max_wait_ms / 1000.0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._cost = cost or (lambda _item: 1)
        self._init = worker_init
        self._stall_after = stall_after_s
        self._name = name
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._busy_since: dict[int, float] = {}
        self._abandoned: set[int] = set()
        self._closed = False
        self._started = False
        self._stats = PoolStats()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            if self._closed:
                raise FirewallClosedError("the pool is closed")
            self._started = True
            for _ in range(self._workers_wanted):
                self._spawn()

    def _spawn(self) -> None:
        t = threading.Thread(
            target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True
        )
        self._threads.append(t)
        t.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting work; finish what is queued within ``timeout``, fail the rest."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = [t for t in self._threads if t.ident not in self._abandoned]
        for _ in live:
            self._put_stop()
        deadline = time.monotonic() + timeout
        for t in live:
            t.join(max(0.0, deadline - time.monotonic()))
        # Anything still queued (workers gone or stuck) fails instead of hanging its caller.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            self._fail(job)

    @staticmethod
    def _fail(job: Any) -> None:
        """Fail a queued job (not the stop marker) that no worker will run."""
        if job is not _STOP and not job.future.done():
            job.future.set_exception(FirewallClosedError("the firewall was closed"))

    def _put_stop(self) -> None:
        while True:
            try:
                self._queue.put(_STOP, timeout=0.05)
                return
            except queue.Full:
                # Make room: fail the oldest waiting job rather than block shutdown.
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    continue
                self._fail(job)

    # -- submission ------------------------------------------------------------------------------
    def submit(self, item: T, on_start: Callable[[], None] | None = None) -> Future[R]:
        """Queue ``item``; ``on_start`` is called on the worker thread when a worker takes it
        (callers that time the work, not the wait, start their clock there)."""
        if self._closed:
            raise FirewallClosedError("the firewall is closed; create a new one")
        if not self._started:
            self.start()
        self._check_stalls()
        job: _Job[T, R] = _Job(item, max(1, int(self._cost(item))), Future(), on_start=on_start)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            with self._lock:
                self._stats.rejected += 1
            raise OverloadError(
                f"screening queue is full ({self._queue.maxsize} waiting); retry shortly",
                retry_after=1.0,
            ) from None
        return job.future

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(**vars(self._stats))

    def check_stalls(self) -> None:
        """Replace stuck workers now (also done on every submission)."""
        self._check_stalls()

    def _check_stalls(self) -> None:
        """Replace workers stuck in one batch for longer than ``stall_after_s``."""
        if self._stall_after is None:
            return
        now = time.perf_counter()
        with self._lock:
            stuck = [
                ident
                for ident, since in self._busy_since.items()
                if now - since > self._stall_after and ident not in self._abandoned
            ]
            for ident in stuck:
                self._abandoned.add(ident)
                self._stats.replaced_workers += 1
                log.error(
                    "a screening worker is stuck for over %.0fs; starting a replacement",
                    self._stall_after,
                )
                if not self._closed:
                    self._spawn()

    # -- workers -------------------------------------------------------------------------------
    def _run(self) -> None:
        if self._init is not None:
            try:
                self._init()
            except Exception:  # pragma: no cover - logged, the worker still serves
                log.exception("worker initialisation failed")
        ident = threading.get_ident()
        current_threads = self._threads_each
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            cost = first.cost
            stop_after = False
            deadline = time.perf_counter() + gather_wait(self._max_wait, self._idle_peers())
            while cost < self._max_cost:
                remaining = deadline - time.perf_counter()
                try:
                    nxt = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop_after = True
                    break
                batch.append(nxt)
                cost += nxt.cost
            live = [j for j in batch if j.future.set_running_or_notify_cancel()]
            for j in live:
                if j.on_start is not None:
                    try:
                        j.on_start()
                    except Exception:  # e.g. the caller's event loop is gone
                        log.debug("on_start callback failed", exc_info=True)
            if live:
                with self._lock:
                    self._busy_since[ident] = time.perf_counter()
                    want = batch_threads(
                        queue_depth=self._queue.qsize(),
                        others_busy=len(self._busy_since) - 1,
                        threads=self._threads_each,
                        burst_threads=self._burst,
                        idle_cores=self._idle_now(),
                    )
                    if want != self._threads_each and self._set_threads is not None:
                        self._stats.burst_batches += 1
                if self._set_threads is not None and want != current_threads:
                    try:
                        self._set_threads(want)
                        current_threads = want
                    except Exception:  # pragma: no cover - the batch still runs
                        log.debug("set_threads(%d) failed", want, exc_info=True)
                self._execute(live)
                with self._lock:
                    self._busy_since.pop(ident, None)
                    abandoned = ident in self._abandoned
                if abandoned:
                    return  # a replacement took over while this one was stuck
            if stop_after:
                return

    def _idle_peers(self) -> int:
        """Other workers waiting for work (live workers minus busy ones minus this one)."""
        with self._lock:
            busy = sum(1 for ident in self._busy_since if ident not in self._abandoned)
        return max(0, self._workers_wanted - busy - 1)

    def _idle_now(self) -> float | None:
        """Cores other processes leave idle (only asked when a burst is possible)."""
        if self._idle_cores is None or self._set_threads is None or not self._burst:
            return None
        try:
            return self._idle_cores()
        except Exception:  # pragma: no cover - never let a probe stop a batch
            return None

    def _execute(self, batch: list[_Job[T, R]]) -> None:
        t0 = time.perf_counter()
        try:
            results = self._fn([j.item for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"batch function returned {len(results)} results for {len(batch)}"
                )
        except BaseException as exc:
            log.error("screening batch of %d failed: %s", len(batch), exc.__class__.__name__)
            with self._lock:
                self._stats.failed_batches += 1
            for j in batch:
                if not j.future.done():
                    j.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - t0
        with self._lock:
            self._stats.batches += 1
            self._stats.items += len(batch)
            self._stats.cost += sum(j.cost for j in batch)
            self._stats.max_batch_items = max(self._stats.max_batch_items, len(batch))
        if self._on_batch is not None:
            self._on_batch(len(batch), sum(j.cost for j in batch), elapsed)
        for j, r in zip(batch, results, strict=True):
            if j.future.done():
                continue
            if isinstance(r, BaseException):
                j.future.set_exception(r)
            else:
                j.future.set_result(r)
