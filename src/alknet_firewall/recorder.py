"""What the firewall has been doing: recent verdicts and time-windowed stats, in memory only.

The :class:`~alknet_firewall.firewall.Firewall` feeds every verdict to its :class:`Recorder`
(from ``Firewall._record``, the place that also updates the Prometheus metrics). The operator
console (``integrations/console``) reads it.

* **Recent verdicts**: a bounded ring (``capacity``) of :class:`Record` — time, source, policy,
  action, level, signal, score, length and a salted BLAKE2b digest of the screened text that
  drove the verdict. The text itself is kept only when ``keep_text`` (``log_text``) is on.
  Nothing is ever written to disk.
* **Counts** over the last 5 minutes and hour (verdicts by action, level and signal; errors by
  code; model micro-batches) are *differences of the Prometheus counters* that ``/metrics``
  exports: the recorder keeps a snapshot of them per time bucket (``bucket_s``) and subtracts
  the one at the start of the window. One truth; the counts are process-wide, like ``/metrics``.
* **Latency** percentiles come from a log-spaced histogram per time bucket (about 5 %
  resolution), because the Prometheus histogram's buckets are too coarse for a p50.

Windows are whole buckets, so "the last 5 minutes" means 5 minutes give or take ``bucket_s``.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: The windows the stats report, by name.
WINDOWS: dict[str, float] = {"5m": 300.0, "1h": 3600.0}

# Latency histogram: log-spaced bins from 0.05 ms to ~2 min, ratio 1.1 (about ±5 %).
_LAT_MIN_MS = 0.05
_LAT_RATIO = 1.1
_LAT_BINS = 156
_LAT_EDGES = _LAT_MIN_MS * _LAT_RATIO ** np.arange(_LAT_BINS + 1)


@dataclass(frozen=True)
class Record:
    """One verdict, as the console lists it (no message text unless ``log_text``)."""

    time: float  #: Unix seconds.
    source: str  #: ``traffic`` (integrations, API) or ``console`` (the try-a-message box).
    policy: str
    action: str
    level: str
    signal: str | None
    score: float
    #: Characters of the screened text that drove the verdict (0 when nothing was screened).
    chars: int
    #: Salted BLAKE2b-128 of that text (hex; equal texts have equal digests in one process).
    digest: str | None
    latency_ms: float
    messages: int
    error_code: str | None = None
    #: The driving text, only when ``log_text`` is on.
    text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score"] = round(self.score, 4)
        d["latency_ms"] = round(self.latency_ms, 3)
        if self.text is None:
            del d["text"]
        return d


def prometheus_values(metrics: Any) -> dict[str, float]:
    """Current values of the firewall's Prometheus counters, flattened (``key -> value``).

    Keys: ``verdicts|action|level|signal``, ``errors|code``, ``batches``, ``batch_items``,
    ``screens``, ``screen_seconds``. Read from the same collectors ``/metrics`` exports.
    """
    out: dict[str, float] = {}
    for fam in metrics.verdicts.collect():
        for s in fam.samples:
            if s.name.endswith("_total"):
                key = f"verdicts|{s.labels['action']}|{s.labels['level']}|{s.labels['signal']}"
                out[key] = s.value
    for fam in metrics.errors.collect():
        for s in fam.samples:
            if s.name.endswith("_total"):
                out[f"errors|{s.labels['code']}"] = s.value
    for name, hist in (("batch", metrics.batch_size), ("screen", metrics.latency)):
        for fam in hist.collect():
            for s in fam.samples:
                if s.name.endswith("_count"):
                    out["batches" if name == "batch" else "screens"] = s.value
                elif s.name.endswith("_sum"):
                    out["batch_items" if name == "batch" else "screen_seconds"] = s.value
    return out


def summarise_counts(values: Mapping[str, float]) -> dict[str, Any]:
    """Counter values (or differences) grouped the way the console shows them."""
    by_action: dict[str, int] = {}
    by_level: dict[str, int] = {}
    by_signal: dict[str, int] = {}
    errors: dict[str, int] = {}
    total = 0
    for key, v in values.items():
        n = round(v)
        if n <= 0:
            continue
        parts = key.split("|")
        if parts[0] == "verdicts":
            _, action, level, signal = parts
            total += n
            by_action[action] = by_action.get(action, 0) + n
            by_level[level] = by_level.get(level, 0) + n
            by_signal[signal] = by_signal.get(signal, 0) + n
        elif parts[0] == "errors":
            errors[parts[1]] = errors.get(parts[1], 0) + n
    batches = round(values.get("batches", 0.0))
    items = round(values.get("batch_items", 0.0))
    return {
        "verdicts": total,
        "by_action": dict(sorted(by_action.items())),
        "by_level": dict(sorted(by_level.items())),
        "by_signal": dict(sorted(by_signal.items())),
        "errors": dict(sorted(errors.items())),
        "batches": batches,
        "batch_items": items,
        "mean_batch_size": round(items / batches, 3) if batches else None,
    }


def _percentile(hist: np.ndarray, q: float) -> float | None:
    """The ``q``-quantile (0..1) of a latency histogram, interpolated log-linearly in its bin."""
    total = int(hist.sum())
    if total == 0:
        return None
    rank = q * total
    cum = np.cumsum(hist)
    b = int(np.searchsorted(cum, max(rank, 1e-9)))
    b = min(b, _LAT_BINS - 1)
    before = cum[b - 1] if b else 0
    frac = (rank - before) / hist[b] if hist[b] else 0.5
    frac = min(max(frac, 0.0), 1.0)
    return float(_LAT_EDGES[b] * _LAT_RATIO**frac)


class Recorder:
    """Bounded, in-memory record of verdicts. Thread-safe.

    :param capacity: recent verdicts kept.
    :param keep_text: keep the driving text in each record (the ``log_text`` setting).
    :param metrics: the :mod:`alknet_firewall.metrics` object whose counters the windows use.
    :param bucket_s: time resolution of the windows.
    :param horizon_s: longest window (older buckets are dropped).
    :param clock: wall clock (seconds), replaceable in tests.
    """

    def __init__(
        self,
        *,
        capacity: int = 500,
        keep_text: bool = False,
        metrics: Any | None = None,
        bucket_s: float = 10.0,
        horizon_s: float = max(WINDOWS.values()),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if metrics is None:
            from . import metrics as _metrics

            metrics = _metrics.get()
        self.metrics = metrics
        self.capacity = int(capacity)
        self.keep_text = bool(keep_text)
        self.bucket_s = float(bucket_s)
        self.horizon_s = float(horizon_s)
        self.clock = clock
        self.started = clock()
        self._salt = os.urandom(16)
        self._lock = threading.Lock()
        self._recent: deque[Record] = deque(maxlen=self.capacity)
        #: (bucket key, counter values at the start of that bucket), oldest first.
        self._snapshots: deque[tuple[int, dict[str, float]]] = deque()
        #: bucket key -> latency histogram of the verdicts recorded in it.
        self._latency: dict[int, np.ndarray] = {}
        self._snapshot(self._key(self.started))

    # -- feeding -------------------------------------------------------------------------------
    def _key(self, t: float) -> int:
        return int(t // self.bucket_s)

    def _snapshot(self, key: int) -> None:
        """Counter values at the start of bucket ``key`` (once per bucket). Lock held."""
        if self._snapshots and self._snapshots[-1][0] >= key:
            return
        self._snapshots.append((key, prometheus_values(self.metrics)))
        oldest = key - math.ceil(self.horizon_s / self.bucket_s)
        while self._snapshots[0][0] <= oldest:
            self._snapshots.popleft()
        for k in [k for k in self._latency if k <= oldest]:
            del self._latency[k]

    def digest(self, text: str) -> str:
        """Salted BLAKE2b-128 of ``text`` (hex): repeats are visible, texts are not."""
        data = text.encode("utf-8", "surrogatepass")
        return hashlib.blake2b(data, digest_size=16, key=self._salt).hexdigest()

    def record(self, verdict: Any, text: str | None = None, *, source: str = "traffic") -> Record:
        """Record one verdict; ``text`` is the screened text that drove it (if any),
        ``source`` where it came from (``Record.source``).

        Call it before the Prometheus counters move for this verdict, so that the snapshot
        opening a new time bucket does not contain the verdict that opened it."""
        now = self.clock()
        rec = Record(
            time=now,
            source=source,
            policy=verdict.policy,
            action=verdict.action,
            level=verdict.level,
            signal=verdict.signal,
            score=float(verdict.score),
            chars=len(text) if text is not None else 0,
            digest=self.digest(text) if text is not None else None,
            latency_ms=float(verdict.latency_ms),
            messages=int(verdict.screened_messages),
            error_code=verdict.error_code,
            text=text if self.keep_text else None,
        )
        ms = max(rec.latency_ms, _LAT_MIN_MS)
        b = min(int(math.log(ms / _LAT_MIN_MS) / math.log(_LAT_RATIO)), _LAT_BINS - 1)
        key = self._key(now)
        with self._lock:
            self._snapshot(key)
            self._recent.append(rec)
            hist = self._latency.get(key)
            if hist is None:
                hist = self._latency[key] = np.zeros(_LAT_BINS, dtype=np.int64)
            hist[b] += 1
        return rec

    # -- reading -------------------------------------------------------------------------------
    def recent(self, limit: int | None = None) -> list[Record]:
        """Newest first, at most ``limit`` (default: all kept)."""
        with self._lock:
            items = list(self._recent)
        items.reverse()
        return items if limit is None else items[: max(0, int(limit))]

    def window(self, seconds: float) -> dict[str, Any]:
        """Counts and latency percentiles over the last ``seconds``."""
        now = self.clock()
        key = self._key(now)
        first = key - max(1, math.ceil(seconds / self.bucket_s)) + 1
        with self._lock:
            self._snapshot(key)
            # The baseline: the oldest snapshot inside the window. A snapshot is taken when the
            # first verdict of a bucket arrives, so the counters did not move between the
            # window's start and that snapshot (the window's own call took one at worst).
            base = next(snap for k, snap in self._snapshots if k >= first)
            hists = [h for k, h in self._latency.items() if k >= first]
            hist = np.sum(hists, axis=0) if hists else np.zeros(_LAT_BINS, dtype=np.int64)
        current = prometheus_values(self.metrics)
        delta = {k: v - base.get(k, 0.0) for k, v in current.items()}
        out = summarise_counts(delta)
        p50, p99 = _percentile(hist, 0.5), _percentile(hist, 0.99)
        out["latency_ms"] = {
            "count": int(hist.sum()),
            "p50": None if p50 is None else round(p50, 2),
            "p99": None if p99 is None else round(p99, 2),
        }
        out["seconds"] = seconds
        # How much of the window the recorder has seen (less just after start-up).
        out["covered_s"] = round(min(seconds, now - self.started), 1)
        return out

    def totals(self) -> dict[str, Any]:
        """The counts since the process started (:func:`summarise_counts` of the counters)."""
        return summarise_counts(prometheus_values(self.metrics))

    def stats(self) -> dict[str, Any]:
        """Every window of :data:`WINDOWS`, plus the totals since the process started."""
        out: dict[str, Any] = {name: self.window(s) for name, s in WINDOWS.items()}
        out["total"] = self.totals()
        return out


__all__ = ["WINDOWS", "Record", "Recorder", "prometheus_values", "summarise_counts"]
