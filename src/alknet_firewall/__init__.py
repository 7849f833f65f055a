"""alknet-firewall: screens untrusted LLM input from a small model's activations.

The public API is imported lazily: ``import alknet_firewall`` loads neither torch nor
transformers; they load when a model is first needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # config
    "Settings": "config",
    "ModelSettings": "config",
    "DetectionSettings": "config",
    "PolicySettings": "config",
    "PoolSettings": "config",
    "ServerSettings": "config",
    "load_settings": "config",
    # errors
    "FirewallError": "errors",
    "ConfigurationError": "errors",
    "DependencyMissingError": "errors",
    "ModelError": "errors",
    "ModelNotFoundError": "errors",
    "CodebookError": "errors",
    "CodebookMismatchError": "errors",
    "BadInputError": "errors",
    "InputTooLargeError": "errors",
    "OverloadError": "errors",
    "ScreenTimeoutError": "errors",
    "FirewallClosedError": "errors",
    "UnknownPolicyError": "errors",
    "CorpusError": "errors",
    # model
    "ActivationModel": "model",
    "WindowFeatures": "features",
    "load_model": "model",
    # codebook / scoring; fit *your* normal: calibrate(load_codebook(), extract(model, texts))
    "Codebook": "codebook",
    "CodebookBuilder": "fitting",
    "calibrate": "fitting",
    "extract": "corpus",
    "load_codebook": "codebook",
    "Scorer": "scoring",
    "Scores": "scoring",
    # firewall
    "Firewall": "firewall",
    "Verdict": "verdict",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alknet_firewall' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from .codebook import Codebook, load_codebook
    from .config import (
        DetectionSettings,
        ModelSettings,
        PolicySettings,
        PoolSettings,
        ServerSettings,
        Settings,
        load_settings,
    )
    from .corpus import extract
    from .errors import (
        BadInputError,
        CodebookError,
        CodebookMismatchError,
        ConfigurationError,
        CorpusError,
        DependencyMissingError,
        FirewallClosedError,
        FirewallError,
        InputTooLargeError,
        ModelError,
        ModelNotFoundError,
        OverloadError,
        ScreenTimeoutError,
        UnknownPolicyError,
    )
    from .features import WindowFeatures
    from .firewall import Firewall
    from .fitting import CodebookBuilder, calibrate
    from .model import ActivationModel, load_model
    from .scoring import Scorer, Scores
    from .verdict import Verdict
