"""LiteLLM proxy guardrail: screens requests with alknet-firewall before (or while) they reach
the model.

In the proxy's ``config.yaml``::

    guardrails:
      - guardrail_name: alknet-firewall
        litellm_params:
          guardrail: alknet_firewall.integrations.litellm.AlknetFirewallGuardrail
          mode: pre_call            # or during_call, post_call, logging_only, or a list
          default_on: true
          policy: default           # every other key configures the firewall

The keys are described by :class:`~.settings.AlknetGuardrailParams` (and in
``docs/integrations/litellm.md``). Laid out like LiteLLM's own guardrail folders:

``guardrail.py``
    :class:`AlknetFirewallGuardrail`, its hooks and the verdict → ``HTTPException`` mapping.
``policy.py``
    :func:`select_policy`, a pure function of the key/team info and the tables.
``settings.py``
    The config model and :func:`build_settings` (guardrail parameters → firewall settings).
``records.py``
    Verdict records kept on the request for the response headers.
``subjects.py``
    What each hook screens (request messages, string prompts, a completion's answer).
``_shared.py``
    One :class:`~alknet_firewall.firewall.Firewall` per process and per distinct settings,
    built lazily on first use, in a thread, and shared by every guardrail instance.

``policy``, ``settings``, ``subjects`` and ``_shared`` import no litellm; the guardrail class
(and so litellm) is imported on first access of :class:`AlknetFirewallGuardrail`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._shared import RETRY_BUILD_AFTER_S, close_firewalls, get_firewall
from .policy import select_policy
from .settings import DEFAULT_METADATA_KEY, AlknetGuardrailParams, build_settings

if TYPE_CHECKING:  # pragma: no cover
    from .guardrail import PROVIDER, AlknetFirewallConfigModel, AlknetFirewallGuardrail
    from .records import VERDICTS_KEY

__all__ = [
    "DEFAULT_METADATA_KEY",
    "PROVIDER",
    "RETRY_BUILD_AFTER_S",
    "VERDICTS_KEY",
    "AlknetFirewallConfigModel",
    "AlknetFirewallGuardrail",
    "AlknetGuardrailParams",
    "build_settings",
    "close_firewalls",
    "get_firewall",
    "select_policy",
]

_LAZY = {
    "AlknetFirewallGuardrail": "guardrail",
    "AlknetFirewallConfigModel": "guardrail",
    "PROVIDER": "guardrail",
    "VERDICTS_KEY": "records",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
