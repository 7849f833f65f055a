"""What the firewall, the corpus tools and the codebook need from a model: the
:class:`ActivationModel` protocol, and the settings that decide how a model reads a text.

A backend (the in-process transformers model, a remote model server, ONNX Runtime) is a class
with these members; nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ModelError
from ..features import (
    PoolPlan,
    Window,
    WindowFeatures,
    make_windows,
    plan_pooling,
    plan_rows,
    window_spans,
)

__all__ = ["IDENTITY_KEYS", "READING_KEYS", "ActivationModel", "PoolingModel", "WindowedModel"]

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

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character offsets ``(start, end)`` in ``text`` of each token ``tokenize([text])[0]``
        gives (byte-level tokens that split one character share its offsets). Raises
        :class:`~alknet_firewall.errors.ModelError` when the model cannot tell."""
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
    """What every backend shares above its forward pass: windows, span rows, token offsets and
    the encode wrappers. A backend sets ``name``, ``settings``, ``pooling``, ``max_tokens``,
    ``window_overlap`` and implements ``tokenize``, ``_ids_and_offsets`` and
    ``encode_token_windows``."""

    name: str
    settings: Any
    pooling: str
    max_tokens: int
    window_overlap: int

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _ids_and_offsets(self, text: str) -> tuple[Sequence[int], Sequence[tuple[int, int]]]:
        """Token ids of ``text`` and their character offsets, from the tokenizer's own offsets
        (raises :class:`ModelError` when the tokenizer has none)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def encode_token_windows(self, wins: list[Window], n_texts: int) -> WindowFeatures:
        raise NotImplementedError  # pragma: no cover - abstract

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        ids, offsets = self._ids_and_offsets(text)
        if list(ids) != self.tokenize([text])[0] or len(offsets) != len(ids):
            raise ModelError(
                f"the character offsets of {self.name}'s tokenizer belong to another "
                "tokenisation of this text than the one the model screens, so its tokens cannot "
                "be mapped to characters; use a model whose tokenizer.json tokenises as it does "
                "(report this if it is the embedded model)"
            )
        return [(int(a), int(b)) for a, b in offsets]

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


class PoolingModel(WindowedModel):
    """A backend that pools in-process: windows in batches of similar length, each batch a
    :class:`~alknet_firewall.features.PoolPlan` that :meth:`_pool` runs and reduces. Sets also
    ``layers``, ``feature_size`` and the chat template's ``_prefix``, ``_suffix``, ``_pad_id``."""

    name: str
    revision: str
    weights_digest: str
    layers: tuple[int, ...]
    total_layers: int
    hidden_size: int
    feature_size: int
    dtype: str
    _prefix: list[int]
    _suffix: list[int]
    _pad_id: int
    #: Most windows in one forward pass, below ``batch_size`` (None: ``batch_size``).
    _max_batch: int | None = None

    def _identity(self) -> dict[str, Any]:
        """What :meth:`describe` says of every in-process backend: the identity, the reading
        settings it runs with (spans and edges only where pooling is ``mean``) and its shape."""
        r = self.settings.reading
        spans = self.pooling == "mean"
        return {
            "name": self.name,
            "revision": self.revision,
            "weights_digest": self.weights_digest,
            "layers": list(self.layers),
            "total_layers": self.total_layers,
            "hidden_size": self.hidden_size,
            "feature_size": self.feature_size,
            "pooling": self.pooling,
            "chat_template": r.chat_template,
            "pool_suffix": r.pool_suffix,
            "system_prompt": r.system_prompt,
            "max_tokens": r.max_tokens,
            "window_overlap": r.window_overlap,
            "sub_window": r.sub_window if spans else 0,
            "sub_window_stride": r.sub_window_stride,
            "edge_window": r.edge_window if spans else 0,
            "dtype": self.dtype,
        }

    def _pool(self, plan: PoolPlan) -> list[np.ndarray]:
        """Run ``plan.seqs`` and reduce along the plan: its rows, per layer of ``layers``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def encode_token_windows(self, wins: list[Window], n_texts: int) -> WindowFeatures:
        # Rows: one per window, then its spans; and the head and tail of every long text.
        edge = self.settings.reading.edge_window if self.pooling == "mean" else 0
        rows = plan_rows(wins, self.spans, edge)
        feats = {
            layer: np.zeros((len(rows.text_index), self.feature_size), dtype=np.float32)
            for layer in self.layers
        }
        # Group by length: padding wastes compute.
        order = sorted(range(len(wins)), key=lambda j: len(wins[j].content))
        bs = min(self.settings.batch_size, self._max_batch or self.settings.batch_size)
        for b in range(0, len(order), bs):
            plan = plan_pooling(
                rows,
                wins,
                order[b : b + bs],
                prefix=self._prefix,
                suffix=self._suffix,
                pad_id=self._pad_id,
                pooling=self.pooling,
                pool_suffix=self.settings.reading.pool_suffix,
            )
            for layer, pooled in zip(self.layers, self._pool(plan), strict=True):
                feats[layer][plan.rows] = pooled
        return rows.features(feats, n_texts)
