"""Prometheus metrics (registered once per process in the default registry).

Labels never carry message text: only actions, levels, signals and error codes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Metrics",
    "get",
]


_LOCK = threading.Lock()
_METRICS: Metrics | None = None


@dataclass(frozen=True)
class Metrics:
    verdicts: Any
    latency: Any
    queue_depth: Any
    batch_size: Any
    batch_seconds: Any
    errors: Any

    def observe_batch(self, items: int, cost: int, seconds: float) -> None:
        self.batch_size.observe(items)
        self.batch_seconds.observe(seconds)


def get() -> Metrics:
    """The process-wide metrics, created on first use."""
    global _METRICS
    with _LOCK:
        if _METRICS is None:
            from prometheus_client import Counter, Gauge, Histogram

            _METRICS = Metrics(
                verdicts=Counter(
                    "alknet_firewall_verdicts_total",
                    "Verdicts by action, level and driving signal",
                    ["action", "level", "signal"],
                ),
                latency=Histogram(
                    "alknet_firewall_screen_seconds",
                    "Time to screen one request (queueing included)",
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10),
                ),
                queue_depth=Gauge("alknet_firewall_queue_depth", "Texts waiting for a worker"),
                batch_size=Histogram(
                    "alknet_firewall_batch_size",
                    "Texts per model micro-batch",
                    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
                ),
                batch_seconds=Histogram(
                    "alknet_firewall_batch_seconds",
                    "Model time per micro-batch (tokenise, forward, score)",
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                ),
                errors=Counter(
                    "alknet_firewall_errors_total", "Screening failures by error code", ["code"]
                ),
            )
        return _METRICS
