"""Which policy screens a request: a pure function of the key/team info and the tables.

Imports no litellm: ``user_api_key`` is anything with LiteLLM's ``UserAPIKeyAuth`` attributes
(``metadata``, ``team_metadata``, ``key_alias``, ``api_key``, ``token``, ``team_id``,
``team_alias``), or ``None`` when the proxy gives none (``logging_only`` scans, the
apply-guardrail API): then what the proxy stamped on the request's metadata is read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from .settings import DEFAULT_METADATA_KEY

__all__ = ["PolicySource", "select_policy"]

log = logging.getLogger(__name__)

#: Where a request's policy came from (``policy_source`` in LiteLLM's guardrail logging).
PolicySource = Literal[
    "key_metadata", "team_metadata", "key_policies", "team_policies", "request", "default"
]


def select_policy(
    user_api_key: Any,
    data: Mapping[str, Any] | None,
    *,
    default_policy: str,
    metadata_key: str = DEFAULT_METADATA_KEY,
    key_policies: Mapping[str, str] | None = None,
    team_policies: Mapping[str, str] | None = None,
    request_policies: Sequence[str] = (),
) -> tuple[str, PolicySource]:
    """``(policy, source)`` for a request, first match wins:

    key metadata, team metadata (``metadata_key``), ``key_policies`` (key alias, then hashed
    key), ``team_policies`` (team id, then team alias), the request's
    ``metadata.<metadata_key>`` if listed in ``request_policies``, then ``default_policy``.
    """
    data = data or {}

    def attr(name: str, stamped_name: str) -> Any:
        # The key the proxy authenticated, or (no key object) what the proxy stamped on the
        # request's metadata.
        if user_api_key is not None:
            return getattr(user_api_key, name, None)
        for bucket_name in ("metadata", "litellm_metadata"):
            bucket = data.get(bucket_name)
            if isinstance(bucket, Mapping) and bucket.get(stamped_name):
                return bucket[stamped_name]
        return None

    mk = metadata_key
    meta_sources: tuple[tuple[PolicySource, Any], ...] = (
        ("key_metadata", attr("metadata", "user_api_key_metadata")),
        ("team_metadata", attr("team_metadata", "user_api_key_team_metadata")),
    )
    for source, meta in meta_sources:
        if isinstance(meta, Mapping) and isinstance(meta.get(mk), str) and meta[mk]:
            return meta[mk], source
    table_sources: tuple[tuple[PolicySource, Mapping[str, str], tuple[Any, ...]], ...] = (
        (
            "key_policies",
            key_policies or {},
            (
                attr("key_alias", "user_api_key_alias"),
                attr("api_key", "user_api_key_hash"),
                attr("token", "user_api_key_hash"),
            ),
        ),
        (
            "team_policies",
            team_policies or {},
            (
                attr("team_id", "user_api_key_team_id"),
                attr("team_alias", "user_api_key_team_alias"),
            ),
        ),
    )
    for source, table, names in table_sources:
        for name in names:
            if isinstance(name, str) and name in table:
                return table[name], source
    if request_policies:
        body_meta = data.get("metadata")
        wanted = body_meta.get(mk) if isinstance(body_meta, Mapping) else None
        if isinstance(wanted, str) and wanted:
            if wanted in request_policies:
                return wanted, "request"
            log.warning("request asked for policy %r, not in request_policies; ignored", wanted)
    return default_policy, "default"
