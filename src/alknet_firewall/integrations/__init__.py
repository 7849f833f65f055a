"""Integrations with LLM gateways and frameworks.

Each submodule imports its framework when it is imported itself, never from here:
``alknet_firewall.integrations.litellm`` needs ``pip install 'alknet-firewall[litellm]'``.
"""

__all__: list[str] = []
