"""The guardrail's parameters (``litellm_params``) and the firewall settings they give.

LiteLLM builds the guardrail with every ``litellm_params`` key except its own (``guardrail``,
``mode``, ``default_on``, ``stream_scope``, ...) as a keyword argument.
:class:`AlknetGuardrailParams` describes the keys read here, one ``Field(description=...)``
each, as LiteLLM's own guardrails do (``get_config_model()``); ``docs/integrations/litellm.md``
is checked against it by a test. Imports no litellm.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...config import Settings, load_settings

__all__ = ["DEFAULT_METADATA_KEY", "AlknetGuardrailParams", "build_settings"]

#: Key and team metadata field that names a policy.
DEFAULT_METADATA_KEY = "alknet_policy"


class AlknetGuardrailParams(BaseModel):
    """The guardrail's parameters: the ``litellm_params`` keys of :class:`AlknetFirewallGuardrail`
    (LiteLLM's own keys aside). Plain pydantic: :class:`AlknetFirewallConfigModel` is this on
    LiteLLM's ``GuardrailConfigModel`` base, for the proxy's UI."""

    model_config = ConfigDict(extra="allow")

    config_path: str | None = Field(
        default=None,
        description=(
            "alknet-firewall YAML settings file (default: $ALKNET_FIREWALL_CONFIG, else defaults "
            "and ALKNET_FIREWALL_* environment variables)."
        ),
    )
    codebook: str | None = Field(
        default=None, description="Codebook file (detection.codebook); default: the packaged one."
    )
    policy: str | None = Field(
        default=None,
        description="Policy used when no key/team rule selects one (default_policy).",
    )
    policies: dict[str, dict[str, Any]] | None = Field(
        default=None,
        description=(
            "Policy definitions merged into the settings' policies (name -> PolicySettings fields)."
        ),
    )
    fail_mode: Literal["closed", "open"] | None = Field(
        default=None,
        description=(
            "Set on every policy: what a screening failure does, closed (block) or open "
            "(pass, flagged)."
        ),
    )
    roles: list[str] | None = Field(
        default=None, description="Set on every policy: the chat roles screened."
    )
    monitor: bool | None = Field(
        default=None,
        description=(
            "Set on every policy: never block (a block becomes a flag; bad-input and overload "
            "errors are logged, not returned)."
        ),
    )
    key_policies: dict[str, str] | None = Field(
        default=None, description="Policy by key alias or hashed key."
    )
    team_policies: dict[str, str] | None = Field(
        default=None, description="Policy by team id or team alias."
    )
    metadata_key: str = Field(
        default=DEFAULT_METADATA_KEY,
        description="Key and team metadata field that names a policy.",
    )
    request_policies: list[str] | None = Field(
        default=None,
        description=(
            "Policies a client may pick itself with metadata.<metadata_key> in the request body "
            "(default: none)."
        ),
    )
    firewall_settings: dict[str, Any] | None = Field(
        default=None,
        description="Any other settings, nested as in the YAML file (pool, model, ...).",
    )
    response_headers: bool = Field(
        default=True, description="Add the x-alknet-firewall-* headers to responses."
    )

    @staticmethod
    def ui_friendly_name() -> str:
        return "alknet-firewall"


def build_settings(
    *,
    config_path: str | None = None,
    codebook: str | None = None,
    policy: str | None = None,
    policies: Mapping[str, Any] | None = None,
    fail_mode: str | None = None,
    roles: Sequence[str] | None = None,
    monitor: bool | None = None,
    firewall_settings: Mapping[str, Any] | None = None,
) -> Settings:
    """Firewall settings from guardrail parameters (see :class:`AlknetGuardrailParams`).

    Raises :class:`~alknet_firewall.errors.ConfigurationError` naming the invalid field.
    """
    overrides: dict[str, Any] = copy.deepcopy(dict(firewall_settings or {}))
    if codebook:
        overrides["detection"] = {**overrides.get("detection", {}), "codebook": codebook}
    base = load_settings(config_path, **overrides)
    if not (
        policies or policy or fail_mode is not None or roles is not None or monitor is not None
    ):
        return base
    # Policies: those of the file/defaults plus ``policies``, then the per-guardrail fields on
    # each; loaded again so that everything is validated (and errors name the field).
    specs: dict[str, Any] = {n: p.model_dump(mode="json") for n, p in base.policies.items()}
    specs.update({n: dict(spec or {}) for n, spec in (policies or {}).items()})
    update: dict[str, Any] = {}
    if fail_mode is not None:
        update["fail_mode"] = fail_mode
    if roles is not None:
        update["roles"] = [roles] if isinstance(roles, str) else list(roles)
    if monitor is not None:
        update["monitor"] = bool(monitor)
    final = {**overrides, "policies": {n: {**spec, **update} for n, spec in specs.items()}}
    if policy:
        final["default_policy"] = policy
    return load_settings(config_path, **final)
