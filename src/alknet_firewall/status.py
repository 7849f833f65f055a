"""What a firewall reports about itself (:meth:`alknet_firewall.Firewall.status`): one
frozen snapshot that ``/healthz``, ``/metrics`` and the operator console read. No message
text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["FirewallStatus", "ModelStatus", "PoolStatus"]


@dataclass(frozen=True)
class ModelStatus:
    """What runs the model (from its ``describe()``; None where the backend does not say)."""

    name: str | None = None
    revision: str | None = None
    backend: str | None = None
    device: str | None = None
    dtype: str | None = None
    #: Why that dtype (``model.dtype: auto`` resolves to one).
    dtype_reason: str | None = None
    layers: list[int] | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class PoolStatus:
    """The worker pool: its settings and its counters since start."""

    workers: int
    max_batch_size: int
    queue_size: int
    queue_depth: int
    batches: int
    items: int
    mean_batch_size: float
    max_batch_items: int
    rejected: int
    failed_batches: int
    replaced_workers: int
    cache_hits: int


@dataclass(frozen=True)
class FirewallStatus:
    """A snapshot of a firewall (:meth:`Firewall.status`): what ``/healthz``, ``/metrics``
    and the console report. No message text."""

    closed: bool
    codebook_id: str
    signals: tuple[str, ...]
    levels: tuple[str, ...]
    default_policy: str
    policies: tuple[str, ...]
    model: ModelStatus
    pool: PoolStatus
    #: Verdicts by action, level and signal, errors by code, batches: the process-wide
    #: Prometheus counters (``recorder.summarise_counts``).
    counts: Mapping[str, Any]
    #: Seconds since the firewall started recording.
    uptime_s: float
    #: Recent verdicts the recorder keeps, and whether it keeps their text (``log_text``).
    recent_capacity: int
    log_text: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)
