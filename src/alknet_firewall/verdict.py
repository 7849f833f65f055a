"""The alarm protocol: :class:`Verdict`, the firewall's answer for one request.

JSON schema: ``alknet_firewall/data/verdict.schema.json`` in the package (a copy of the
repository's ``docs/verdict.schema.json``); the vocabulary (levels, actions, signals) is defined
once in :mod:`alknet_firewall.constants`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import PolicySettings
from .constants import HEADER_PREFIX, LEVELS, Action, FailMode, Level
from .errors import FirewallError

__all__ = ["LEVELS", "Action", "Level", "Verdict", "error_code"]


def error_code(exc: BaseException) -> str:
    """The machine-readable code of an error (``internal_error`` for unexpected ones)."""
    return exc.code if isinstance(exc, FirewallError) else "internal_error"


@dataclass(frozen=True)
class Verdict:
    """The firewall's answer for one request. JSON schema: ``data/verdict.schema.json``."""

    action: Action
    level: Level
    score: float
    signals: dict[str, float]
    #: Signal that set the level (None when clear or on error).
    signal: str | None = None
    #: Index (in the request's messages) of the message that drove the score.
    message_index: int | None = None
    #: Window of that message that drove it: token span, layer, top basis components.
    window: dict[str, Any] | None = None
    codebook_id: str = ""
    policy: str = "default"
    thresholds: dict[str, float] = field(default_factory=dict)
    screened_messages: int = 0
    cached_messages: int = 0
    #: Content parts not screened (e.g. ``image_url``), by message index.
    ignored: list[str] = field(default_factory=list)
    #: Remarks on how the level was reached, e.g. ``unsupported_language:fr`` (level lowered
    #: one step) or ``annotation:anomaly`` (a signal that may only raise ``notice``).
    notes: list[str] = field(default_factory=list)
    latency_ms: float = 0.0
    #: Set when the verdict comes from ``fail_mode`` after an internal failure.
    error: str | None = None
    error_code: str | None = None

    @classmethod
    def failed(
        cls,
        exc: BaseException,
        policy_name: str,
        policy: PolicySettings | None = None,
        *,
        fail_mode: FailMode | None = None,
        codebook_id: str = "",
        thresholds: Mapping[str, float] | None = None,
        latency_ms: float = 0.0,
    ) -> Verdict:
        """The verdict when screening failed: the fail mode decides, and the error is recorded.

        ``closed`` (the default): ``block`` at ``critical`` with score 1 (``flag`` in monitor
        mode); ``open``: ``flag`` at ``notice`` with score 0. ``fail_mode`` overrides the
        policy's (an integration that must not block passes ``"open"``).
        """
        mode = fail_mode or (policy.fail_mode if policy is not None else "closed")
        monitor = policy.monitor if policy is not None else False
        closed = mode == "closed"
        return cls(
            action="block" if closed and not monitor else "flag",
            level="critical" if closed else "notice",
            score=1.0 if closed else 0.0,
            signals={},
            codebook_id=codebook_id,
            policy=policy_name,
            thresholds=dict(thresholds or {}),
            latency_ms=latency_ms,
            error=f"{exc.__class__.__name__}: {exc}",
            error_code=error_code(exc),
        )

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    @property
    def flagged(self) -> bool:
        return self.action == "flag"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score"] = round(self.score, 6)
        d["signals"] = {k: round(v, 6) for k, v in self.signals.items()}
        d["latency_ms"] = round(self.latency_ms, 3)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def headers(self) -> dict[str, str]:
        """Compact header form (``x-alknet-firewall-*``), ASCII only."""
        h = {
            f"{HEADER_PREFIX}action": self.action,
            f"{HEADER_PREFIX}level": self.level,
            f"{HEADER_PREFIX}score": f"{self.score:.4f}",
            f"{HEADER_PREFIX}signals": ",".join(
                f"{k}={v:.4f}" for k, v in sorted(self.signals.items())
            ),
            f"{HEADER_PREFIX}codebook": self.codebook_id,
            f"{HEADER_PREFIX}policy": self.policy,
        }
        if self.signal:
            h[f"{HEADER_PREFIX}signal"] = self.signal
        if self.message_index is not None:
            h[f"{HEADER_PREFIX}message"] = str(self.message_index)
        if self.error_code:
            h[f"{HEADER_PREFIX}error"] = self.error_code
        return h
