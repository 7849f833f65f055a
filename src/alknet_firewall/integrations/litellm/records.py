"""Verdict records kept on the request (for the response headers) and their logging status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from litellm.litellm_core_utils.core_helpers import get_or_create_metadata_bucket

from ...verdict import Verdict

__all__ = ["VERDICTS_KEY", "records", "remember", "status_for", "worst"]

#: Request metadata key under which this request's verdicts are kept for the response headers.
VERDICTS_KEY = "alknet_firewall_verdicts"

_ACTION_RANK = {"allow": 0, "flag": 1, "block": 2}


class _VerdictRecords(list):  # type: ignore[type-arg]
    """A list only this module creates: a client cannot forge it through request JSON."""


def records(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The verdicts recorded on this request (never what the client sent under the same key)."""
    for key in ("metadata", "litellm_metadata"):
        bucket = data.get(key)
        if isinstance(bucket, Mapping):
            recs = bucket.get(VERDICTS_KEY)
            if isinstance(recs, _VerdictRecords):
                return list(recs)
    return []


def remember(data: dict[str, Any], record: dict[str, Any]) -> None:
    _, bucket = get_or_create_metadata_bucket(data)
    recs = bucket.get(VERDICTS_KEY)
    if not isinstance(recs, _VerdictRecords):
        recs = _VerdictRecords()
        bucket[VERDICTS_KEY] = recs
    recs.append(record)


def worst(recs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The most severe record: highest action, then highest score."""
    best = None
    for rec in recs:
        rank = (_ACTION_RANK.get(rec.get("action", "allow"), 0), rec.get("score", 0.0))
        if best is None or rank > best[0]:
            best = (rank, rec)
    return best[1] if best else None


def status_for(verdict: Verdict) -> str:
    """LiteLLM's ``guardrail_status`` for a verdict."""
    if verdict.error_code:
        return "guardrail_failed_to_respond"
    return {"block": "guardrail_intervened", "flag": "guardrail_flagged"}.get(
        verdict.action, "success"
    )
