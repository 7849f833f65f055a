"""Start-up checks: refuse to start, with the fix, when screening cannot work.

A missing model package, backend (torch / onnxruntime) or codebook is a permanent problem:
reported once when the LiteLLM proxy, the ASGI app or the gateway starts, never as a
per-request "retry later". Cheap: reads the codebook's header, imports the backend's modules,
looks for the model files; loads no weights.
"""

from __future__ import annotations

from ..codebook import Codebook, load_codebook
from ..config import Settings
from ..model import check_available

__all__ = ["check_screening"]


def check_screening(settings: Settings) -> Codebook:
    """Raise the :class:`~alknet_firewall.errors.FirewallError` a first request would meet
    (model package, backend, codebook), with what to do; return the loaded codebook."""
    codebook = load_codebook(settings.detection.codebook)
    check_available(settings.model.merged(reading=codebook.reading()))
    return codebook
