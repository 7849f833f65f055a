"""alknet-firewall: screens untrusted LLM input from a small model's activations.

The public API is imported lazily: ``import alknet_firewall`` loads neither torch nor
transformers; they load when a model is first needed.
"""

from __future__ import annotations

import ast
import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The public API, once: type checkers read these imports, and at runtime ``_EXPORTS`` is
# derived from the same lines (the pattern of lazy_loader's ``attach_stub``, SPEC 1). Fit
# *your* normal with calibrate(load_codebook(), extract(model, texts)).
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
    from .model import ActivationModel, load_model
    from .scoring import Scorer, Scores
    from .training.corpus import extract
    from .training.fitting import CodebookBuilder, calibrate
    from .verdict import Verdict


def _exports() -> dict[str, str]:
    """Name → module (relative to the package) of every import under ``TYPE_CHECKING``."""
    with open(__file__, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    block = next(
        n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"
    )
    return {
        alias.asname or alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }


_EXPORTS = _exports()
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
