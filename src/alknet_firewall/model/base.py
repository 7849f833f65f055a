"""What the firewall, the corpus tools and the codebook need from a model: the
:class:`ActivationModel` protocol, and the settings that decide how a model reads a text.

A backend (the in-process transformers model, a remote model server, ONNX Runtime) is a class
with these members; nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..features import Window, WindowFeatures, make_windows, window_spans

__all__ = ["IDENTITY_KEYS", "READING_KEYS", "ActivationModel", "WindowedModel"]

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


@runtime_checkable
class ActivationModel(Protocol):
    """Text → pooled activations per window. Thread-safe: pool workers share one instance."""

    name: str
    revision: str
    weights_digest: str
    #: Hidden-state layers returned (1-based).
    layers: tuple[int, ...]
    hidden_size: int
    #: Width of one pooled row (``2 * hidden_size`` for pooling ``both``).
    feature_size: int
    pooling: str
    #: Content tokens per window, and tokens shared by consecutive windows.
    max_tokens: int
    window_overlap: int
    dtype: str

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Content token ids of each text (no template, no special tokens)."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Content tokens of each text (what windowing splits)."""
        ...

    def windows(self, token_ids: Sequence[Sequence[int]]) -> list[Window]:
        """The windows of each text's token ids (``features.make_windows`` with this model's
        ``max_tokens`` and ``window_overlap``)."""
        ...

    def encode_token_windows(self, windows: list[Window], n_texts: int) -> WindowFeatures:
        """Pooled float32 features of ``windows`` (from :meth:`windows`) of ``n_texts`` texts."""
        ...

    def encode_windows(self, texts: list[str]) -> WindowFeatures:
        """Pooled float32 features of every window of ``texts``."""
        ...

    def encode(self, texts: list[str]) -> dict[int, np.ndarray]:
        """Pooled float32 features ``[len(texts), feature_size]`` per requested layer."""
        ...

    def init_worker(self, threads: int | None) -> None:
        """Called once in each pool worker thread before its first batch (torch sets its
        intra-op thread count there; other backends may do nothing)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable identity: name, revision, weights_digest, layers, the
        :data:`READING_KEYS`, dtype (and backend details)."""
        ...

    def close(self) -> None:
        """Release what the model holds (connections, sessions). Idempotent."""
        ...


class WindowedModel:
    """What every backend shares above its forward pass: windows, span rows and the encode
    wrappers. A backend sets ``settings``, ``pooling``, ``max_tokens``, ``window_overlap`` and
    implements ``tokenize`` and ``encode_token_windows``."""

    settings: Any
    pooling: str
    max_tokens: int
    window_overlap: int

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_token_windows(self, wins: list[Window], n_texts: int) -> WindowFeatures:
        raise NotImplementedError  # pragma: no cover - abstract

    def windows(self, token_ids: Sequence[Sequence[int]]) -> list[Window]:
        return make_windows(token_ids, self.max_tokens, self.window_overlap)

    def encode(self, texts: list[str]) -> dict[int, np.ndarray]:
        return self.encode_windows(texts).per_text(self.pooling)

    def encode_windows(self, texts: list[str]) -> WindowFeatures:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode expects a list of str")
        return self.encode_token_windows(self.windows(self.tokenize(texts)), len(texts))

    def spans(self, n: int) -> list[tuple[int, int]]:
        """Span rows inside a window of ``n`` content tokens (mean pooling only)."""
        if self.pooling != "mean":
            return []
        return window_spans(
            n, self.settings.reading.sub_window, self.settings.reading.sub_window_stride
        )
