"""Text → activations: the model interface, where model files come from, and the backends.

- :mod:`.base`: the :class:`ActivationModel` protocol every backend implements;
- :mod:`.sources`: embedded / hub / local model files and their digests;
- :mod:`.transformers`: the in-process transformers backend (``model.backend: local``);
- ``.remote`` / ``.onnx``: the model-server and ONNX Runtime backends, loaded only when
  configured.

Nothing here is imported by ``import alknet_firewall``; torch and transformers load on first use.
"""

from __future__ import annotations

import importlib

from ..config import ModelSettings, Settings, load_settings
from ..errors import ConfigurationError, require
from ..features import Window, WindowFeatures, make_windows
from .base import IDENTITY_KEYS, READING_KEYS, ActivationModel
from .sources import (
    EMBEDDED_REQUIREMENT,
    ModelLocation,
    embedded_cache_path,
    embedded_prepared,
    install_embedded,
    locate_embedded_gguf,
    obtain_embedded,
    prepare_embedded,
    resolve,
    resolve_hub,
    resolve_local,
    weights_digest,
    weights_digest_hub,
)
from .transformers import TransformersActivationModel

__all__ = [
    "EMBEDDED_REQUIREMENT",
    "IDENTITY_KEYS",
    "READING_KEYS",
    "ActivationModel",
    "ModelLocation",
    "TransformersActivationModel",
    "Window",
    "WindowFeatures",
    "check_available",
    "embedded_cache_path",
    "embedded_prepared",
    "install_embedded",
    "load_model",
    "locate_embedded_gguf",
    "make_windows",
    "obtain_embedded",
    "prepare_embedded",
    "resolve",
    "resolve_hub",
    "resolve_local",
    "weights_digest",
    "weights_digest_hub",
]

#: ``model.backend`` → (module under this package, its class). A backend module may instead
#: define ``load(model_settings) -> ActivationModel``; that wins when present.
_BACKENDS = {
    "remote": ("remote", "RemoteActivationModel"),
    "onnx": ("onnx", "OnnxActivationModel"),
}


def check_available(settings: ModelSettings) -> None:
    """Raise now, with the fix, when the configured backend cannot run: its modules are not
    installed or its model files are missing. Cheap: imports the backend's modules, loads no
    weights, converts nothing (a ``hub`` model is fetched on first load, not checked here)."""
    backend = settings.backend
    if backend == "local":
        require("torch")
        require("transformers")
        if settings.source == "embedded":
            locate_embedded_gguf()
            if not embedded_prepared(settings):
                require("gguf")
        elif settings.source == "local":
            resolve_local(settings)
    elif backend == "onnx":
        require("onnxruntime", extra="onnx")
        from .onnx import find_onnx_dir

        find_onnx_dir(settings)
    elif backend == "remote":
        require("httpx", "server")


def load_model(settings: Settings | ModelSettings | None = None) -> ActivationModel:
    """Locate, prepare and load the configured activation model (``model.backend`` picks the
    implementation; ``local`` is :class:`TransformersActivationModel`)."""
    if settings is None:
        settings = load_settings()
    ms = settings.model if isinstance(settings, Settings) else settings
    backend = getattr(ms, "backend", "local")
    if backend == "local":
        require("torch")  # before looking for the model: its hint names the torch-free backend
        require("transformers")
        return TransformersActivationModel(resolve(ms), ms)
    module_name, class_name = _BACKENDS.get(backend, (backend, ""))
    try:
        module = importlib.import_module(f".{module_name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{module_name}":
            raise
        raise ConfigurationError(
            f"model.backend {backend!r} is not available in this installation "
            f"(alknet_firewall.model.{module_name} is missing); use model.backend 'local'."
        ) from None
    factory = getattr(module, "load", None) or getattr(module, class_name, None)
    if factory is None:
        raise ConfigurationError(
            f"alknet_firewall.model.{module_name} defines neither load(settings) nor "
            f"{class_name} for model.backend {backend!r}"
        )
    model: ActivationModel = factory(ms)
    return model
