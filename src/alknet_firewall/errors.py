"""Exception hierarchy. Every error says what went wrong and what to do next.

Each class mixes in the built-in exception callers already catch, and carries a short
machine-readable ``code``. HTTP statuses are not here: the integrations map errors to
statuses in one place, :func:`alknet_firewall.integrations.openai_errors.status_for`.

::

    FirewallError                        code
    ├── ConfigurationError (ValueError)  configuration_error  invalid or inconsistent settings
    │   └── UnknownPolicyError           configuration_error  a call named an undefined policy
    ├── CorpusError (ValueError)         corpus_error         unusable training/calibration data
    ├── DependencyMissingError (ImportError)  dependency_missing  an optional extra is missing
    ├── ModelError                       model_error          the model cannot load or run
    │   └── ModelNotFoundError (FileNotFoundError)  model_not_found  no usable model files
    ├── CodebookError                    codebook_error       missing, corrupt or foreign file
    │   └── CodebookMismatchError        codebook_mismatch    built for another model
    ├── BadInputError (ValueError)       bad_input            the input cannot be screened
    │   └── InputTooLargeError           input_too_large      above a configured size limit
    ├── OverloadError                    overloaded           queue full (``retry_after``)
    ├── ScreenTimeoutError (TimeoutError)  screen_timeout     screening took too long
    └── FirewallClosedError              firewall_closed      the firewall was closed
"""

from __future__ import annotations

import importlib
import importlib.util


class FirewallError(Exception):
    """Base class of every error raised by alknet-firewall."""

    #: Short machine-readable code, used in OpenAI-style error bodies.
    code: str = "firewall_error"


class ConfigurationError(FirewallError, ValueError):
    """Settings are invalid or inconsistent. The message names the field."""

    code = "configuration_error"


class UnknownPolicyError(ConfigurationError):
    """A call named a policy the settings do not define (``code`` stays
    ``configuration_error``: the HTTP integrations answer it with their own reply)."""


class CorpusError(FirewallError, ValueError):
    """Training or calibration data cannot be used (too few texts, unknown kinds, labels that
    do not match the features)."""

    code = "corpus_error"


class DependencyMissingError(FirewallError, ImportError):
    """An optional dependency (torch, transformers, ...) is not installed."""

    code = "dependency_missing"


class ModelError(FirewallError):
    """The activation model could not be located, loaded or run."""

    code = "model_error"


class ModelNotFoundError(ModelError, FileNotFoundError):
    """The configured model source has no usable files (not cached, not installed)."""

    code = "model_not_found"


class CodebookError(FirewallError):
    """A codebook file is missing, corrupt, or does not match the model."""

    code = "codebook_error"


class CodebookMismatchError(CodebookError):
    """The codebook was built for another model, layer set or pooling."""

    code = "codebook_mismatch"


class BadInputError(FirewallError, ValueError):
    """The input cannot be screened as given (wrong type, too large, malformed messages)."""

    code = "bad_input"


class InputTooLargeError(BadInputError):
    """The input is above a configured size limit."""

    code = "input_too_large"


class OverloadError(FirewallError):
    """The screening queue is full; retry after a short delay."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ScreenTimeoutError(FirewallError, TimeoutError):
    """Screening did not finish within the configured timeout."""

    code = "screen_timeout"


class FirewallClosedError(FirewallError):
    """The firewall was closed; no new work is accepted."""

    code = "firewall_closed"


__all__ = [
    "TORCH_CPU_INDEX",
    "TORCH_PIN",
    "BadInputError",
    "CodebookError",
    "CodebookMismatchError",
    "ConfigurationError",
    "CorpusError",
    "DependencyMissingError",
    "FirewallClosedError",
    "FirewallError",
    "InputTooLargeError",
    "ModelError",
    "ModelNotFoundError",
    "OverloadError",
    "ScreenTimeoutError",
    "UnknownPolicyError",
    "install_hint",
    "onnx_alternative",
    "require",
]


#: The torch build the project is tested with; every install hint recommends this one.
TORCH_PIN = "torch==2.13.0"
#: Where Linux users get the CPU build of that torch (PyPI's Linux torch is the CUDA build).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: The model runtime's modules: without them, the torch-free ONNX backend is the alternative.
_TORCH_MODULES = frozenset({"torch", "transformers", "accelerate", "gguf"})


def install_hint(extra: str) -> str:
    """The pip command that installs ``alknet-firewall[extra]`` (with the pinned torch)."""
    if extra == "torch":
        return (
            f"python -m pip install 'alknet-firewall[torch]' {TORCH_PIN} (Linux without a GPU: "
            f"first python -m pip install {TORCH_PIN} --index-url {TORCH_CPU_INDEX})"
        )
    return f"python -m pip install 'alknet-firewall[{extra}]'"


def onnx_alternative() -> str:
    """How to screen without torch (for messages about a missing torch or model)."""
    return (
        "Without torch, screen with an ONNX export instead: model.backend: onnx and "
        "model.onnx.path (python -m pip install 'alknet-firewall[onnx]'; build the export "
        "once where torch is installed with `alknet-firewall model prepare --format onnx`)"
    )


def require(module: str, extra: str = "torch") -> None:
    """Raise :class:`DependencyMissingError`, telling how to install it, when ``module`` is not
    installed. Looks the module up without importing it (torch alone takes seconds)."""
    try:
        if importlib.util.find_spec(module) is None:
            raise ImportError(module)
    except (ImportError, ValueError) as exc:  # pragma: no cover - exercised when it is missing
        alternative = f". {onnx_alternative()}" if module in _TORCH_MODULES else ""
        raise DependencyMissingError(
            f"{module} is required for this feature but is not installed. "
            f"Install it with: {install_hint(extra)}{alternative}."
        ) from exc
